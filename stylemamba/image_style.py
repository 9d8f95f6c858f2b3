"""A style from reference pictures, in the same SigLIP space (and the same STYLE_EMBED) as a text style.

Several references of one style are averaged in embedding space, weighted: they describe one style, so
their mean is that style's point. Styles meant for different regions or kept apart belong in a StyleMix.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .encoders import ImageEncoder
from .mixing import normalise_weights
from .style import StyleEmbedding

#: The background transparent pixels are put on, as transformers' ``convert_to_rgb`` does for SigLIP.
ALPHA_BACKGROUND = 1.0


def siglip_rgb(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """(b, C, H, W) in [0, 1] with 1 (grey), 3 (RGB) or 4 (RGBA) channels → RGB as SigLIP's processor sees it.

    Transparency is composited onto white and grey is repeated to three channels, like transformers'
    ``convert_to_rgb``; the size is left alone, since ``ImageEncoder`` resizes to its input size itself.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"{name} must be (batch, 1, 3 or 4 channels, height, width) images, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: give at least one reference image")
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] == 3:
        return images
    alpha = images[:, 3:].clamp(0, 1)
    return images[:, :3] * alpha + ALPHA_BACKGROUND * (1 - alpha)


def image_embedding(encoder: ImageEncoder, images: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted mean (1, dim) of the unit SigLIP embeddings of every image in ``images`` (batches of any size)."""
    device = next(encoder.model.parameters()).device
    with torch.no_grad():
        features = torch.cat([encoder.encode(siglip_rgb(batch).to(device)) for batch in images]).float().cpu()
    shares = normalise_weights([1.0] * len(features) if weights is None else list(weights), "reference images", "image")
    return F.normalize((torch.tensor(shares)[:, None] * features).sum(dim=0, keepdim=True), dim=-1)


def encode_reference_style(
    encoder: ImageEncoder, images: Sequence[torch.Tensor], source: torch.Tensor, weights: Sequence[float] | None = None
) -> StyleEmbedding:
    """The style of reference pictures; ``source`` (1, dim) is where its direction starts (content images or text)."""
    count = sum(batch.shape[0] for batch in images)
    if count == 0:
        raise ValueError("no reference images: give at least one style image")
    if weights is not None and len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} reference images; give one per image")
    target = image_embedding(encoder, images, weights)
    description = f"image style ({count} image{'s' if count != 1 else ''})"
    return StyleEmbedding(target=target, source=source.float().cpu(), description=description, encoder=encoder.name)
