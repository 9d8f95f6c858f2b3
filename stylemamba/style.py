"""The STYLE_EMBED value: a style as a point (and a direction) in SigLIP's shared space."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .encoders import ImageEncoder, TextEncoder

DEFAULT_SOURCE_TEXT = "a photo"


@dataclass(frozen=True)
class StyleEmbedding:
    """``target`` conditions the fusion model; ``target - source`` is the direction losses aim along."""

    target: torch.Tensor  # (1, dim), unit length
    source: torch.Tensor  # (1, dim), unit length
    description: str
    encoder: str

    @property
    def direction(self) -> torch.Tensor:
        return F.normalize(self.target - self.source, dim=-1)


def encode_text_style(encoder: TextEncoder, text: str, source_text: str = DEFAULT_SOURCE_TEXT) -> StyleEmbedding:
    """Template-averaged embeddings of the style text and of the source ("a photo") text."""
    with torch.no_grad():
        target = encoder.encode_style(text).cpu()
        source = encoder.encode_style(source_text or DEFAULT_SOURCE_TEXT).cpu()
    return StyleEmbedding(target=target, source=source, description=text.strip(), encoder=encoder.name)


def encode_image_style(encoder: ImageEncoder, style_images: torch.Tensor, source_images: torch.Tensor) -> StyleEmbedding:
    """A style taken from reference pictures: mean image embedding, direction from the content photos."""
    if style_images.shape[0] == 0 or source_images.shape[0] == 0:
        raise ValueError("image style needs at least one style image and one content image")
    with torch.no_grad():
        target = F.normalize(encoder.encode(style_images).mean(dim=0, keepdim=True), dim=-1).cpu()
        source = F.normalize(encoder.encode(source_images).mean(dim=0, keepdim=True), dim=-1).cpu()
    return StyleEmbedding(target=target, source=source, description=f"image style ({style_images.shape[0]} images)", encoder=encoder.name)
