"""In a real ComfyUI, in-process: StyleStudio (DiT) on a tiny Flux built from ComfyUI's classes with ComfyUI's Redux encoder,
sampled with comfy.sample. The work happens in probes/stylestudio_dit_in_comfyui.py (ComfyUI's venv); this asserts."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

PROBE = Path(__file__).parent / "probes" / "stylestudio_dit_in_comfyui.py"
BLOCKS = 6  # the tiny Flux: 2 double + 4 single blocks


@pytest.fixture(scope="module")
def report(comfyui) -> dict:
    return comfyui.probe(PROBE, timeout=600)


def test_the_node_appends_the_same_tokens_as_core_apply_style_model(report):
    assert report["same_tokens_as_core_redux"] and report["style_tokens"] == 5


def test_strength_zero_is_bit_identical_to_plain_redux(report):
    assert report["repeat"] == 0.0  # sampling itself is deterministic
    assert report["strength0"] == {"teacher=False": 0.0, "teacher=True": 0.0}


def test_every_preset_samples_finite_and_changes_the_image(report):
    presets = report["presets"]
    assert set(presets) == {"style", "double blocks", "single blocks", "all blocks"}
    for preset, result in presets.items():
        assert result["finite"] and result["change"] > 0.1, preset


def test_adain_in_the_real_blocks_gives_the_image_tokens_the_style_statistics(report):
    adain = report["adain"]
    assert adain["calls"] == 2 * 4  # 2 chosen blocks x 4 steps (cfg 1: no negative pass)
    assert adain["shapes"] == ["[1, 16, 32]"]  # one sample, 16 image tokens, 32 channels (heads merged)
    assert adain["max_mean_error"] < 1e-5 and adain["max_std_error"] < 1e-3
    assert adain["min_text_vs_style_mean"] > 0.1  # the statistics really moved


def test_the_handover_is_the_text_only_passs_attention_on_the_styled_passs_values(report):
    handover = report["handover"]
    assert handover["blocks"] == handover["styled_calls"] == handover["with_teacher"] == BLOCKS
    assert handover["max_teacher_vs_text_only_pass"] == 0.0  # the teacher pass is the unpatched model without style tokens
    assert handover["max_formula_error"] < 1e-5  # the block's output is the float64 formula on those queries/keys


def test_the_teacher_adds_a_model_pass_while_active_and_changes_the_result(report):
    teacher = report["teacher"]
    assert teacher["passes_teacher=False"] == teacher["steps"]  # the wrapper we chain to sees every pass
    assert teacher["steps"] < teacher["passes_teacher=True"] < 2 * teacher["steps"]
    assert teacher["on_vs_off"] > 0.01


def test_another_packs_block_patch_before_or_after_ours_keeps_both_effects(report):
    chaining = report["chaining"]
    assert chaining["order_difference"] == 0.0 and chaining["theirs_alone_change"] > 0.1
    for order in ("ours first", "theirs first"):
        stacked = chaining[order]
        assert stacked["vs_ours_alone"] > 0.1 and stacked["vs_theirs_alone"] > 0.1, order
    assert chaining["ours first"]["their_attention_calls"] == 6 * 4  # our six sub-attentions per step go through their override
    assert chaining["theirs first"]["their_attention_calls"] == 4  # their override wraps ours: one call per step


def test_style_cfg_acts_only_with_true_cfg(report):
    cfg = report["style_cfg"]
    assert cfg["cfg=1"] == {"negative_style_effect": 0.0, "finite": True}  # Flux-dev at cfg 1 runs no negative pass
    assert cfg["cfg=3"]["finite"] and cfg["cfg=3"]["negative_style_effect"] > 0.1


def test_bad_inputs_name_what_fits(report):
    errors = report["errors"]
    assert errors["sdxl_model"].startswith("UnsupportedDiTError: ") and "use the StyleStudio Cross-Modal AdaIN node" in errors["sdxl_model"]
    assert "makes 64-wide tokens but this MODEL reads 32-wide" in errors["redux_of_another_family"]
    assert "gives 16-wide features but the Redux model reads 24-wide" in errors["clip_vision_of_wrong_size"]
    assert "not a Flux Redux model" in errors["not_a_redux_model"]
