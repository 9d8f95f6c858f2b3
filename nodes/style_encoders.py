"""The image encoder of a model or a style: its SigLIP folder, or the CLIP_VISION connected to the node.

One place decides which it is and refuses the mismatches (a CLIP_VISION model without its CLIP_VISION, another
tower than the one it was made with, a CLIP_VISION on a SigLIP model), so every node says the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..stylemamba.encoders import ImageEncoder, load_image_encoder
from ..stylemamba.tower_identity import KNOWN_FILES, TowerIdentity, describe_encoder
from ..stylemamba.vision_towers import check_same_tower, clip_vision_encoder, differentiable_copy
from . import comfy_bridge


@dataclass
class ManagedImageEncoder:
    """An image encoder and how ComfyUI puts it on its device: call ``ready`` before each use."""

    encoder: ImageEncoder
    clip_vision: object | None

    def ready(self) -> ImageEncoder:
        if self.clip_vision is not None:
            comfy_bridge.load_patcher(self.clip_vision.patcher)  # ComfyUI's own patcher: shared with IPAdapter, Redux
        else:
            comfy_bridge.load_model(self.encoder, self.encoder.model, "text encoder")
        return self.encoder


def image_encoder_for(encoder_id: str, clip_vision: object | None, what: str) -> ManagedImageEncoder:
    """The encoder ``encoder_id`` names: a SigLIP folder, or ``clip_vision`` once checked to be that very tower."""
    tower = TowerIdentity.parse(encoder_id)
    if tower is None:
        if clip_vision is not None:
            raise ValueError(
                f"{what} reads {describe_encoder(encoder_id)}, so a CLIP_VISION does not fit it: disconnect clip_vision, "
                "or make the model from the CLIP_VISION (Load StyleMamba 'new (untrained)' or Train StyleMamba with it connected)"
            )
        return ManagedImageEncoder(load_image_encoder(comfy_bridge.resolve_encoder(encoder_id)), None)
    if clip_vision is None:
        held = KNOWN_FILES.get(tower.family, "the same file")
        raise ValueError(
            f"{what} was made with {tower.describe()}: connect that CLIP_VISION (Load CLIP Vision with {held}) to clip_vision"
        )
    check_same_tower(encoder_id, clip_vision, what)
    return ManagedImageEncoder(clip_vision_encoder(clip_vision), clip_vision)


def differentiable(managed: ManagedImageEncoder) -> ImageEncoder:
    """The CLIP_VISION's tower as a copy a fit can backpropagate through, loaded by ComfyUI's model management."""
    copied = differentiable_copy(managed.encoder)
    comfy_bridge.load_model(copied, copied.model, "differentiable encoder")
    return copied
