"""The style options of the commands: style images, weights and masks beside ``--style`` text → one style to apply.

Every style source is one style: the ``--style`` text first (when given), then each ``--style-image`` in order.
``--style-weight`` and ``--mask`` pair with them in that order; one ``--mask`` alone limits the whole result.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ..encoders import ImageEncoder, TextEncoder
from ..image_style import encode_reference_style, siglip_rgb
from ..images import load_image
from ..mixing import StyleMix, mix_styles
from ..style import StyleEmbedding, encode_text_style


def add_style_arguments(parser: argparse.ArgumentParser) -> None:
    """``--style-image``, ``--style-weight`` and ``--mask`` (``--style`` text is the command's own)."""
    parser.add_argument(
        "--style-image", type=Path, action="append", default=[], metavar="PATH",
        help="style reference image (any size; transparency counts as white); repeat for more, each is one style of a mix",
    )
    parser.add_argument(
        "--style-weight", type=float, action="append", default=[], metavar="W",
        help="weight of each style: --style first, then each --style-image in order (default: equal; normalised to sum to 1)",
    )
    parser.add_argument(
        "--mask", type=Path, action="append", default=[], metavar="PATH",
        help="grey-scale mask image (white = style, same aspect ratio as the content): one limits the whole result, "
        "one per style gives each style its region",
    )


def load_reference(path: Path) -> torch.Tensor:
    """A style image as SigLIP's processor reads it: (1, 3, H, W), transparency on white."""
    return siglip_rgb(load_image(path, "RGBA"), name=str(path))


def read_style_arguments(args: argparse.Namespace) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every style input problem before a model loads: the counts, then the reference images and masks read."""
    count = (args.style is not None) + len(args.style_image)
    if count == 0:
        raise ValueError("no style given: pass --style TEXT and/or --style-image PATH")
    if args.style_weight and len(args.style_weight) != count:
        raise ValueError(f"{len(args.style_weight)} --style-weight values for {count} styles; give one per style (--style first), or none")
    if len(args.mask) not in (0, 1, count):
        raise ValueError(f"{len(args.mask)} --mask files for {count} styles; give one for the whole result, or one per style")
    return [load_reference(path) for path in args.style_image], [load_image(path, "L")[:, 0] for path in args.mask]


def command_style(
    args: argparse.Namespace, text_encoder: TextEncoder, image_encoder: ImageEncoder | None,
    references: list[torch.Tensor], masks: list[torch.Tensor],
) -> tuple[StyleEmbedding | StyleMix, torch.Tensor | None]:
    """The style to apply and the mask for the whole result, if any. Image styles take their direction from
    ``--source`` text, as text styles do, so every style of a mix starts from the same point."""
    styles = [encode_text_style(text_encoder, args.style, args.source)] if args.style is not None else []
    if references:
        with torch.no_grad():
            source = text_encoder.encode_style(args.source).cpu()
        styles += [
            dataclasses.replace(encode_reference_style(image_encoder, [image], source), description=path.name)
            for path, image in zip(args.style_image, references)
        ]
    regional = len(styles) > 1 and len(masks) == len(styles)
    whole = masks[0] if masks and not regional else None
    if len(styles) == 1 and not args.style_weight:
        return styles[0], whole
    return mix_styles(styles, args.style_weight or [1.0] * len(styles), masks if regional else None), whole
