"""Which vision tower a style or a model belongs to, when it came from ComfyUI's CLIP_VISION socket.

SigLIP folders are named by path or hub id (``encoders.encoder_identity``). A CLIP_VISION has no name the
graph keeps, so its id is built from what the weights are: family (detected from the tower's shape), the
style embedding's width and a fingerprint of the weights. Styles, models and checkpoints carry that id
as the plain string they always carried, so nothing else has to change to compare them.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Prefix of every CLIP_VISION encoder id: ``clip_vision:<family>:<width>:<fingerprint>``.
PREFIX = "clip_vision:"

#: Family -> the file artists usually hold for it (ComfyUI/models/clip_vision), quoted when an encoder does not fit.
KNOWN_FILES = {
    "vit-h-14": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (IPAdapter_plus)",
    "vit-bigg-14": "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors (IPAdapter_plus)",
    "vit-l-14": "clip_vision_l.safetensors (XLabs Flux IP-Adapter)",
    "vit-l-14-336": "a CLIP ViT-L/14 at 336 px",
    "siglip-so400m-384": "sigclip_vision_patch14_384.safetensors (Flux Redux)",
    "siglip-so400m-512": "a SigLIP so400m at 512 px",
}


@dataclass(frozen=True)
class TowerIdentity:
    """A CLIP_VISION tower as styles and checkpoints name it."""

    family: str
    width: int
    fingerprint: str

    @property
    def encoder_id(self) -> str:
        return f"{PREFIX}{self.family}:{self.width}:{self.fingerprint}"

    def describe(self) -> str:
        return f"CLIP_VISION {self.family} ({self.width}-d, weights {self.fingerprint})"

    @classmethod
    def parse(cls, encoder_id: str) -> "TowerIdentity | None":
        """The identity in ``encoder_id``, or None for a SigLIP id (a folder or hub id)."""
        if not encoder_id.startswith(PREFIX):
            return None
        try:
            family, width, fingerprint = encoder_id[len(PREFIX):].rsplit(":", 2)
            return cls(family, int(width), fingerprint)
        except ValueError:
            raise ValueError(f"malformed CLIP_VISION encoder id {encoder_id!r}: expected {PREFIX}<family>:<width>:<fingerprint>") from None


def describe_encoder(encoder_id: str) -> str:
    """An encoder as the user knows it: ``SigLIP 'google/…'`` or ``CLIP_VISION vit-h-14 (1024-d, weights …)``."""
    tower = TowerIdentity.parse(encoder_id)
    return tower.describe() if tower is not None else f"SigLIP {encoder_id!r}"


def is_clip_vision(encoder_id: str) -> bool:
    return encoder_id.startswith(PREFIX)
