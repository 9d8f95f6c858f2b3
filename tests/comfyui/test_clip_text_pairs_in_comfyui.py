"""Text styles through a ComfyUI CLIP paired with its CLIP_VISION, on full-size random-weight stand-ins in the released
files' layouts (CLIPLoader, CLIPVisionLoader), no SigLIP and no network. The work happens in
probes/clip_text_pairs_in_comfyui.py (ComfyUI's venv); this asserts.

The pair is made one space by solving the stand-in ViT-L's visual projection on the colour probe's own features, so the
probe passing here shows the plumbing (ComfyUI's towers, projected pooled text, the decision), not that real files pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

PROBE = Path(__file__).parent / "probes" / "clip_text_pairs_in_comfyui.py"
#: Ours (ComfyUI's CLIP, fp16-stored weights computed in fp32, its attention) vs transformers' CLIPModel on the same
#: weights, both template-averaged: relative L2 of the unit style vectors.
TRANSFORMERS_TOLERANCE = 1e-3
PAIRS_NAMED = ("text_encoders/clip_l.safetensors", "clip_vision_l.safetensors", "SDXL checkpoint's clip_g",
               "CLIP-ViT-bigG-14-laion2B-39B-b160k")


@pytest.fixture(scope="module")
def report(comfyui, tier_report: list[str]) -> dict:
    result = comfyui.probe(PROBE, timeout=1800)
    pair = result["pair"]
    tier_report.append(f"CLIP + CLIP_VISION pair: ours vs transformers {pair['ours_vs_transformers']:.2e}, probe {pair['probe']}, "
                       f"{result['seconds']} s")
    return result


def test_the_paired_text_style_is_clips_text_embedding_in_the_vision_space(report):
    pair = report["pair"]
    assert pair["clip_towers"] == ["clip_l"] and pair["probe"] == {"correct": 6, "total": 6}
    assert pair["style_encoder"] == pair["model_encoder"] and pair["model_encoder"].startswith("clip_vision:vit-l-14:768:")
    assert pair["style_width"] == 768
    assert pair["style_norm"] == pytest.approx(1.0, abs=1e-5) and pair["source_norm"] == pytest.approx(1.0, abs=1e-5)
    assert pair["ours_vs_transformers"] < TRANSFORMERS_TOLERANCE, pair


def test_an_unaligned_pair_is_refused_with_its_measured_accuracy(report):
    message = report["unaligned"]["message"]
    assert message and re.search(r"the CLIP's clip_l and CLIP_VISION vit-l-14 .* have the shapes of OpenAI CLIP ViT-L/14 but are "
                                 r"not one space: zero-shot, [0-3] of 6 solid colours named right \(a pair needs 4\)", message)
    assert all(name in message for name in PAIRS_NAMED)


def test_a_clip_l_without_its_projection_is_refused_with_the_paired_vision_tower(report):
    refused = report["no_projection"]
    assert refused["same_trunk"]  # the paired clip_l's weights, less text_projection.weight (an SD1.5 checkpoint's)
    message = refused["message"]
    assert message and re.search(r"not one space: zero-shot, [0-3] of 6 solid colours", message)
    assert "SD1.5 or SDXL checkpoint" in message and all(name in message for name in PAIRS_NAMED)


def test_a_clip_of_another_family_is_refused_naming_the_pairs(report):
    refused = report["clip_g_with_vit_l"]
    assert refused["towers"] == ["clip_g"]
    assert refused["message"] and "the CLIP connected holds clip_g (clip-g), but CLIP_VISION vit-l-14" in refused["message"]
    assert "pairs with clip-l, from text_encoders/clip_l.safetensors" in refused["message"]
    assert all(name in refused["message"] for name in PAIRS_NAMED)


def test_a_text_fit_through_the_pair_saves_loads_and_fuses(report):
    fit = report["fit"]
    assert fit["steps"] == 1 and fit["trained_style"] == "an oil painting by Van Gogh"
    assert fit["loaded_encoder"] == fit["style_encoder"] == report["pair"]["model_encoder"]
    assert fit["round_trip_equal"] and fit["fused_shape"] == [1, 4, 8, 8] and fit["fused_finite"]
