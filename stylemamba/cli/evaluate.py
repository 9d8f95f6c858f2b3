"""``evaluate``: StyleMamba (and optionally CLIPstyler) on images × style prompts → markdown table + PNG grid.

Every method is scored with the same metrics on the same square crops: CLIP score (cosine to the
style text in SigLIP space, and in OpenAI-CLIP space when a model is given; for a style image, the
SigLIP cosine to that image instead), SSIM to the content
image, VGG-19 content loss (when weights are given), training time and inference time per image.
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import StyleMamba, load_checkpoint
from ..training.clipstyler import ClipStylerSettings, synchronize, train_clipstyler
from ..encoders import ImageEncoder, TextEncoder
from ..image_style import encode_reference_style
from ..atomic import write_atomically
from ..images import labelled_grid, list_images, load_image, save_image, square, to_pil
from ..training.losses import vgg_content_loss
from ..training.metrics import OpenAIClip, check_clip_source, siglip_clip_score, ssim
from ..training.score import style_similarity
from ..style import DEFAULT_SOURCE_TEXT, StyleEmbedding, encode_text_style
from ..stylize import stylize_latents
from ..vae import DiffusersVAE, load_diffusers_vae, pad_to_multiple
from ..training.vgg import VGG19Features, load_vgg19
from .checks import check_images, check_model_sources, require_file, require_text
from .prompts import read_styles
from .styles import load_reference

HELP = "Score a StyleMamba checkpoint (and the CLIPstyler baseline) on images × style prompts and style images: markdown table + PNG grid."

BASELINES = ("clipstyler",)
STYLEMAMBA = "StyleMamba"
CLIPSTYLER = "CLIPstyler"
MIN_SIZE = 16  # SSIM's 11-px window must fit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="StyleMamba .safetensors checkpoint")
    parser.add_argument("--images", type=Path, required=True, help="folder of content images")
    parser.add_argument("--styles", type=Path, help="text file, one style prompt per line ('#' starts a comment)")
    parser.add_argument(
        "--style-image", type=Path, action="append", default=[], metavar="PATH",
        help="a style reference image, scored by image-style similarity; repeat for more (with or without --styles)",
    )
    parser.add_argument("--vae", help="diffusers VAE folder or hub id (default: the VAE recorded in the checkpoint)")
    parser.add_argument("--text-encoder", help="SigLIP folder or hub id (default: the one recorded in the checkpoint)")
    parser.add_argument("--source", default=DEFAULT_SOURCE_TEXT, help="text describing the content (default: %(default)r)")
    parser.add_argument("--clip-model", help="optional transformers CLIP folder or hub id for a second CLIP-score column")
    parser.add_argument("--vgg-weights", type=Path, help="torchvision VGG-19 state dict (.pth/.safetensors) for the VGG content loss column")
    parser.add_argument("--baseline", choices=BASELINES, help="also train and score this baseline on the same images and prompts")
    parser.add_argument("--baseline-iterations", type=int, default=200, help="training steps per image and prompt (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="images are centre-cropped square and resized to this (default: %(default)s)")
    parser.add_argument("--strength", type=float, default=1.0, help="StyleMamba strength, 0 to 2 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the baseline's initialisation and crops (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder for results.md, grid.png and images/")
    parser.add_argument("--overwrite", action="store_true", help="replace results in an existing output folder")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "style"


@dataclass
class Score:
    method: str
    style: str
    image: str
    siglip: float | None
    clip: float | None
    ssim: float
    vgg: float | None
    train_seconds: float | None
    inference_seconds: float
    image_style: float | None = None


@dataclass
class Scorer:
    """The metric models, loaded once."""

    image_encoder: ImageEncoder
    text_encoder: TextEncoder
    clip: OpenAIClip | None
    vgg: VGG19Features | None

    @torch.no_grad()
    def __call__(
        self, styled: torch.Tensor, content: torch.Tensor, style: str, image_style: StyleEmbedding | None = None
    ) -> dict[str, float | None]:
        """Text styles get CLIP scores to their text; image styles (``image_style``) the cosine to the style image's embedding."""
        text = image_style is None
        return {
            "siglip": siglip_clip_score(self.image_encoder, self.text_encoder, styled, style).item() if text else None,
            "clip": self.clip.score(styled, style).item() if self.clip and text else None,
            "image_style": None if text else style_similarity(self.image_encoder, styled, image_style).item(),
            "ssim": ssim(styled, content).item(),
            "vgg": vgg_content_loss(self.vgg, styled, content).item() if self.vgg else None,
        }


def stylemamba_image(
    style_mamba: StyleMamba, vae: DiffusersVAE, image: torch.Tensor, style: StyleEmbedding, strength: float, device: str
) -> tuple[torch.Tensor, float]:
    """Encode → fuse → decode one image; returns it with the seconds the whole path took."""
    synchronize(device)
    start = time.perf_counter()
    padded, (height, width) = pad_to_multiple(image, vae.downscale)
    with torch.no_grad():
        latent = vae.encode(padded)
        styled = vae.decode(stylize_latents(style_mamba, latent, style, strength, device=device))[..., :height, :width]
    synchronize(device)
    return styled, time.perf_counter() - start


def recorded_seconds(training: dict) -> float | None:
    """Fit time stored in the checkpoint's training record, if the trainer wrote one."""
    value = training.get("seconds")
    return float(value) if isinstance(value, (int, float)) else None


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def markdown_table(scores: list[Score]) -> str:
    """One row per method and style (means over images), then one per method over all styles."""
    columns = [("CLIP score (SigLIP) ↑", "siglip", "{:.4f}")] if any(s.siglip is not None for s in scores) else []
    if any(s.clip is not None for s in scores):
        columns.append(("CLIP score (CLIP) ↑", "clip", "{:.4f}"))
    if any(s.image_style is not None for s in scores):
        columns.append(("image-style similarity (SigLIP) ↑", "image_style", "{:.4f}"))
    columns.append(("SSIM to content ↑", "ssim", "{:.4f}"))
    if any(s.vgg is not None for s in scores):
        columns.append(("VGG content loss ↓", "vgg", "{:.4g}"))
    columns += [("training time (s)", "train_seconds", "{:.2f}"), ("inference time / image (s)", "inference_seconds", "{:.3f}")]
    header = ["method", "style", *(title for title, _, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    methods = list(dict.fromkeys(s.method for s in scores))
    styles = list(dict.fromkeys(s.style for s in scores))
    for method in methods:
        groups = [(style, [s for s in scores if s.method == method and s.style == style]) for style in styles]
        groups = [(style, group) for style, group in groups if group]  # the baseline skips style images
        groups.append(("**all styles**", [s for s in scores if s.method == method]))
        for style, group in groups:
            cells = []
            for _, key, template in columns:
                value = mean([getattr(s, key) for s in group])
                cells.append(template.format(value) if value is not None else "n/a")
            lines.append("| " + " | ".join([method, style, *cells]) + " |")
    return "\n".join(lines) + "\n"


def save_grid(rows: list[tuple[str, list[torch.Tensor]]], columns: list[str], path: Path, overwrite: bool, cell: int = 256) -> Path:
    """A PNG with one labelled row per (image, style) and one column per method, content first."""
    grid = labelled_grid([[image[0] for image in images] for _, images in rows], height=cell, width=cell,
                         captions=[[title] for title, _ in rows], caption_height=18, header=columns, header_height=22)
    return write_atomically(path, to_pil(grid).save, overwrite=overwrite)


def check_arguments(args: argparse.Namespace) -> tuple[list[Path], list[str], dict[str, torch.Tensor]]:
    """Every input problem before any model loads; returns the content images, the prompts and the style images read."""
    if args.styles is None and not args.style_image:
        raise ValueError("no styles to evaluate: pass --styles FILE (prompts) and/or --style-image PATH")
    if args.baseline_iterations < 1:
        raise ValueError(f"--baseline-iterations must be at least 1, got {args.baseline_iterations}")
    if args.size < MIN_SIZE:
        raise ValueError(f"--size must be at least {MIN_SIZE} px (SSIM's 11-px window), got {args.size}")
    if not 0.0 <= args.strength <= 2.0:
        raise ValueError(f"--strength must be between 0 and 2, got {args.strength}")
    if args.output.exists() and not args.output.is_dir():
        raise NotADirectoryError(f"--output must be a folder, but {args.output} is a file")
    for written in ("results.md", "grid.png"):
        if (args.output / written).exists() and not args.overwrite:
            raise FileExistsError(f"{args.output / written} already exists; pass --overwrite or choose another folder")
    if args.vgg_weights is not None and not args.vgg_weights.is_file():
        raise FileNotFoundError(f"--vgg-weights file not found: {args.vgg_weights}")
    require_file(args.checkpoint, "--checkpoint")
    require_text(args.source, "--source", "content description", "a photo")
    prompts = read_styles(args.styles) if args.styles is not None else []
    return check_images(list_images(args.images)), prompts, {str(path): load_reference(path) for path in args.style_image}


def run(args: argparse.Namespace) -> int:
    image_paths, prompts, references = check_arguments(args)
    styles = prompts + list(references)
    device = args.device
    style_mamba = load_checkpoint(args.checkpoint, device)
    vae_name = args.vae or style_mamba.training.get("vae")
    if not vae_name:
        raise ValueError("the checkpoint does not record its VAE: pass --vae (the diffusers VAE it was trained on)")
    encoder_name = style_mamba.text_encoder = args.text_encoder or style_mamba.text_encoder
    check_model_sources(vae_name, encoder_name)
    if args.clip_model:
        check_clip_source(args.clip_model)
    vae = load_diffusers_vae(vae_name, device)
    style_mamba.model.check_latent_channels(vae.latent_channels)
    text_encoder = TextEncoder.from_pretrained(encoder_name)
    scorer = Scorer(
        image_encoder=ImageEncoder.from_pretrained(encoder_name),
        text_encoder=text_encoder,
        clip=OpenAIClip.from_pretrained(args.clip_model) if args.clip_model else None,
        vgg=load_vgg19(args.vgg_weights, device) if args.vgg_weights else None,
    )
    contents = {path.name: square(load_image(path), args.size).to(device) for path in image_paths}
    embeddings = {style: encode_text_style(text_encoder, style, args.source) for style in prompts}
    if references:
        with torch.no_grad():
            source = text_encoder.encode_style(args.source).cpu()
        embeddings |= {name: encode_reference_style(scorer.image_encoder, [image], source) for name, image in references.items()}
    baseline_settings = ClipStylerSettings(iterations=args.baseline_iterations, seed=args.seed)
    fit_seconds = recorded_seconds(style_mamba.training)
    first_content = next(iter(contents.values()))
    stylemamba_image(style_mamba, vae, first_content, embeddings[styles[0]], args.strength, device)  # warm-up, not timed

    scores: list[Score] = []
    grid_rows: list[tuple[str, list[torch.Tensor]]] = []
    work = tqdm(total=len(styles) * len(contents), desc="evaluate", unit="image")
    for style in styles:
        for name, content in contents.items():
            outputs = [content]
            styled, seconds = stylemamba_image(style_mamba, vae, content, embeddings[style], args.strength, device)
            image_style = embeddings[style] if style in references else None
            scores.append(Score(STYLEMAMBA, style, name, **scorer(styled, content, style, image_style),
                                train_seconds=fit_seconds, inference_seconds=seconds))
            outputs.append(styled)
            if args.baseline == "clipstyler" and image_style is None:  # CLIPstyler is text-driven
                work.set_postfix_str(f"CLIPstyler on {name}")
                result = train_clipstyler(
                    content, embeddings[style], scorer.image_encoder, baseline_settings, scorer.vgg,
                    progress=lambda step, loss: work.set_postfix(step=step, loss=f"{loss:.1f}"),
                )
                scores.append(
                    Score(CLIPSTYLER, style, name, **scorer(result.image, content, style),
                          train_seconds=result.train_seconds, inference_seconds=result.inference_seconds)
                )
                outputs.append(result.image)
            for method, image in zip([STYLEMAMBA, CLIPSTYLER], outputs[1:]):
                save_image(image, args.output / "images" / method / f"{slug(name)}__{slug(style)}.png", overwrite=args.overwrite)
            grid_rows.append((f"{name}: {style}", outputs))
            work.update()
    work.close()

    columns = ["content", STYLEMAMBA] + ([CLIPSTYLER] if args.baseline else [])
    grid = save_grid(grid_rows, columns, args.output / "grid.png", args.overwrite)
    text = report_text(args, vae_name, encoder_name, scores)
    report = write_atomically(args.output / "results.md", lambda temp: Path(temp).write_text(text, encoding="utf-8"), args.overwrite)
    print(markdown_table(scores))
    print(f"wrote {report} and {grid}")
    return 0


def report_text(args: argparse.Namespace, vae_name: str, encoder_name: str, scores: list[Score]) -> str:
    """The table with what produced it, so a results file stands on its own."""
    baseline = f"{args.baseline} ({args.baseline_iterations} iterations per image and prompt)" if args.baseline else "none"
    return (
        f"# StyleMamba evaluation\n\n"
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
        f"- checkpoint: `{args.checkpoint}`\n- VAE: `{vae_name}`\n- SigLIP: `{encoder_name}`\n"
        f"- CLIP: `{args.clip_model or 'not given'}`\n- VGG-19: `{args.vgg_weights or 'not given'}`\n"
        f"- images: `{args.images}` at {args.size}×{args.size} px, source text {args.source!r}\n"
        f"- baseline: {baseline}\n- device: {args.device}\n\n"
        + markdown_table(scores)
        + "\nCLIP scores are plain cosines to the style text; for a style image, the image-style similarity is the "
        "cosine between the SigLIP embeddings of the styled image and the style image (the baseline runs for text styles only). StyleMamba's training time is the checkpoint's "
        "recorded fit time (one fit serves every image of a style); CLIPstyler trains once per image and prompt. "
        "Inference time is VAE encode + fusion + decode for StyleMamba, one StyleNet pass for CLIPstyler.\n"
    )
