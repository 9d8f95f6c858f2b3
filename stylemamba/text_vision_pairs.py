"""Which ComfyUI text CLIPs and CLIP_VISION towers are the two halves of one CLIP model, so words and pictures land in
one space, and the measurement that decides whether a given pair of files really is one.

A text tower is told by its (hidden width, layer count), which ComfyUI fixes from the file's keys; its vision partner
by the family ``vision_towers.family_of`` detects. That the shapes agree says nothing about the weights: ComfyUI leaves a
text projection the file lacks uninitialised (the clip_l of SD1.5 and SDXL checkpoints has none), so a zero-shot
colour probe decides: six solid-colour pictures through the vision tower, six colour prompts through the text tower,
and the pair qualifies when enough pictures are closest to their own prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import PackError
from .tower_identity import KNOWN_FILES


@dataclass(frozen=True)
class ClipPair:
    """One CLIP model whose text and vision towers artists commonly hold as ComfyUI files, both with projections."""

    text_family: str
    text_shape: tuple[int, int]  # (hidden width, layers) of the text transformer
    vision_family: str
    model: str
    text_files: str  # the held text-encoder files that carry the text projection

    def describe(self) -> str:
        return f"{self.model}: CLIP from {self.text_files} + CLIP_VISION {KNOWN_FILES.get(self.vision_family, self.vision_family)}"


#: The pairs that work, from the released files' key lists: Flux's and SD3.5's clip_l.safetensors and clip_g.safetensors
#: carry ``text_projection.weight``; SDXL checkpoints carry clip_g's projection, SD2.x checkpoints clip_h's.
PAIRS = (
    ClipPair("clip-l", (768, 12), "vit-l-14", "OpenAI CLIP ViT-L/14",
             "text_encoders/clip_l.safetensors (Flux.1, SD3.5)"),
    ClipPair("clip-h", (1024, 24), "vit-h-14", "OpenCLIP ViT-H/14 laion2B-s32B-b79K",
             "an SD2.x checkpoint (its OpenCLIP ViT-H text tower)"),
    ClipPair("clip-g", (1280, 32), "vit-bigg-14", "OpenCLIP ViT-bigG/14 laion2B-39B-b160k",
             "an SDXL checkpoint's clip_g, or text_encoders/clip_g.safetensors (SD3.5)"),
)
#: Held text encoders of a paired shape that lack the projection: ComfyUI drops ``clip_l.transformer.text_projection``
#: when it saves SD1.5 and SDXL checkpoints, and those releases never had one.
NO_PROJECTION = "the clip_l of an SD1.5 or SDXL checkpoint, saved without its text projection"
#: Vision families artists hold that have no commonly held text partner.
UNPAIRED_VISION = {
    "vit-l-14-336": "its text tower is not shipped as a ComfyUI text encoder",
    "siglip-so400m-384": "SigLIP's text tower is not a ComfyUI CLIP (use a SigLIP folder from models/siglip for text styles)",
    "siglip-so400m-512": "SigLIP's text tower is not a ComfyUI CLIP (use a SigLIP folder from models/siglip for text styles)",
}

#: The colour probe: solid pictures and the prompts that name them, in the same order.
COLOURS = (
    ("red", (1.0, 0.0, 0.0)), ("green", (0.0, 1.0, 0.0)), ("blue", (0.0, 0.0, 1.0)),
    ("yellow", (1.0, 1.0, 0.0)), ("black", (0.0, 0.0, 0.0)), ("white", (1.0, 1.0, 1.0)),
)
COLOUR_PROMPT = "a solid {} colour"
#: Pictures that must be closest to their own prompt: 4 of 6 happens by chance with probability 0.87 %
#: (binomial, p = 1/6), while a real CLIP names solid colours near perfectly. Not checked on real weights here.
REQUIRED_CORRECT = 4
#: Side of the probe's pictures; the vision tower resizes them to its input size.
PICTURE_SIDE = 64


class ClipPairError(PackError, ValueError):
    """A CLIP and a CLIP_VISION that are not the two towers of one CLIP model, with the pairs that are."""


def pairs_table() -> str:
    """The working pairs, for error messages."""
    return "; ".join(pair.describe() for pair in PAIRS)


def text_family(width: int, layers: int) -> str:
    """The family of a text transformer of this shape, or a name built from the shape."""
    for pair in PAIRS:
        if pair.text_shape == (width, layers):
            return pair.text_family
    return f"clip-text-{width}x{layers}"


def pair_for_vision(vision_family: str, vision: str) -> ClipPair:
    """The pair whose vision tower is ``vision_family``; ``vision`` describes the CLIP_VISION for the error."""
    for pair in PAIRS:
        if pair.vision_family == vision_family:
            return pair
    why = UNPAIRED_VISION.get(vision_family, "no commonly held text encoder is its partner")
    raise ClipPairError(f"{vision} has no CLIP text partner ({why}); text styles through a CLIP + CLIP_VISION pair "
                        f"work with: {pairs_table()}")


@dataclass(frozen=True)
class ColourProbe:
    """How many of the solid-colour pictures were closest to their own prompt."""

    correct: int
    total: int

    @property
    def passed(self) -> bool:
        return self.correct >= REQUIRED_CORRECT

    def describe(self) -> str:
        return f"{self.correct} of {self.total} solid colours named right (a pair needs {REQUIRED_CORRECT})"


def colour_pictures(side: int = PICTURE_SIDE) -> torch.Tensor:
    """The probe's pictures, (6, 3, side, side) in [0, 1]."""
    return torch.tensor([rgb for _, rgb in COLOURS])[:, :, None, None].expand(-1, -1, side, side).contiguous()


def colour_prompts() -> list[str]:
    return [COLOUR_PROMPT.format(name) for name, _ in COLOURS]


def measure_colours(
    encode_images: Callable[[torch.Tensor], torch.Tensor], encode_texts: Callable[[list[str]], torch.Tensor],
) -> ColourProbe:
    """Zero-shot classification of the colour pictures by the colour prompts; non-finite features classify nothing."""
    with torch.no_grad():
        images = F.normalize(encode_images(colour_pictures()).float().cpu(), dim=-1)
        texts = F.normalize(encode_texts(colour_prompts()).float().cpu(), dim=-1)
    if images.shape[-1] != texts.shape[-1] or not (torch.isfinite(images).all() and torch.isfinite(texts).all()):
        return ColourProbe(0, len(COLOURS))
    predicted = (images @ texts.T).argmax(dim=-1)
    return ColourProbe(int((predicted == torch.arange(len(COLOURS))).sum()), len(COLOURS))
