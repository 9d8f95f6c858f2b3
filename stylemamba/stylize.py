"""Apply a StyleMamba model to latents: batching, video frames, masks and strength in one place.

Both the StyleFuse node and the ``stylize`` command call this, so they give identical results.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from .checkpoint import StyleMamba
from .style import StyleEmbedding


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


@torch.no_grad()
def stylize_latents(
    style_mamba: StyleMamba,
    samples: torch.Tensor,
    style: StyleEmbedding,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Restyle (b, C, H, W) image latents or (b, C, T, H, W) video latents frame by frame.

    ``progress(done, total)`` is called after each chunk of ``batch_size`` latents. The result
    is on ``samples``'s device and dtype; masked-out regions keep their exact input values.
    ``autocast_dtype`` (e.g. bf16 on a GPU) runs the math in low precision while the weights stay
    fp32, so a model used for inference can still be saved or trained without loss.
    """
    if samples.dim() not in (4, 5):
        raise ValueError(f"LATENT samples must be 4-D (image) or 5-D (video), got shape {tuple(samples.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    style_mamba.check_latent_channels(samples.shape[1])
    frames = samples.movedim(1, 2).flatten(0, 1) if samples.dim() == 5 else samples
    model = style_mamba.model.to(device)
    condition = style.target.to(device)
    device_type = torch.device(device).type
    outputs = []
    for start in range(0, frames.shape[0], batch_size):
        chunk = frames[start : start + batch_size].to(device=device, dtype=torch.float32)
        precision = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with precision:
            styled_chunk = model(chunk, condition, strength)
        outputs.append(styled_chunk.to(samples.device, samples.dtype))
        if progress is not None:
            progress(min(start + batch_size, frames.shape[0]), frames.shape[0])
    styled = torch.cat(outputs)
    if samples.dim() == 5:
        styled = styled.unflatten(0, (samples.shape[0], samples.shape[2])).movedim(2, 1)
    if mask is None:
        return styled
    height, width = samples.shape[-2:]
    weights = latent_mask(mask.to(samples.device), samples.shape[0], height, width).to(samples.dtype)
    if samples.dim() == 5:
        weights = weights[:, :, None]
    return samples + weights * (styled - samples)
