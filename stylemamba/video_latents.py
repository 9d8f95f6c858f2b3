"""Video latent families: which VAE made a (b, C, T, H, W) LATENT, and how its frames map to video frames.

Numbers from ComfyUI 0.3.64 (``comfy/sd.py`` VAE set-up and ``comfy/latent_formats.py``): a VAE with
temporal compression r encodes F video frames into ⌊(F + r − 1) / r⌋ latent frames and decodes T latent
frames into r·(T − 1) + 1 video frames, so only F = r·(T − 1) + 1 round-trips: latent frame 0 is video
frame 0 alone and latent frame t ≥ 1 stands for video frames r·(t − 1) + 1 … r·t.

The LATENT carries no family tag, only channels and shape; several families share 16 channels, so a
detection names every candidate and anything that depends on r is decided by the candidates together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import PackError
from .masks import latent_mask


class VideoInputError(PackError, ValueError):
    """A video LATENT, mask or frame count that does not fit the video path, named in the user's terms."""


@dataclass(frozen=True)
class VideoFamily:
    """One video VAE: latent channels, frames per latent frame (temporal) and pixels per latent pixel (spatial)."""

    name: str
    channels: int
    temporal: int
    spatial: int

    def video_frames(self, latent_frames: int) -> int:
        """Frames the VAE decodes ``latent_frames`` into."""
        return self.temporal * (latent_frames - 1) + 1

    def latent_frames(self, video_frames: int) -> int:
        """Latent frames of a video; refuses a frame count the VAE would pad or drop frames of."""
        if video_frames < 1 or (video_frames - 1) % self.temporal:
            below = self.video_frames(max(1, (video_frames - 1) // self.temporal + 1))
            raise VideoInputError(
                f"a {self.name} VAE packs {self.temporal} video frames into a latent frame, so a video needs "
                f"{self.temporal}·k + 1 frames (…, {below}, {below + self.temporal}, …); this one has {video_frames}"
            )
        return (video_frames - 1) // self.temporal + 1


VIDEO_FAMILIES = (
    VideoFamily("Wan 2.1 / Wan 2.2-14B", 16, 4, 8),
    VideoFamily("Wan 2.2-5B", 48, 4, 16),
    VideoFamily("HunyuanVideo", 16, 4, 8),
    VideoFamily("LTX-Video", 128, 8, 32),
    VideoFamily("Mochi", 12, 6, 8),
    VideoFamily("Cosmos", 16, 8, 8),
)


def video_families(channels: int) -> tuple[VideoFamily, ...]:
    """Every family whose 5-D latents have ``channels`` channels (none for an unknown count)."""
    return tuple(family for family in VIDEO_FAMILIES if family.channels == channels)


def describe_video_latent(channels: int) -> str:
    """The family (or families) a 5-D latent of ``channels`` channels comes from, for messages."""
    names = [family.name for family in video_families(channels)]
    if not names:
        return "an unrecognised video VAE"
    return f"a {' or '.join(names)} video VAE"


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


def video_channel_mismatch(expected: int, got: int) -> str:
    """The mismatch message for a video LATENT, naming the video families on both sides."""
    return (
        f"this StyleMamba model expects {expected}-channel latents (from {describe_video_latent(expected)} for video), "
        f"but the video LATENT has {got} channels: it comes from {describe_video_latent(got)}. "
        f"Use a StyleMamba model trained for {got}-channel latents or the matching VAE."
    )
