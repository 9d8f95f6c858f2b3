"""``train``: one StyleMamba model over many style prompts and style-image folders, on one device or many with torchrun.

    stylemamba train --images DIR --styles styles.txt --style-images REFS --out runs/multi
    torchrun --nproc_per_node 4 -m comfyui_stylemamba train --images DIR --styles styles.txt --out runs/multi

``--style-images REFS`` holds one sub-folder per image style (``REFS/van_gogh/*.jpg``); text and image
styles train one model side by side, with CAST's contrastive term on by default when a batch can hold it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint, new_style_mamba
from .fit import DEFAULT_VAE, training_decoder
from ..config import DEFAULT_TEXT_ENCODER, StyleMambaConfig, config_for_encoder
from ..encoders import ImageEncoder, TextEncoder
from ..images import list_images, load_image, square
from ..style import DEFAULT_SOURCE_TEXT
from ..image_style import encode_reference_style, image_embedding
from ..training.losses import LossWeights
from ..training.taesd import FAMILIES
from ..training.train import PRECISIONS, Trainer, TrainingData, TrainSettings, init_distributed, latest_checkpoint
from ..vae import DiffusersVAE, load_diffusers_vae
from .checks import at_least, check_images, check_model_sources, require_file, require_text
from .prompts import read_style_folders, read_styles
from .styles import load_reference

HELP = "Train one StyleMamba model over many style prompts and style-image folders (multi-GPU with torchrun)."

#: Default weight of CAST's contrastive term: ~1/10 of the weighted directional term early in a run
#: (InfoNCE of a 4-image batch ≈ 1.1 × 50 against ≈ 0.9 × 500).
DEFAULT_CONTRASTIVE = 50.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainSettings()
    parser.add_argument("--images", type=Path, required=True, help="folder of content images")
    parser.add_argument("--styles", type=Path, help="text file, one style prompt per line (# comments); and/or --style-images")
    parser.add_argument(
        "--style-images", type=Path, metavar="DIR",
        help="folder with one sub-folder of reference images per image style, named by the sub-folder (DIR/van_gogh/*.jpg)",
    )
    parser.add_argument(
        "--contrastive-weight", type=float,
        help=f"weight of CAST's contrastive style loss in SigLIP space (temperature 0.07); default {DEFAULT_CONTRASTIVE:g} "
        "with 2+ styles and --batch-size 4+, else 0",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoints/, samples/, loss.csv, loss.png")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--source", default=DEFAULT_SOURCE_TEXT, help="text describing the content images (default: %(default)r)")
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


def read_style_inputs(args: argparse.Namespace) -> tuple[list[str], dict[str, list[Path]]]:
    """The prompts and the image-style folders, checked before any model loads."""
    if args.styles is None and args.style_images is None:
        raise ValueError("no styles to train on: pass --styles FILE (prompts) and/or --style-images DIR (one sub-folder per style)")
    prompts = read_styles(args.styles) if args.styles is not None else []
    folders = read_style_folders(args.style_images) if args.style_images is not None else {}
    return prompts, folders


def contrastive_weight(args: argparse.Namespace, styles: int) -> float:
    """``--contrastive-weight``, or its default: on when a batch can hold two pairs of different styles."""
    if args.contrastive_weight is None:
        return DEFAULT_CONTRASTIVE if styles >= 2 and args.batch_size >= 4 else 0.0
    if args.contrastive_weight > 0 and (styles < 2 or args.batch_size < 4):
        raise ValueError(
            f"--contrastive-weight needs 2+ styles and --batch-size 4+ (two same-style pairs per batch), "
            f"got {styles} style(s) and batch size {args.batch_size}; pass --contrastive-weight 0"
        )
    return args.contrastive_weight


@torch.no_grad()
def prepare_data(
    args: argparse.Namespace, vae: DiffusersVAE, decode, text_encoder: TextEncoder, image_encoder: ImageEncoder, device,
    prompts: list[str], folders: dict[str, list[Path]],
) -> TrainingData:
    content = torch.cat([square(load_image(path), args.resolution) for path in list_images(args.images)]).to(device)
    latents = torch.cat([vae.encode(image[None]) for image in content]).float()
    references = torch.cat([decode(latent[None]).float() for latent in latents])
    targets, directions = [], []
    if prompts:
        source = text_encoder.encode_style(args.source, device)
        targets.append(torch.cat([text_encoder.encode_style(prompt, device) for prompt in prompts]))
        directions.append(torch.nn.functional.normalize(targets[0] - source, dim=-1))
    if folders:
        content_source = image_embedding(image_encoder, [references])
        for paths in folders.values():
            style = encode_reference_style(image_encoder, [load_reference(path) for path in paths], content_source)
            targets.append(style.target.to(device))
            directions.append(style.direction.to(device))
    image_styles = {name: [path.name for path in paths] for name, paths in folders.items()}
    return TrainingData(
        latents, references, image_encoder.encode(references), prompts, torch.cat(targets), torch.cat(directions), image_styles,
    )


def run(args: argparse.Namespace) -> int:
    # Every input problem first, before any model loads (and before torchrun's processes meet).
    at_least(args.resolution, 8, "--resolution")
    for option in ("steps", "batch_size", "grad_accumulation", "lr_halving_steps", "checkpoint_every"):
        at_least(getattr(args, option), 1, "--" + option.replace("_", "-"))
    if not args.lr > 0:
        raise ValueError(f"--lr must be above 0, got {args.lr:g}")
    require_text(args.source, "--source", "content description", "a photo")
    check_images(list_images(args.images))
    require_file(args.start, "--start")
    if args.train_decoder != "vae":
        require_file(Path(args.train_decoder), "--train-decoder")
    prompts, folders = read_style_inputs(args)
    for paths in folders.values():
        check_images(paths)
    weights = LossWeights(num_crops=args.num_crops, contrastive=contrastive_weight(args, len(prompts) + len(folders)))
    settings = TrainSettings(
        steps=args.steps, batch_size=args.batch_size, grad_accumulation=args.grad_accumulation, lr=args.lr,
        lr_halving_steps=args.lr_halving_steps, seed=args.seed, precision=args.precision,
        checkpoint_every=args.checkpoint_every, weights=weights,
    )
    existing = latest_checkpoint(args.out / "checkpoints")
    if existing and not args.resume:
        raise FileExistsError(f"{args.out} already holds checkpoints (newest step {existing[0]}); pass --resume or choose another --out")
    check_model_sources(args.vae, args.text_encoder)
    distributed = init_distributed(args.device)
    device = distributed.device
    vae = load_diffusers_vae(args.vae, device)
    if args.resolution % vae.downscale:
        raise ValueError(f"--resolution must be a multiple of the VAE's downscale factor {vae.downscale}, got {args.resolution}")
    decode = training_decoder(args, vae)
    text_encoder = TextEncoder.from_pretrained(args.text_encoder)
    image_encoder = ImageEncoder.from_pretrained(args.text_encoder)
    data = prepare_data(args, vae, decode, text_encoder, image_encoder, device, prompts, folders)
    if args.start:
        style_mamba = load_checkpoint(args.start)
        style_mamba.model.check_latent_channels(vae.latent_channels)
    else:
        config = config_for_encoder(args.text_encoder, vae.latent_channels, width=args.width, depth=args.depth)
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
