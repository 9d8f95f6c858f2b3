"""``train``: one StyleMamba model over many style prompts, on one device or many with torchrun.

    stylemamba train --images DIR --styles styles.txt --out runs/multi
    torchrun --nproc_per_node 4 -m comfyui_stylemamba train --images DIR --styles styles.txt --out runs/multi
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint, new_style_mamba
from .fit import DEFAULT_VAE, training_decoder
from ..config import DEFAULT_TEXT_ENCODER, StyleMambaConfig
from ..encoders import ImageEncoder, TextEncoder
from ..images import list_images, load_image
from ..training.losses import LossWeights
from ..training.taesd import FAMILIES
from ..training.train import PRECISIONS, Trainer, TrainingData, TrainSettings, init_distributed, latest_checkpoint
from ..vae import DiffusersVAE, load_diffusers_vae

HELP = "Train one StyleMamba model over many style prompts (multi-GPU with torchrun)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainSettings()
    parser.add_argument("--images", type=Path, required=True, help="folder of content images")
    parser.add_argument("--styles", type=Path, required=True, help="text file, one style prompt per line (# comments)")
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoints/, samples/, loss.csv, loss.png")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--source", default="a photo", help="text describing the content images (default: %(default)r)")
    parser.add_argument("--vae", default=DEFAULT_VAE, help="diffusers VAE folder or hub id (default: %(default)s)")
    parser.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, help="SigLIP folder or hub id (default: %(default)s)")
    parser.add_argument("--train-decoder", default="vae", help="'vae' or a TAESD-family decoder file as a fast proxy (default: %(default)s)")
    parser.add_argument("--tiny-family", choices=sorted(FAMILIES), help="family of --train-decoder when its file name does not say it")
    parser.add_argument("--start", type=Path, help="start from this checkpoint instead of a new model")
    parser.add_argument("--width", type=int, default=StyleMambaConfig.width, help="model width for a new model (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=StyleMambaConfig.depth, help="blocks for a new model (default: %(default)s)")
    parser.add_argument("--resolution", type=int, default=256, help="square training size in pixels (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="pairs per process and micro-step (default: %(default)s)")
    parser.add_argument("--grad-accumulation", type=int, default=defaults.grad_accumulation, help="micro-steps per optimiser step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--lr-halving-steps", type=int, default=defaults.lr_halving_steps, help="halve the lr every N steps (default: %(default)s)")
    parser.add_argument("--num-crops", type=int, default=defaults.weights.num_crops, help="patch-loss crops per image (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model init and every batch (default: %(default)s)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="autocast precision (default: %(default)s)")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, help="steps between checkpoints (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu; torchrun gives each process its GPU (default: %(default)s)")


def read_styles(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"styles file not found: {path}")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"{path} has no style prompts (one per line; lines starting with # are comments)")
    return prompts


def square_images(paths: list[Path], size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop, so every image fits one batch."""
    images = []
    for path in paths:
        image = load_image(path)
        height, width = image.shape[-2:]
        scale = size / min(height, width)
        resized = torch.nn.functional.interpolate(
            image, size=(max(size, round(height * scale)), max(size, round(width * scale))), mode="bilinear", antialias=True
        )
        top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
        images.append(resized[..., top : top + size, left : left + size])
    return torch.cat(images).clamp(0, 1)


@torch.no_grad()
def prepare_data(args: argparse.Namespace, vae: DiffusersVAE, decode, text_encoder: TextEncoder, image_encoder: ImageEncoder, device) -> TrainingData:
    prompts = read_styles(args.styles)
    content = square_images(list_images(args.images), args.resolution).to(device)
    latents = torch.cat([vae.encode(image[None]) for image in content]).float()
    references = torch.cat([decode(latent[None]).float() for latent in latents])
    source = text_encoder.encode_style(args.source, device)
    targets = torch.cat([text_encoder.encode_style(prompt, device) for prompt in prompts])
    directions = torch.nn.functional.normalize(targets - source, dim=-1)
    return TrainingData(latents, references, image_encoder.encode(references), prompts, targets, directions)


def run(args: argparse.Namespace) -> int:
    if args.resolution < 8:
        raise ValueError(f"--resolution must be at least 8, got {args.resolution}")
    settings = TrainSettings(
        steps=args.steps, batch_size=args.batch_size, grad_accumulation=args.grad_accumulation, lr=args.lr,
        lr_halving_steps=args.lr_halving_steps, seed=args.seed, precision=args.precision,
        checkpoint_every=args.checkpoint_every, weights=LossWeights(num_crops=args.num_crops),
    )
    existing = latest_checkpoint(args.out / "checkpoints")
    if existing and not args.resume:
        raise FileExistsError(f"{args.out} already holds checkpoints (newest step {existing[0]}); pass --resume or choose another --out")
    distributed = init_distributed(args.device)
    device = distributed.device
    vae = load_diffusers_vae(args.vae, device)
    if args.resolution % vae.downscale:
        raise ValueError(f"--resolution must be a multiple of the VAE's downscale factor {vae.downscale}, got {args.resolution}")
    decode = training_decoder(args, vae)
    text_encoder = TextEncoder.from_pretrained(args.text_encoder)
    image_encoder = ImageEncoder.from_pretrained(args.text_encoder)
    data = prepare_data(args, vae, decode, text_encoder, image_encoder, device)
    if args.start:
        style_mamba = load_checkpoint(args.start)
        style_mamba.check_latent_channels(vae.latent_channels)
    else:
        config = StyleMambaConfig(latent_channels=vae.latent_channels, style_dim=text_encoder.embed_dim, width=args.width, depth=args.depth)
        style_mamba = new_style_mamba(config, text_encoder=args.text_encoder, seed=args.seed)
    record = {"source_text": args.source, "vae": args.vae, "train_decoder": args.train_decoder, "world_size": distributed.world_size}
    trainer = Trainer(style_mamba, data, decode, image_encoder, settings, args.out, distributed, record)
    if args.resume:
        trainer.resume()
    bar = tqdm(total=settings.steps, initial=trainer.step, desc="train", unit="step", disable=not distributed.is_main)

    def progress(step: int, terms: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{terms['total']:.4g}")

    try:
        trainer.run(progress)
    finally:
        bar.close()
        if distributed.world_size > 1:
            torch.distributed.destroy_process_group()
    if distributed.is_main:
        print(f"finished {settings.steps} steps; checkpoints in {args.out / 'checkpoints'}")
    return 0
