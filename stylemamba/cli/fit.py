"""``fit``: make a StyleMamba checkpoint for one style from a few content images, from a shell.

The same fit TrainStyleMamba runs; ``stylize`` without ``--checkpoint`` calls ``fit_checkpoint`` too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint, new_style_mamba, save_checkpoint
from ..config import DEFAULT_TEXT_ENCODER, StyleMambaConfig
from ..encoders import ImageEncoder, TextEncoder
from ..training.fit import CONTENT_LOSSES, FitResult, FitSettings, fit_resolution, fit_style
from ..images import load_image
from ..style import DEFAULT_SOURCE_TEXT, encode_text_style
from ..training.taesd import FAMILIES, find_pair, load_tiny_autoencoder
from ..vae import DiffusersVAE, load_diffusers_vae

HELP = "Fit a StyleMamba checkpoint to one style text on a few content images."

#: The public SD1.5 VAE (diffusers format) used when none is named.
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"


def add_fit_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Options shared by ``fit`` and by ``stylize`` when it fits on the fly."""
    parser.add_argument("--iterations", type=int, default=FitSettings.iterations, help="optimiser steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate, halved every 100 steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model init and the random crops/masks (default: %(default)s)")
    parser.add_argument(
        "--train-decoder", default="vae",
        help="decoder used while fitting: 'vae' (the full VAE) or a TAESD-family decoder file (e.g. taesd_decoder.pth) "
        "of the same latent family as a fast proxy (default: %(default)s)",
    )
    parser.add_argument("--tiny-family", choices=sorted(FAMILIES), help="family of --train-decoder when its file name does not say it")
    parser.add_argument("--max-resolution", type=int, default=512, help="longer image side while fitting (default: %(default)s)")
    parser.add_argument("--content-loss", choices=CONTENT_LOSSES, default="latent", help="content term (default: %(default)s)")
    parser.add_argument("--vgg-weights", type=Path, help="VGG-19 state dict for --content-loss vgg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="content image file(s) to fit on")
    parser.add_argument("--style", required=True, help='style text, e.g. "an oil painting by Van Gogh"')
    parser.add_argument("--source", default=DEFAULT_SOURCE_TEXT, help="text describing the content (default: %(default)r)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="checkpoint to write (.safetensors)")
    parser.add_argument("--vae", default=DEFAULT_VAE, help="diffusers VAE folder or hub id (default: %(default)s)")
    parser.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, help="SigLIP folder or hub id (default: %(default)s)")
    parser.add_argument("--start", type=Path, help="start from this checkpoint instead of a new model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    add_fit_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> FitSettings:
    if args.max_resolution < 8:
        raise ValueError(f"--max-resolution must be at least 8, got {args.max_resolution}")
    if args.content_loss == "vgg" and args.vgg_weights is None:
        raise ValueError("--content-loss vgg needs --vgg-weights (a VGG-19 state dict file)")
    decoder = args.train_decoder if args.train_decoder == "vae" else Path(args.train_decoder).name
    return FitSettings(
        iterations=args.iterations, lr=args.lr, seed=args.seed, content_loss=args.content_loss, train_decoder=decoder,
    )


def load_content(paths: list[Path], max_resolution: int, multiple: int) -> torch.Tensor:
    """All images at the size of the first (fitted together as one batch)."""
    images = [fit_resolution(load_image(path), max_resolution, multiple) for path in paths]
    size = images[0].shape[-2:]
    resized = [
        image if image.shape[-2:] == size else torch.nn.functional.interpolate(image, size=tuple(size), mode="bilinear", antialias=True)
        for image in images
    ]
    return torch.cat(resized).clamp(0, 1)


def training_decoder(args: argparse.Namespace, vae: DiffusersVAE) -> Callable[[torch.Tensor], torch.Tensor]:
    """``--train-decoder``: the full VAE's decode, or a tiny autoencoder of the same latent family."""
    if args.train_decoder == "vae":
        return vae.decode
    decoder_path, _ = find_pair(args.train_decoder)
    tiny = load_tiny_autoencoder(decoder_path, family=args.tiny_family).to(args.device)
    if tiny.latent_channels != vae.latent_channels:
        raise ValueError(
            f"--train-decoder {decoder_path.name} decodes {tiny.latent_channels}-channel latents ({tiny.family.name}) "
            f"but {args.vae} makes {vae.latent_channels}-channel latents"
        )
    return tiny.decode


def fit_checkpoint(args: argparse.Namespace, vae: DiffusersVAE) -> FitResult:
    """Fit on ``args.images`` with the SigLIP and training decoder the arguments name; not yet saved."""
    settings = settings_from_args(args)
    device = args.device
    decode = training_decoder(args, vae)
    text_encoder = TextEncoder.from_pretrained(args.text_encoder)
    style = encode_text_style(text_encoder, args.style, args.source)
    image_encoder = ImageEncoder.from_pretrained(args.text_encoder)
    vgg = None
    if settings.content_loss == "vgg":
        from ..training.vgg import load_vgg19

        vgg = load_vgg19(args.vgg_weights, device)
    if getattr(args, "start", None):
        start = load_checkpoint(args.start)
        start.check_latent_channels(vae.latent_channels)
    else:
        config = StyleMambaConfig(latent_channels=vae.latent_channels, style_dim=text_encoder.embed_dim)
        start = new_style_mamba(config, text_encoder=args.text_encoder, seed=args.seed)
    content = load_content(args.images, args.max_resolution, vae.downscale)
    bar = tqdm(total=settings.iterations, desc=f"fit {args.style!r}", unit="step")

    def report(step: int, loss: float, preview: torch.Tensor | None) -> bool:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}")
        return False

    try:
        result = fit_style(start, content, style, vae.encode, decode, image_encoder, settings, report, vgg=vgg, device=device)
    finally:
        bar.close()
    result.style_mamba.training.update(
        source_text=args.source, vae=args.vae, content_files=[p.name for p in args.images], seconds=round(result.seconds, 2)
    )
    return result


def run(args: argparse.Namespace) -> int:
    if args.output.suffix != ".safetensors":
        raise ValueError(f"-o must name a .safetensors checkpoint, got {args.output}")
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} already exists; pass --overwrite to replace it")
    for image in args.images:
        if not image.is_file():
            raise FileNotFoundError(f"image not found: {image}")
    result = fit_checkpoint(args, load_diffusers_vae(args.vae, args.device))
    save_checkpoint(result.style_mamba, args.output, overwrite=args.overwrite)
    print(
        f"wrote {args.output}: {len(result.history)} steps in {result.seconds:.1f} s "
        f"({result.steps_per_second:.2f} steps/s), best loss {result.best_loss:.4g} at step {result.best_step}"
    )
    return 0
