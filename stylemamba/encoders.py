"""SigLIP text and image embeddings through transformers, loaded from a local folder or a hub id.

Both towers share one embedding space, so a style can come from words or from a picture, and
the directional losses compare image changes with text changes in that space.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

#: Files a SigLIP folder needs; quoted in the error when a model cannot be found.
REQUIRED_FILES = "config.json, model.safetensors (or pytorch_model.bin), tokenizer_config.json, spiece.model / tokenizer.json"

#: Prompt templates averaged into one text embedding, as CLIPstyler does to steady the direction.
STYLE_TEMPLATES = (
    "a photo of {}.",
    "a rendering of {}.",
    "a painting of {}.",
    "an artwork in the style of {}.",
    "a picture of {}.",
    "{}",
)


class EncoderNotFoundError(FileNotFoundError):
    """The SigLIP weights are neither in a local folder nor downloadable."""


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Loading one tower of a full SigLIP checkpoint lists the other tower's keys as unexpected: expected here."""
    from transformers.utils import logging

    previous = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(previous)


def _not_found(name: str, error: Exception) -> EncoderNotFoundError:
    folder = name.rstrip("/").split("/")[-1]
    return EncoderNotFoundError(
        f"SigLIP encoder {name!r} could not be loaded ({type(error).__name__}: {error}). "
        f"Put its files ({REQUIRED_FILES}) in a folder such as ComfyUI/models/siglip/{folder}/ "
        f"(or pass that folder's path), or run once with network access so transformers can download {name!r}."
    )


@dataclass
class TextEncoder:
    """SigLIP text tower + tokenizer; ``encode`` returns unit-length embeddings (n, dim)."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    max_length: int

    @property
    def embed_dim(self) -> int:
        config = self.model.config
        return getattr(config, "projection_size", None) or config.hidden_size

    @classmethod
    def from_pretrained(cls, name_or_path: str, local_files_only: bool = False) -> "TextEncoder":
        from transformers import AutoTokenizer, SiglipTextModel

        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
            with _quiet_transformers():
                model = SiglipTextModel.from_pretrained(name_or_path, local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            raise _not_found(name_or_path, error) from error
        model.eval().requires_grad_(False)
        return cls(name_or_path, model, tokenizer, model.config.max_position_embeddings)

    def encode(self, texts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Embed each text; SigLIP was trained with max-length padding, so pad the same way."""
        for text in texts:
            if not text or not text.strip():
                raise ValueError("style text is empty: describe the style, e.g. 'an oil painting by Van Gogh'")
        device = device or next(self.model.parameters()).device
        tokens = self.tokenizer(
            list(texts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        model = self.model.to(device)
        features = model(input_ids=tokens["input_ids"].to(device)).pooler_output
        return F.normalize(features.float(), dim=-1)

    def encode_style(self, text: str, device: torch.device | str | None = None, templates: tuple[str, ...] = STYLE_TEMPLATES) -> torch.Tensor:
        """Mean of the template embeddings of one style text, renormalised: (1, dim)."""
        if not text or not text.strip():
            raise ValueError("style text is empty: describe the style, e.g. 'an oil painting by Van Gogh'")
        prompts = [template.format(text.strip()) for template in templates] if templates else [text]
        return F.normalize(self.encode(prompts, device).mean(dim=0, keepdim=True), dim=-1)


@dataclass
class ImageEncoder:
    """SigLIP vision tower with a differentiable preprocess, so losses can backpropagate into images."""

    name: str
    model: torch.nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_pretrained(cls, name_or_path: str, local_files_only: bool = False) -> "ImageEncoder":
        from transformers import SiglipVisionModel

        try:
            with _quiet_transformers():
                model = SiglipVisionModel.from_pretrained(name_or_path, local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            raise _not_found(name_or_path, error) from error
        model.eval().requires_grad_(False)
        mean, std = _normalisation(name_or_path)
        return cls(name_or_path, model, model.config.image_size, mean, std)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) in [0, 1] → resized, normalised pixel values, keeping the autograd graph."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (batch, 3, height, width) in [0, 1], got {tuple(images.shape)}")
        size = (self.image_size, self.image_size)
        x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
        mean = x.new_tensor(self.mean)[:, None, None]
        std = x.new_tensor(self.std)[:, None, None]
        return (x - mean) / std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length image embeddings (b, dim), differentiable with respect to ``images``."""
        model = self.model.to(images.device)
        pixels = self.preprocess(images).to(next(model.parameters()).dtype)
        return F.normalize(model(pixel_values=pixels).pooler_output.float(), dim=-1)


def _normalisation(name_or_path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """SigLIP normalises to [-1, 1]; a local preprocessor_config.json may say otherwise."""
    config_file = Path(name_or_path) / "preprocessor_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        return tuple(config.get("image_mean", (0.5,) * 3)), tuple(config.get("image_std", (0.5,) * 3))
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@functools.lru_cache(maxsize=2)
def load_text_encoder(name_or_path: str) -> TextEncoder:
    """Cached: re-encoding a prompt in a graph must not reload SigLIP from disk."""
    return TextEncoder.from_pretrained(name_or_path)


@functools.lru_cache(maxsize=1)
def load_image_encoder(name_or_path: str) -> ImageEncoder:
    return ImageEncoder.from_pretrained(name_or_path)
