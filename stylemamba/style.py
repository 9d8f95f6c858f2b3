"""The STYLE_EMBED value: a style as a point (and a direction) in the shared space of a text and an image tower."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .encoders import StyleTextEncoder

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


def encode_text_style(encoder: StyleTextEncoder, text: str, source_text: str = DEFAULT_SOURCE_TEXT) -> StyleEmbedding:
    """Template-averaged embeddings of the style text and of the source ("a photo") text."""
    with torch.no_grad():
        target = encoder.encode_style(text).cpu()
        source = encoder.encode_style(source_text or DEFAULT_SOURCE_TEXT).cpu()
    return StyleEmbedding(target=target, source=source, description=text.strip(), encoder=encoder.name)
