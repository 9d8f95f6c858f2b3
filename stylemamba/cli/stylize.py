"""``stylize``: image → VAE latent → StyleMamba → VAE decode, the same core path StyleFuse runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from .checks import check_images, check_model_sources, require_file, require_text
from .fit import DEFAULT_VAE, add_fit_arguments, check_fit_arguments, fit_checkpoint, load_vae_and_siglip
from .styles import add_style_arguments, command_style, read_style_arguments
from ..config import DEFAULT_TEXT_ENCODER
from ..images import load_image, save_image
from ..style import DEFAULT_SOURCE_TEXT
from ..stylize import stylize_latents
from ..vae import pad_to_multiple

HELP = (
    "Restyle images with a StyleMamba checkpoint and a style text, style images, or a (regional) mix of them. Without "
    "--checkpoint it first fits a model for --style on these images and saves it beside the output. The VAE and SigLIP "
    "are hub ids downloaded once, or local folders (--vae, --text-encoder) for offline use."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, help="content image file(s)")
    parser.add_argument("--style", help='style text, e.g. "an oil painting by Van Gogh" (and/or --style-image)')
    parser.add_argument("--source", default=DEFAULT_SOURCE_TEXT, help="text describing the content (default: %(default)r)")
    parser.add_argument(
        "--checkpoint", type=Path,
        help="StyleMamba .safetensors checkpoint (default: fit one for --style on these images and save it beside the output)",
    )
    parser.add_argument("--vae", default=DEFAULT_VAE, help="diffusers VAE folder or hub id whose latents the checkpoint was trained on (default: %(default)s)")
    parser.add_argument(
        "--text-encoder",
        help=f"SigLIP folder or hub id (default: the one recorded in --checkpoint; without one, {DEFAULT_TEXT_ENCODER})",
    )
    parser.add_argument("--strength", type=float, default=1.0, help="0 keeps the content, 1 full style, up to 2 (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output file (one image) or folder (several)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_style_arguments(parser.add_argument_group("style images, mixes and regions"))
    add_fit_arguments(parser.add_argument_group("fitting (only without --checkpoint)"))


def output_paths(images: list[Path], output: Path) -> list[Path]:
    """One image may name a file; several always go into a folder, keeping their stems."""
    if len(images) == 1 and output.suffix:
        return [output]
    if output.suffix:
        raise ValueError(f"{len(images)} images need an output folder, not the file name {output}")
    return [output / f"{image.stem}_stylized.png" for image in images]


def fitted_checkpoint_path(output: Path) -> Path:
    """Where a checkpoint fitted on the fly goes: ``OUT.stylemamba.safetensors`` or ``FOLDER/stylemamba.safetensors``."""
    return output.with_suffix(".stylemamba.safetensors") if output.suffix else output / "stylemamba.safetensors"


def run(args: argparse.Namespace) -> int:
    # Every input problem first, in under a second: models take seconds to minutes to load.
    if not 0.0 <= args.strength <= 2.0:
        raise ValueError(f"--strength must be between 0 and 2, got {args.strength}")
    check_images(args.images)
    if args.style is not None:
        require_text(args.style, "--style")
    require_text(args.source, "--source", "content description", "a photo")
    references, masks = read_style_arguments(args)
    targets = output_paths(args.images, args.output)
    for target in targets:
        if target.exists() and not args.overwrite:
            raise FileExistsError(f"{target} already exists; pass --overwrite to replace it")
    if args.checkpoint is None:
        if args.style is None:
            raise ValueError("fitting on the fly (no --checkpoint) learns a --style text; pass --style, or a --checkpoint for --style-image alone")
        fitted_path = fitted_checkpoint_path(args.output)
        if fitted_path.exists() and not args.overwrite:
            raise FileExistsError(f"{fitted_path} already exists; pass it as --checkpoint, or --overwrite to fit again")
        check_fit_arguments(args)
        style_mamba = None
        args.text_encoder = args.text_encoder or DEFAULT_TEXT_ENCODER
    else:
        require_file(args.checkpoint, "--checkpoint")
        style_mamba = load_checkpoint(args.checkpoint)
        if args.text_encoder:  # as LoadStyleMamba's text_encoder: the model then takes styles from this SigLIP
            style_mamba.text_encoder = args.text_encoder
    encoder_name = args.text_encoder or style_mamba.text_encoder
    check_model_sources(args.vae, encoder_name)

    vae, encoder, image_encoder = load_vae_and_siglip(args, encoder_name, image_tower=style_mamba is None or bool(references))
    if style_mamba is None:
        fitted = fit_checkpoint(args, vae)
        style_mamba = fitted.style_mamba
        tqdm.write(f"fitted {fitted.summary()}")
        tqdm.write(f"wrote {save_checkpoint(style_mamba, fitted_checkpoint_path(args.output), overwrite=args.overwrite)}")
    style_mamba.model.check_latent_channels(vae.latent_channels)
    style, mask = command_style(args, encoder, image_encoder, references, masks)
    for image_path, target in tqdm(list(zip(args.images, targets)), desc="stylize", unit="image"):
        image, (height, width) = pad_to_multiple(load_image(image_path).to(args.device), vae.downscale)
        with torch.no_grad():
            latent = vae.encode(image)
            styled = stylize_latents(style_mamba, latent, style, args.strength, mask, device=args.device)
            result = vae.decode(styled)[..., :height, :width]
        save_image(result, target, overwrite=args.overwrite)
        tqdm.write(f"wrote {target}")
    return 0
