"""One video clip in a fit: its frames as a (1, C, T', H, W) latent, and a random window of it decoded per step.

The fusion model runs over every latent frame each step (latent space is cheap, and the temporal
mixers and latent temporal terms need the whole clip); only ``frames_per_step`` latent frames are
decoded for the image losses, so the decoder's memory stays bounded whatever the clip's length.

The codec decides the temporal compression: an image VAE's ``encode`` returns one latent per frame
(T' = T), a video VAE's (ComfyUI's Wan, HunyuanVideo, …) one 5-D latent whose frames each stand for
several video frames; its frame count is checked against the latent families that VAE could be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..latent_families import VideoInputError, describe_video_latent, video_families


def check_temporal_compression(video_frames: int, latent: torch.Tensor) -> None:
    """Refuse a video VAE's latent whose frame count no candidate family gives for ``video_frames`` frames.

    A VAE that pads or drops frames would pair the styled latent frames with the wrong video frames.
    Channels no known family has are not checked: their compression is unknown.
    """
    channels, latent_frames = latent.shape[1], latent.shape[2]
    families = video_families(channels)
    if not families or any(family.video_frames(latent_frames) == video_frames for family in families):
        return
    for family in families:
        family.latent_frames(video_frames)  # the family's own message when the count does not fit it
    raise VideoInputError(
        f"the VAE encoded {video_frames} video frames into {latent_frames} latent frames, which {describe_video_latent(channels)} "
        "does not: pass the frames of one clip to the VAE the latents are for"
    )


@dataclass
class VideoClip:
    """The content clip's latents (1, C, T', h, w) and whether they came from a video VAE (several frames per latent frame)."""

    latents: torch.Tensor
    video_codec: bool

    @property
    def frames(self) -> int:
        return self.latents.shape[2]

    @property
    def flat(self) -> torch.Tensor:
        """(T', C, h, w): the frames as the model's batch, in time order (``TemporalContext`` reads them so)."""
        return self.latents[0].movedim(1, 0)

    def window(self, count: int, generator: torch.Generator) -> slice:
        """A random run of ``count`` consecutive latent frames (all of them when the clip is shorter)."""
        count = min(count, self.frames)
        start = int(torch.randint(0, self.frames - count + 1, (1,), generator=generator))
        return slice(start, start + count)

    def decode(self, decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, window: slice) -> torch.Tensor:
        """The ``window`` of (1, C, T', h, w) ``latents`` decoded as frames (n, 3, H, W).

        A video VAE decodes the window as a clip of its own (its first latent frame then counts as a first
        frame); the loss references are decoded the same way, so styled and content frames still pair.
        """
        part = latents[:, :, window]
        if not self.video_codec:
            return decode(part[0].movedim(1, 0))
        images = decode(part)
        return images[0].movedim(1, 0) if images.dim() == 5 else images


def encode_clip(encode: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor) -> VideoClip:
    """Frames (T, 3, H, W) of one clip → its ``VideoClip``; ``encode`` gives (T, C, h, w) or (1, C, T', h, w)."""
    latents = encode(frames).float()
    if latents.dim() == 4 and latents.shape[0] == frames.shape[0]:
        return VideoClip(latents.movedim(0, 1)[None], video_codec=False)
    if latents.dim() == 5 and latents.shape[0] == 1:
        check_temporal_compression(frames.shape[0], latents)
        return VideoClip(latents, video_codec=True)
    raise VideoInputError(
        f"the VAE encoded {frames.shape[0]} frames into latents of shape {tuple(latents.shape)}; a video fit needs one "
        "latent per frame (an image VAE) or one (1, channels, frames, height, width) clip (a video VAE)"
    )


def as_video(flat: torch.Tensor) -> torch.Tensor:
    """(T', C, h, w) frames of one clip → (1, C, T', h, w), the layout of the temporal terms."""
    return flat.movedim(0, 1)[None]
