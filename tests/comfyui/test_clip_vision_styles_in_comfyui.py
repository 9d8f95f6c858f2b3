"""Image styles through ComfyUI's own CLIP_VISION on random-weight stand-ins of each family's real file, no SigLIP
folder and no network. The work happens in probes/clip_vision_styles_in_comfyui.py (ComfyUI's venv); this asserts.

By default ViT-L/14 (fit → save → load → fuse) and SigLIP so400m (new model → save → load → fuse, no fit) run; ViT-H, ViT-bigG
and the SigLIP fit need STYLEMAMBA_TIER_HEAVY=1 (see HEAVY). The fits run one step with one crop through the full-size
towers (LossWeights patched in the probe), enough to show the gradient path, not a style.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

PROBE = Path(__file__).parent / "probes" / "clip_vision_styles_in_comfyui.py"
#: The full-size ViT-H (632 M parameters) and ViT-bigG (1.8 G) and the SigLIP fit take tens of minutes on 2 shared CPU
#: cores and ViT-bigG about 8 GB of free memory: STYLEMAMBA_TIER_HEAVY=1 adds them (on a quiet machine or a GPU host).
HEAVY = os.environ.get("STYLEMAMBA_TIER_HEAVY") == "1"
#: family -> (width of the style embedding, ComfyUI's image_embeds shape for one image, fitted in the probe)
FAMILIES = {
    "vit-l-14": (768, [1, 768], True),
    "siglip-so400m-384": (1152, [1, 729, 1152], HEAVY),
    **({"vit-h-14": (1024, [1, 1024], True)} if HEAVY else {}),
    **({"vit-bigg-14": (1280, [1, 1280], True)} if HEAVY else {}),
}
#: Our embedding vs ComfyUI's encode_image (same model, same pixels): only float summation order may differ.
SAME_MODEL_TOLERANCE = 1e-5
#: Our embedding vs transformers on the same fp16 weights: ComfyUI's attention and fp16-stored weights cast per layer.
TRANSFORMERS_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def report(comfyui, tier_report: list[str]) -> dict:
    families = [family + ("+fit" if fit else "") for family, (_, _, fit) in FAMILIES.items()]
    result = comfyui.probe(PROBE, *families, timeout=1800)
    for family in FAMILIES:  # the measurements the README quotes
        numbers = {key: result[family][key] for key in ("image_embeds_shape", "ours_vs_comfy", "ours_vs_transformers",
                                                       "gradient", "seconds")}
        tier_report.append(f"CLIP_VISION {family}: {numbers}")
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_comfyui_detects_the_family_and_the_style_is_its_measured_embedding(report, family):
    width, embeds_shape, _ = FAMILIES[family]
    result = report[family]
    assert result["detected"] == family and result["width"] == width
    assert result["image_embeds_shape"] == embeds_shape  # a vector per image (CLIP), or tokens (SigLIP: their mean)
    assert result["ours_vs_comfy"] < SAME_MODEL_TOLERANCE, result
    assert result["ours_vs_transformers"] < TRANSFORMERS_TOLERANCE, result


@pytest.mark.parametrize("family", FAMILIES)
def test_the_gradient_reaches_the_picture_through_comfyuis_vision_model(report, family):
    gradient = report[family]["gradient"]
    assert gradient["gradient_norm"] > 0
    assert gradient["analytic"] == pytest.approx(gradient["finite_difference"], rel=0.05, abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_style_fit_save_load_fuse_with_only_the_clip_vision(report, family):
    result = report[family]
    assert result["fitted"] == FAMILIES[family][2]
    if result["fitted"]:
        assert result["train_steps"] == 1
    assert result["loaded_encoder"] == f"clip_vision:{family}:{result['width']}:{result['fingerprint']}"
    assert result["round_trip_equal"] and result["style_width"] == result["width"]
    assert result["fused_shape"] == [1, 4, 8, 8] and result["fused_finite"]
    assert not any(Path(folder).exists() for folder in report["siglip_folders"])  # no models/siglip anywhere


@pytest.mark.parametrize("family", FAMILIES)
def test_ipadapter_and_stylemamba_share_one_loaded_clip_vision(report, family):
    shared = report[family]["shared_load"]
    assert shared["entries_holding_the_tower"] == 1 and shared["is_comfyuis_patcher"] == [True]


def test_another_familys_clip_vision_is_refused_naming_both(report):
    message = report["refusal"]["message"]
    assert message and "made with CLIP_VISION vit-l-14 (768-d" in message
    assert "but the one connected is CLIP_VISION siglip-so400m-384 (1152-d" in message
