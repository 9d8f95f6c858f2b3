"""Images as (b, 3, H, W) tensors in [0, 1]: files and PIL pictures in and out, and every resize the pack does.

One conversion each way and one resampling filter, so the fit, the commands, the previews and
the evaluation grids all see the same pixels.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import write_atomically

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def from_pil(picture: Image.Image, mode: str = "RGB") -> torch.Tensor:
    """A PIL picture (any mode) → (1, C, H, W) float32 in [0, 1]: C = 3 for RGB, 4 for "RGBA" (alpha kept), 1 for "L"."""
    array = np.asarray(picture.convert(mode), dtype=np.float32) / 255.0
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)[None].contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) in [0, 1] → an 8-bit RGB picture (clamped and rounded)."""
    from PIL import Image

    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"to_pil takes one image, got a batch of {image.shape[0]}")
        image = image[0]
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(b, 3, H, W) → (b, 3, *size), antialiased bicubic, differentiable (no clamp: encoders see the raw values)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images.float(), size=tuple(size), mode="bicubic", align_corners=False, antialias=True)


def labelled_grid(
    rows: list[list[torch.Tensor]],
    height: int | None = None,
    width: int | None = None,
    captions: list[list[str]] | None = None,
    caption_height: int = 0,
    header: list[str] | None = None,
    header_height: int = 0,
) -> torch.Tensor:
    """Images (3, H, W) in rows on white, each row under a band for its cells' captions, under a band of column titles.

    The one painter behind every grid the pack shows or writes (training samples, evaluation, strength
    sweeps), so they are laid out alike. Cells are resized to ``height`` × ``width`` (``width`` None:
    the aspect is kept; ``height`` None: the size is kept). Column titles sit over the first row's cells.
    Captions are ASCII: PIL's fallback font has no other glyphs. Returns (1, 3, H, W) in [0, 1].
    """
    from PIL import Image, ImageDraw

    def fitted(image: torch.Tensor) -> torch.Tensor:
        image = image[None, :3].detach().float().cpu()
        if height is None:
            return image
        return resize(image, (height, width or max(1, round(height * image.shape[-1] / image.shape[-2]))))

    cells = [[to_pil(fitted(image)) for image in row] for row in rows]
    canvas = Image.new("RGB", (max(sum(c.width for c in row) for row in cells),
                               header_height + sum(caption_height + max(c.height for c in row) for row in cells)), "white")
    draw = ImageDraw.Draw(canvas)
    lefts = [[sum(c.width for c in row[:index]) for index in range(len(row))] for row in cells]
    for left, title in zip(lefts[0], header or []):
        draw.text((left + 4, 4), title, fill="black")
    top = header_height
    for row, row_lefts, row_captions in zip(cells, lefts, captions or [[]] * len(cells)):
        for left, text in zip(row_lefts, row_captions):
            draw.text((left + 4, top + 2), text, fill="black")
        for left, picture in zip(row_lefts, row):
            canvas.paste(picture, (left, top + caption_height))
        top += caption_height + max(c.height for c in row)
    return from_pil(canvas)


def fit_resolution(images: torch.Tensor, max_side: int, multiple: int = 8) -> torch.Tensor:
    """Downscale so the longer side is at most ``max_side`` and both sides are multiples of ``multiple``.

    Fit cost grows with pixels while the style a fit learns does not, so large photos are fitted
    small; the autoencoder needs sizes it can divide by its downscale factor.
    """
    height, width = images.shape[-2:]
    scale = min(1.0, max_side / max(height, width))
    size = [max(multiple, int(side * scale) // multiple * multiple) for side in (height, width)]
    return resize(images, tuple(size)).clamp(0, 1)


def square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop: CLIP's preprocessing, and how a set of photos becomes one batch."""
    height, width = images.shape[-2:]
    scale = size / min(height, width)
    resized = resize(images, (max(size, round(height * scale)), max(size, round(width * scale))))
    top, left = (resized.shape[-2] - size) // 2, (resized.shape[-1] - size) // 2
    return resized[..., top : top + size, left : left + size].clamp(0, 1)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """A picture file opened by PIL, or an error naming the file: missing, a folder, or not a picture PIL reads."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with Image.open(path) as image:
            yield image
    except UnidentifiedImageError as error:
        raise ValueError(f"{path} is not an image file PIL can read") from error
    except (OSError, SyntaxError) as error:  # PIL's verify/decode errors for damaged files
        raise ValueError(f"{path} is a damaged or truncated image ({error})") from error


def load_image(path: str | os.PathLike, mode: str = "RGB") -> torch.Tensor:
    """An image file → (1, 3, H, W) in [0, 1], or as ``from_pil`` gives another PIL mode (a mask as "L")."""
    with _opened(Path(path)) as image:
        return from_pil(image, mode)


def check_image_file(path: str | os.PathLike) -> Path:
    """The errors ``load_image`` would raise for ``path``, from the file's header and structure alone (no decode):
    the commands check every image this way before they spend time loading a model."""
    with _opened(Path(path)) as image:
        image.verify()
    return Path(path)


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
    return write_atomically(path, to_pil(image).save, overwrite)  # the temp name keeps the suffix PIL reads the format from
