"""ComfyUI MASKs on a latent: shape checks and the resize both StyleFuse's mask and StyleMix's masks use."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_mask(mask: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """ComfyUI MASK (b, h, w) or (h, w) in pixels → (batch, 1, height, width) weights for the latent."""
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"mask must be (batch, height, width), got shape {tuple(mask.shape)}")
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"mask batch {mask.shape[0]} does not match the latent batch {batch}")
    resized = F.interpolate(mask[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    return resized.clamp(0, 1).expand(batch, -1, -1, -1)


def check_region_mask(mask: torch.Tensor, name: str) -> None:
    """A mask that picks a region: (h, w) or (b, h, w), finite, and not all zero (its region would be empty)."""
    if mask.dim() not in (2, 3):
        raise ValueError(f"{name} must be a MASK (batch, height, width), got shape {tuple(mask.shape)}")
    if not torch.isfinite(mask).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if not (mask > 0).any():
        raise ValueError(f"{name} is all zero, so its style would never show; paint its region or leave the mask out")


def region_on_latent(mask: torch.Tensor, name: str, batch: int, height: int, width: int) -> torch.Tensor:
    """``latent_mask`` for a region mask, refusing one drawn at another aspect ratio than the latent.

    Up to one latent pixel of difference is accepted: VAE encoders crop images to a multiple of 8.
    """
    mask_height, mask_width = mask.shape[-2:]
    if abs(mask_height * width / mask_width - height) >= 1:
        raise ValueError(
            f"{name} is {mask_width}×{mask_height} px, another aspect ratio than the {width}×{height} latent; "
            "draw the masks on the content image the latent was encoded from"
        )
    try:
        return latent_mask(mask, batch, height, width)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error
