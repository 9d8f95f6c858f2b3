"""Text styles through ComfyUI's own CLIP (text) paired with the CLIP_VISION of the same CLIP model.

The core never imports ComfyUI: it reads what a ``comfy.sd.CLIP`` holds. ``cond_stage_model`` keeps one
``SDClipModel`` per text tower as an attribute (``clip_l``, ``clip_g``, ``clip_h`` … for SD1.5, SDXL, SD2.x, SD3, Flux),
``tokenizer`` the tokenizer of the same name. Each ``SDClipModel`` holds a ``CLIPTextModel`` (``transformer``) whose
projected pooled output is CLIP's text embedding; its ``tokenize_with_weights``/``encode_token_weights`` are the calls
ComfyUI's own ``CLIP.encode_from_tokens`` makes, with the pooled output forced to the projected one as core code does.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .encoders import ImageEncoder, StyleTextEncoder
from .text_vision_pairs import (NO_PROJECTION, ClipPair, ClipPairError, ColourProbe, measure_colours, pair_for_vision, pairs_table,
                                text_family)
from .tower_identity import TowerIdentity
from .vision_towers import weights_fingerprint


@dataclass(frozen=True)
class ComfyTextTower:
    """One text tower of a ComfyUI CLIP: its ``SDClipModel``, tokenizer, and what it is."""

    attribute: str  # clip_l, clip_g, …
    clip_model: torch.nn.Module
    tokenizer: object
    family: str


def text_towers(clip: object) -> list[ComfyTextTower]:
    """The CLIP text towers inside a ComfyUI CLIP (T5 and LLM encoders beside them are skipped)."""
    towers = []
    for attribute, child in clip.cond_stage_model.named_children():
        transformer = getattr(child, "transformer", None)
        text_model = getattr(transformer, "text_model", None)
        tokenizer = getattr(clip.tokenizer, attribute, None)
        if hasattr(text_model, "final_layer_norm") and hasattr(transformer, "text_projection") and tokenizer is not None:
            width = text_model.final_layer_norm.weight.shape[0]
            towers.append(ComfyTextTower(attribute, child, tokenizer, text_family(width, len(text_model.encoder.layers))))
    return towers


@dataclass
class ClipPairTextEncoder(StyleTextEncoder):
    """A ComfyUI CLIP text tower whose projected pooled output lands in its CLIP_VISION's image space.

    ``name`` is the CLIP_VISION's encoder id: a style from it is a style of that tower, so StyleFuse, Style Mix and
    Style Score take it as they take an image style. The prompt is taken literally (ComfyUI's ``(word:1.2)`` weights
    change the token sequence, not the pooled embedding, so they are switched off).
    """

    name: str
    tower: ComfyTextTower

    def embed(self, texts: list[str], device: torch.device | str | None) -> torch.Tensor:
        model = self.tower.clip_model
        model.reset_clip_options()
        model.set_clip_options({"projected_pooled": True})
        try:
            pooled = [model.encode_token_weights(self.tower.tokenizer.tokenize_with_weights(text, disable_weights=True))[1]
                      for text in texts]
        finally:
            model.reset_clip_options()
        features = torch.cat(pooled).float()
        return F.normalize(features.to(device) if device is not None else features, dim=-1)


_MEASURED: dict[tuple[str, str], ColourProbe] = {}
_TEXT_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _text_fingerprint(tower: ComfyTextTower) -> str:
    known = _TEXT_FINGERPRINTS.get(tower.clip_model)
    if known is None:
        known = _TEXT_FINGERPRINTS[tower.clip_model] = weights_fingerprint(tower.clip_model.transformer)
    return known


def paired_text_encoder(clip: object, image_encoder: ImageEncoder, vision: TowerIdentity) -> ClipPairTextEncoder:
    """The text tower of ``clip`` that is one CLIP model with the vision tower ``vision`` (encoded by ``image_encoder``).

    Refuses a vision family with no text partner, a CLIP without the partner's shape, and a pair whose colour probe
    fails (measured once per pair of weights); every refusal names the pairs that work.
    """
    pair = pair_for_vision(vision.family, vision.describe())
    towers = text_towers(clip)
    tower = next((tower for tower in towers if tower.family == pair.text_family), None)
    if tower is None:
        held = ", ".join(f"{t.attribute} ({t.family})" for t in towers) or "no CLIP text tower"
        raise ClipPairError(
            f"the CLIP connected holds {held}, but {vision.describe()} pairs with {pair.text_family}, from {pair.text_files}; "
            f"text styles through a CLIP + CLIP_VISION pair work with: {pairs_table()}"
        )
    encoder = ClipPairTextEncoder(name=vision.encoder_id, tower=tower)
    key = (_text_fingerprint(tower), vision.encoder_id)
    if key not in _MEASURED:
        _MEASURED[key] = measure_colours(image_encoder.encode, encoder.encode)
    probe = _MEASURED[key]
    if not probe.passed:
        raise ClipPairError(_not_one_space(tower, vision, pair, probe))
    return encoder


def _not_one_space(tower: ComfyTextTower, vision: TowerIdentity, pair: ClipPair, probe: ColourProbe) -> str:
    return (
        f"the CLIP's {tower.attribute} and {vision.describe()} have the shapes of {pair.model} but are not one space: "
        f"zero-shot, {probe.describe()} (text weights {_text_fingerprint(tower)}). Either the text encoder has no "
        f"projection ({NO_PROJECTION}; ComfyUI leaves a missing one uninitialised) or the two files come from different "
        f"trainings; pairs that work: {pairs_table()}"
    )
