"""Masks for video latents: a ComfyUI MASK given per video, per latent frame or per video frame, as weights per latent frame.

How video frames map to latent frames is the families' (``latent_families``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .latent_families import VideoInputError, describe_video_latent, video_families
from .masks import latent_mask


def video_mask(mask: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK for a (b, C, T, H, W) latent → (b, 1, T, H, W) weights.

    Accepted: one mask (every frame), one per sample (b), one per latent frame (T, batch 1), or one per
    video frame (r·(T − 1) + 1 for the compression r of a family with the latent's channels, batch 1),
    whose masks are averaged over the video frames each latent frame stands for.
    """
    batch, channels, frames, height, width = latent.shape
    count = 1 if mask.dim() == 2 else mask.shape[0]
    if count in (1, batch):
        return latent_mask(mask, batch, height, width)[:, :, None].expand(-1, -1, frames, -1, -1)
    per_frame = latent_mask(mask, count, height, width)[:, 0]  # (count, H, W)
    compressions = sorted({family.temporal for family in video_families(channels)})
    if batch == 1 and count == frames:
        return per_frame[None, None]
    for r in compressions:
        if batch == 1 and frames > 1 and count == r * (frames - 1) + 1:
            groups = F.avg_pool1d(per_frame[1:].flatten(1).T[None], r, r)[0].T.reshape(frames - 1, height, width)
            return torch.cat([per_frame[:1], groups])[None, None]
    video_counts = ", ".join(f"{r * (frames - 1) + 1} video frames" for r in compressions)
    raise VideoInputError(
        f"the mask has {count} entries; for this {frames}-frame LATENT of {batch} video(s) from "
        f"{describe_video_latent(channels)} give 1 mask, {batch} (one per video)"
        + (f", {frames} (one per latent frame){', or ' + video_counts if video_counts else ''}" if batch == 1 else "")
    )
