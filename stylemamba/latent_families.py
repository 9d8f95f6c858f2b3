"""Latent families: which VAE made a LATENT, read from its channels, in one table that every mismatch message reads.

Image latents ``(b, C, H, W)``: one family per channel count (``IMAGE_FAMILIES``). Video latents ``(b, C, T, H, W)``
(``VIDEO_FAMILIES``), with numbers from ComfyUI 0.3.64 (``comfy/sd.py`` VAE set-up and ``comfy/latent_formats.py``): a
VAE with temporal compression r encodes F video frames into ⌊(F + r − 1) / r⌋ latent frames and decodes T latent
frames into r·(T − 1) + 1 video frames, so only F = r·(T − 1) + 1 round-trips: latent frame 0 is video
frame 0 alone and latent frame t ≥ 1 stands for video frames r·(t − 1) + 1 … r·t.

The LATENT carries no family tag, only channels and shape; several video families share 16 channels, so a
detection names every candidate and anything that depends on r is decided by the candidates together.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PackError

#: Image latent families by channel count, to explain a mismatch in the user's words.
IMAGE_FAMILIES = {4: "an SD1.5/SDXL VAE", 16: "an SD3/Flux.1 VAE", 32: "a Flux.2 VAE", 128: "a Flux.2 packed latent"}


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


def latent_channel_mismatch(expected: int, got: int, video: bool = False) -> str:
    """The message for a LATENT whose channels are not the model's, naming the families on both sides (video ones for a
    video LATENT), e.g. 4-channel SD vs 16-channel Flux."""
    if video:
        want, latent, have = f"from {describe_video_latent(expected)} for video", "video LATENT", describe_video_latent(got)
    else:
        want, latent, have = IMAGE_FAMILIES.get(expected, "a VAE"), "LATENT", IMAGE_FAMILIES.get(got, "an unrecognised VAE")
    return (
        f"this StyleMamba model expects {expected}-channel latents ({want}), but the {latent} has {got} channels: "
        f"it comes from {have}. Use a StyleMamba model trained for {got}-channel latents or the matching VAE."
    )
