"""The encoders of a model or a style: its SigLIP folder, or the CLIP_VISION (and for text, the paired CLIP)
connected to the node.

One place decides which it is and refuses the mismatches (a CLIP_VISION model without its CLIP_VISION, another
tower than the one it was made with, a CLIP_VISION on a SigLIP model, a CLIP on a SigLIP model, a CLIP that is not
the CLIP_VISION's partner), so every node says the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..stylemamba.encoders import ImageEncoder, StyleTextEncoder, load_image_encoder, load_text_encoder
from ..stylemamba.text_towers import paired_text_encoder
from ..stylemamba.text_vision_pairs import ClipPairError, pairs_table
from ..stylemamba.tower_identity import KNOWN_FILES, TowerIdentity, describe_encoder
from ..stylemamba.vision_towers import check_same_tower, clip_vision_encoder, differentiable_copy, tower_identity
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


@dataclass
class ManagedTextEncoder:
    """A text encoder and how ComfyUI puts it on its device: call ``ready`` before each use."""

    encoder: StyleTextEncoder
    patchers: tuple[object, ...]  # the CLIP's and the CLIP_VISION's for a pair; none for SigLIP

    def ready(self) -> StyleTextEncoder:
        if self.patchers:
            comfy_bridge.load_patcher(*self.patchers)  # ComfyUI's own: the CLIP that CLIPTextEncode uses
        else:
            comfy_bridge.load_model(self.encoder, self.encoder.model, "text encoder")
        return self.encoder


def text_encoder_for(encoder_id: str, clip_vision: object | None, clip: object | None, what: str) -> ManagedTextEncoder:
    """The text tower for ``encoder_id``: its SigLIP folder's, or the CLIP connected as ``clip`` once it is shown to be
    one CLIP model with the CLIP_VISION ``encoder_id`` names (connected as ``clip_vision``)."""
    tower = TowerIdentity.parse(encoder_id)
    if tower is None:
        if clip is not None or clip_vision is not None:
            raise ClipPairError(
                f"{what} reads {describe_encoder(encoder_id)}, which has its own text tower: disconnect clip and "
                "clip_vision (they are for a model made from a CLIP_VISION)"
            )
        encoder = load_text_encoder(comfy_bridge.resolve_encoder(encoder_id))
        return ManagedTextEncoder(encoder, ())
    if clip is None:
        raise ClipPairError(
            f"{what} reads image styles from {tower.describe()}, which has no text tower; encode reference pictures "
            "with Image Style Encode (and its CLIP_VISION), or connect the CLIP of the same CLIP model to clip "
            f"(pairs that work: {pairs_table()}), or use a SigLIP model for text"
        )
    managed = image_encoder_for(encoder_id, clip_vision, what)
    comfy_bridge.load_patcher(clip.patcher, clip_vision.patcher)
    encoder = paired_text_encoder(clip, managed.encoder, tower_identity(clip_vision))
    return ManagedTextEncoder(encoder, (clip.patcher, clip_vision.patcher))
