"""Image files ↔ (1, 3, H, W) tensors in [0, 1], with atomic, non-clobbering saves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .atomic import write_atomically

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_image(path: str | os.PathLike) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except UnidentifiedImageError as error:
        raise ValueError(f"{path} is not an image file PIL can read") from error
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder not found: {folder}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return images


def save_image(image: torch.Tensor, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save (1, 3, H, W) or (3, H, W) in [0, 1]; written to a temp file then moved into place."""
    from PIL import Image

    if image.dim() == 4:
        image = image[0]
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array)
    return write_atomically(path, picture.save, overwrite)  # the temp name keeps the suffix PIL reads the format from
