"""In a real ComfyUI, in-process: StyleStudio's patches on tiny SD1.5/SDXL UNets sampled with comfy.sample, stacking
with an IPAdapter_plus-style collecting patch, Plus adapters' unconditional image, and SigLIP/StyleMamba under
ComfyUI's model management. The work happens in probes/stylestudio_in_comfyui.py (ComfyUI's venv); this asserts."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

PROBE = Path(__file__).parent / "probes" / "stylestudio_in_comfyui.py"
FAMILIES = ("SD1.5", "SDXL")
#: Style-preset layers of the tiny models: SD1.5 output blocks 3-5 (one layer each), SDXL output block 1 (two here).
STYLE_LAYERS = {"SD1.5": 3, "SDXL": 2}


@pytest.fixture(scope="module")
def report(comfyui) -> dict:
    return comfyui.probe(PROBE, timeout=600)


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_zero_is_bit_identical_to_the_unpatched_model(report, family):
    result = report[family]
    assert result["finite_unpatched"] and result["repeat"] == 0.0  # sampling itself is deterministic
    assert result["strength0"] == {"teacher=False": 0.0, "teacher=True": 0.0}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_preset_samples_finite_and_changes_the_image(report, family):
    presets = report[family]["presets"]
    assert set(presets) == {"style", "all up blocks", "custom"}
    for preset, result in presets.items():
        assert result["finite"] and result["change"] > 1.0, preset


@pytest.mark.parametrize("family", FAMILIES)
def test_an_ipadapter_style_patch_before_or_after_stylestudio_keeps_both_effects(report, family):
    result = report[family]["ipadapter"]
    assert result["ip_alone_layers"] == result["layers"] == 16 and result["ip_alone_change"] > 1.0
    for order in ("ours first", "theirs first"):
        stacked = result[order]
        assert stacked["finite"], order
        assert stacked["layers_with_ip"] == result["layers"], order  # no IP-Adapter patch was dropped
        assert stacked["style_layers_with_ip"] == STYLE_LAYERS[family], order  # ... not even on our layers
        assert stacked["vs_ours_alone"] > 1.0 and stacked["vs_ip_alone"] > 1.0, order  # both packs changed the result
    assert result["order_difference"] == 0.0
    assert result["ours_unchanged_after_ip_added"] == 0.0  # the IPAdapter node's clone left our model as it was


@pytest.mark.parametrize("family", FAMILIES)
def test_the_teacher_adds_a_unet_pass_while_active_and_changes_the_result(report, family):
    teacher = report[family]["teacher"]
    assert teacher["unet_calls_off"] == teacher["steps"]  # the counting wrapper we chain to sees every pass
    assert teacher["steps"] < teacher["unet_calls_on"] < 2 * teacher["steps"]  # active for the first 40 % only
    assert teacher["unet_calls_on_at_strength_0"] == teacher["steps"]  # nothing to hand over at strength 0: no extra pass
    assert teacher["finite"] and teacher["on_vs_off"] > 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_plus_adapters_encode_a_black_image_for_the_negative_half(report, family):
    uncond = report[family]["uncond"]
    assert uncond["standard"]["images_encoded"] == [[1, 16, 16, 3]] and not uncond["standard"]["black_image_encoded"]
    assert uncond["plus"]["images_encoded"] == [[1, 16, 16, 3], [1, 32, 32, 3]] and uncond["plus"]["black_image_encoded"]
    assert uncond["plus"]["finite"] and uncond["plus"]["change"] > 1.0


def test_siglip_and_stylemamba_are_loaded_and_unloaded_by_comfyuis_model_management(report):
    managed = report["managed"]
    assert managed["after_encode"] == ["SiglipTextModel"]
    assert managed["after_fuse"] == managed["after_second_fuse"] == ["SiglipTextModel", "StyleFusionModel"]
    assert managed["after_unload"] == [] and managed["after_reload"] == ["StyleFusionModel"]
    assert managed["styled_finite"] and managed["repeat_difference"] == 0.0 and managed["reload_difference"] == 0.0
