"""``fit``: make a StyleMamba checkpoint for one style from a few content images, from a shell.

The same fit TrainStyleMamba runs; ``stylize`` without ``--checkpoint`` calls ``fit_checkpoint`` too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import DEFAULT_TEXT_ENCODER
from ..encoders import ImageEncoder, TextEncoder, load_image_encoder, load_text_encoder
from ..training.fit import CONTENT_LOSSES, DEFAULT_FIT_RESOLUTION, KEEP_CHOICES, FitResult, FitSettings, fit_model, fit_weights
from ..images import IMAGE_SUFFIXES, list_images, load_image, resize
from ..training.losses import STYLE_STATISTICS
from ..training.reference_styles import fit_target_style
from .checks import at_least, check_images, check_model_sources, require_file, require_text
from .styles import load_reference
from ..style import DEFAULT_SOURCE_TEXT, encode_text_style
from ..training.taesd import FAMILIES, load_tiny_decoder
from ..training.vgg import require_weights_file
from ..vae import DiffusersVAE, load_diffusers_vae

HELP = "Fit a StyleMamba checkpoint to one style (a text, style images, or both) on a few content images."

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
    parser.add_argument(
        "--max-resolution", type=int, default=DEFAULT_FIT_RESOLUTION,
        help="longer image side while fitting; 512 is CLIPstyler's, at about 4x the time per step (default: %(default)s)",
    )
    parser.add_argument("--content-loss", choices=CONTENT_LOSSES, default="latent", help="content term (default: %(default)s)")
    parser.add_argument("--vgg-weights", type=Path, help="torchvision VGG-19 state dict for --content-loss vgg and --style-stats-weight")
    parser.add_argument(
        "--patch-loss", action="store_true",
        help="add CLIPstyler's patch-wise directional loss (weight 9000) to the paper's global, masked and second-order ones; "
        "its crops go through the image encoder every step, most of a step's time with a base-sized encoder",
    )
    parser.add_argument("--patch-crops", type=int, default=64, help="with --patch-loss, crops per image (default: %(default)s, CLIPstyler's)")
    parser.add_argument(
        "--patch-crop-resolution", type=int, default=0,
        help="with --patch-loss, the size crops are encoded at; 0 = the encoder's input size, 224 for SigLIP-base as for "
        "CLIPstyler's CLIP (default: %(default)s)",
    )
    parser.add_argument(
        "--keep", choices=KEEP_CHOICES, default=FitSettings.keep,
        help="weights to return: 'best' = lowest loss on one fixed draw of masks/crops, evaluated after every update; "
        "'last' = the last update's, without that evaluation (default: %(default)s)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "images", nargs="+", type=Path,
        help="content image file(s) to fit on; with --video the frames of one clip in order, or a folder of them (sorted by name)",
    )
    parser.add_argument(
        "--video", action="store_true",
        help="fit on a video: the images are one clip's frames (at least 3); the temporal layers train with the temporal "
        "masked, second-order and consistency losses. Video files are not read (PyAV is not a dependency): extract the "
        "frames first, e.g. ffmpeg -i clip.mp4 frames/%%05d.png",
    )
    parser.add_argument(
        "--frames-per-step", type=int, default=FitSettings.frames_per_step,
        help="with --video, latent frames decoded per step for the image losses; bounds the decoder's memory (default: %(default)s)",
    )
    parser.add_argument("--style", help='style text, e.g. "an oil painting by Van Gogh" (and/or --style-image)')
    parser.add_argument(
        "--style-image", type=Path, action="append", default=[], metavar="PATH",
        help="style reference image (any size; transparency counts as white); repeat for more. The losses then aim along "
        "the content→style image direction in SigLIP space; with --style too, at the equal-weight mix of text and images",
    )
    parser.add_argument(
        "--style-stats-weight", type=float, default=0.0,
        help="weight of the VGG-19 style-statistics loss on the style images, needs --style-image and --vgg-weights "
        "(default: %(default)s = off; try 1e4 with mean_std)",
    )
    parser.add_argument(
        "--style-stats", choices=STYLE_STATISTICS, default="mean_std",
        help="statistics it matches on relu1_1..relu4_1: AdaIN's per-channel mean/std or Gatys's Gram matrices (default: %(default)s)",
    )
    parser.add_argument("--source", default=DEFAULT_SOURCE_TEXT, help="text describing the content (default: %(default)r)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="checkpoint to write (.safetensors)")
    parser.add_argument("--vae", default=DEFAULT_VAE, help="diffusers VAE folder or hub id (default: %(default)s)")
    parser.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER, help="SigLIP folder or hub id (default: %(default)s)")
    parser.add_argument("--start", type=Path, help="start from this checkpoint instead of a new model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    add_fit_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> FitSettings:
    at_least(args.iterations, 1, "--iterations")
    if not args.lr > 0:
        raise ValueError(f"--lr must be above 0, got {args.lr:g}")
    at_least(args.max_resolution, 8, "--max-resolution")
    if args.content_loss == "vgg" and args.vgg_weights is None:
        raise ValueError("--content-loss vgg needs --vgg-weights (a VGG-19 state dict file)")
    style_stats_weight = getattr(args, "style_stats_weight", 0.0)  # ``stylize`` fits on text alone: no such option
    if style_stats_weight < 0:
        raise ValueError(f"--style-stats-weight must be 0 or more, got {style_stats_weight}")
    if style_stats_weight > 0 and not getattr(args, "style_image", []):
        raise ValueError("--style-stats-weight matches the statistics of style images: pass --style-image PATH")
    if style_stats_weight > 0 and args.vgg_weights is None:
        raise ValueError("--style-stats-weight needs --vgg-weights (a torchvision VGG-19 state dict file)")
    if args.patch_crops < 1:
        raise ValueError(f"--patch-crops must be at least 1, got {args.patch_crops}")
    if args.patch_crop_resolution < 0:
        raise ValueError(f"--patch-crop-resolution must be 0 (the encoder's input size) or more, got {args.patch_crop_resolution}")
    decoder = args.train_decoder if args.train_decoder == "vae" else Path(args.train_decoder).name
    video = getattr(args, "video", False)  # ``stylize`` fits on images only
    weights = fit_weights(args.patch_loss, args.patch_crops, args.patch_crop_resolution, style_stats_weight, video)
    return FitSettings(
        iterations=args.iterations, lr=args.lr, seed=args.seed, content_loss=args.content_loss, train_decoder=decoder,
        weights=weights, style_statistics=getattr(args, "style_stats", "mean_std"), video=video,
        frames_per_step=getattr(args, "frames_per_step", FitSettings.frames_per_step), keep=args.keep,
    )


def check_fit_arguments(args: argparse.Namespace) -> FitSettings:
    """Every fitting option (numbers, loss settings, the files they name) before a model loads."""
    settings = settings_from_args(args)
    if args.vgg_weights is not None:
        require_weights_file(args.vgg_weights)
    if args.train_decoder != "vae":
        require_file(Path(args.train_decoder), "--train-decoder")
    return settings


def load_vae_and_siglip(
    args: argparse.Namespace, encoder_name: str, image_tower: bool = True
) -> tuple[DiffusersVAE, TextEncoder, ImageEncoder | None]:
    """The VAE and SigLIP's text tower (and image tower), one progress line each. The towers come from the
    encoders' cache, so the fit and the apply after it in ``stylize`` share one load."""
    tqdm.write(f"loading the VAE {args.vae}")
    vae = load_diffusers_vae(args.vae, args.device)
    tqdm.write(f"loading SigLIP {encoder_name}")
    return vae, load_text_encoder(encoder_name), load_image_encoder(encoder_name) if image_tower else None


def content_files(paths: list[Path], video: bool) -> list[Path]:
    """The content images; with ``video`` a folder stands for its frames and a video file is refused by name."""
    files = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"image not found: {path}")
        if video and path.is_dir():
            files += list_images(path)
        elif video and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(
                f"--video reads frames, not video files ({path.name}): PyAV is not a dependency. Extract the frames "
                f"(ffmpeg -i {path.name} frames/%05d.png) and pass the folder"
            )
        elif path.is_dir():
            raise ValueError(f"{path} is a folder: name the image files, or pass --video to read it as a clip's frames")
        else:
            files.append(path)
    return check_images(files)


def load_content(paths: list[Path], video: bool = False) -> torch.Tensor:
    """All images as one batch at the size of the first (the fit then scales the batch to --max-resolution).

    A clip's frames are never resized to fit each other: a frame of another size is not part of the clip.
    """
    images = [load_image(path) for path in paths]
    if video:
        odd = [f"{path.name} {tuple(image.shape[-2:])}" for path, image in zip(paths, images) if image.shape[-2:] != images[0].shape[-2:]]
        if odd:
            raise ValueError(
                f"--video frames must all have the size of the first, {paths[0].name} {tuple(images[0].shape[-2:])} (height, width); "
                f"these differ: {', '.join(odd)}"
            )
    return torch.cat([resize(image, images[0].shape[-2:]) for image in images]).clamp(0, 1)


def training_decoder(args: argparse.Namespace, vae: DiffusersVAE) -> Callable[[torch.Tensor], torch.Tensor]:
    """``--train-decoder``: the full VAE's decode, or a tiny autoencoder of the same latent family."""
    if args.train_decoder == "vae":
        return vae.decode
    return load_tiny_decoder(args.train_decoder, vae.latent_channels, args.device, args.tiny_family).decode


def fit_checkpoint(args: argparse.Namespace, vae: DiffusersVAE, style_images: list[torch.Tensor] | None = None) -> FitResult:
    """Fit on ``args.images`` to ``args.style`` and/or ``style_images`` ((1, 3, H, W) each, as ``load_reference``
    reads ``--style-image``) with the SigLIP and training decoder the arguments name; not yet saved."""
    style_images = style_images or []
    settings = settings_from_args(args)
    device = args.device
    files = content_files(args.images, settings.video)
    content = load_content(files, settings.video)
    decode = training_decoder(args, vae)
    text_style = None
    if args.style is not None:
        text_style = encode_text_style(load_text_encoder(args.text_encoder), args.style, args.source)
    image_encoder = load_image_encoder(args.text_encoder)
    style = fit_target_style(text_style, image_encoder, style_images, content)
    vgg = None
    if settings.content_loss == "vgg" or settings.weights.style_statistics > 0:
        from ..training.vgg import load_vgg19

        vgg = load_vgg19(args.vgg_weights, device)
    start = load_checkpoint(args.start) if getattr(args, "start", None) else None
    bar = tqdm(total=settings.iterations, desc=f"fit {style.description!r}", unit="step")

    def report(step: int, loss: float, preview: torch.Tensor | None) -> bool:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}")
        return False

    try:
        record = dict(source_text=args.source, vae=args.vae, content_files=[p.name for p in files])
        if style_images:
            record["style_images"] = [p.name for p in args.style_image]
        return fit_model(
            style, content, vae.encode, decode, image_encoder, settings, args.text_encoder,
            vae.latent_channels, args.max_resolution, vae.downscale, start, report, vgg, device, record, style_images,
        )
    finally:
        bar.close()


def run(args: argparse.Namespace) -> int:
    # Every input problem first, in under a second: models take seconds to minutes to load.
    if args.output.suffix != ".safetensors":
        raise ValueError(f"-o must name a .safetensors checkpoint, got {args.output}")
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} already exists; pass --overwrite to replace it")
    content_files(args.images, getattr(args, "video", False))
    if args.style is None and not args.style_image:
        raise ValueError("no style given: pass --style TEXT and/or --style-image PATH")
    if args.style is not None and not args.style.strip():
        raise ValueError("--style is empty: describe a style, e.g. 'a watercolor painting', or leave it out and pass --style-image")
    require_text(args.source, "--source", "content description", "a photo")
    check_fit_arguments(args)
    require_file(args.start, "--start")
    style_images = [load_reference(path) for path in args.style_image]
    check_model_sources(args.vae, args.text_encoder)
    vae, _, _ = load_vae_and_siglip(args, args.text_encoder)
    result = fit_checkpoint(args, vae, style_images)
    save_checkpoint(result.style_mamba, args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}: {result.summary()}")
    return 0
