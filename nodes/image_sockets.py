"""ComfyUI IMAGE sockets → the core's (batch, channels, height, width) tensors, checked once for every node."""

from __future__ import annotations

import torch

from ..stylemamba.stylize import check_finite


def channels_first(images: torch.Tensor, name: str) -> torch.Tensor:
    """ComfyUI IMAGE (b, H, W, C) → (b, C, H, W), alpha kept, refusing empty and non-finite batches."""
    if images.dim() != 4:
        raise ValueError(f"{name} must be an IMAGE batch (batch, height, width, channels), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: give at least one image")
    check_finite(name, images)
    return images.movedim(-1, 1).float()


def rgb_batch(images: torch.Tensor, name: str) -> torch.Tensor:
    """(b, 3, H, W) in [0, 1] for a VAE, alpha dropped as VAEEncode does; a clone, so never an inference tensor."""
    batch = channels_first(images, name)
    if batch.shape[1] not in (3, 4):
        raise ValueError(f"{name} must be an IMAGE batch (b, H, W, 3), got shape {tuple(images.shape)}")
    return batch[:, :3].clone()
