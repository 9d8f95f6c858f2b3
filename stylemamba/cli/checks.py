"""The cheap checks each command runs on its inputs before it loads any model.

Loading the VAE and SigLIP takes seconds to minutes (a download, the first time), so a missing image, a text
file passed as an image, an empty style text, a bad number or a model that cannot be had offline is reported
first, in under a second, with the option to change.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

from ..encoders import check_encoder_source
from ..images import check_image_file
from ..vae import check_vae_source


def check_images(paths: Iterable[Path]) -> list[Path]:
    """Every path is an image file PIL can read (header and structure; nothing decoded)."""
    return [check_image_file(path) for path in paths]


def require_text(text: str, option: str, what: str = "style text", example: str = "an oil painting by Van Gogh") -> str:
    """A text option that must say something, e.g. ``--style``."""
    if not text.strip():
        raise ValueError(f"{what} is empty ({option} {text!r}): describe it, e.g. {option} {example!r}")
    return text


def require_file(path: Path | None, option: str) -> None:
    """An optional file option, when given, names an existing file."""
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"{option} file not found: {path}")


def at_least(value: float, minimum: float, option: str) -> None:
    """A number option at or above ``minimum`` (NaN is refused too)."""
    if math.isnan(value) or value < minimum:
        raise ValueError(f"{option} must be at least {minimum:g}, got {value:g}")


def check_model_sources(vae: str | None = None, text_encoder: str | None = None) -> None:
    """The VAE and SigLIP can be loaded without waiting on the network: a local folder, the hub cache, or a
    reachable hub (one connection attempt, no retries; refused at once with HF_HUB_OFFLINE=1)."""
    if vae is not None:
        check_vae_source(vae)
    if text_encoder is not None:
        check_encoder_source(text_encoder)
