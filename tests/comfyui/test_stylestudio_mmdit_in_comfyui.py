"""In a real ComfyUI, in-process: StyleStudio (DiT IP-Adapter) on a tiny SD3.5-shaped MM-DiT built from ComfyUI's own classes,
with InstantX's SD3.5 IP-Adapter layout at tiny widths, sampled with comfy.sample. The work happens in
probes/stylestudio_mmdit_in_comfyui.py (ComfyUI's venv); this asserts."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

PROBE = Path(__file__).parent / "probes" / "stylestudio_mmdit_in_comfyui.py"
STEPS = 4


@pytest.fixture(scope="module")
def report(comfyui) -> dict:
    return comfyui.probe(PROBE, timeout=600)


def test_the_tiny_model_is_comfyuis_mmdit_with_a_pre_only_last_block(report):
    assert report["model"] == {"blocks": 3, "last_pre_only": True, "layout": "instantx-sd3.5"}


def test_strength_zero_is_the_plain_ip_adapter(report):
    zero = report["strength0"]
    assert zero["repeat"] == 0.0  # sampling itself is deterministic
    assert zero["plain_vs_unpatched"] > 0.1  # the adapter acts
    assert zero["teacher_on_vs_off"] == 0.0 and zero["outside_window_vs_strength0"] == 0.0  # bit for bit
    assert zero["plain_vs_float64_reference"] < 1e-4  # InstantX's formula written out in float64, on every block, 4 steps, CFG


def test_every_preset_moves_away_from_the_plain_adapter(report):
    assert set(report["presets"]) == {"style", "double blocks", "all blocks"}
    assert all(change > 0.1 for change in report["presets"].values())


def test_adain_in_the_real_blocks_gives_the_image_tokens_the_style_statistics(report):
    adain = report["adain"]
    assert adain["calls"] == 2 * STEPS  # blocks 1 and 2 (the pre_only one) x 4 steps, cond and uncond batched
    assert adain["shapes"] == ["[2, 16, 128]"]  # cond + uncond, 16 image tokens, 128 channels (heads merged)
    assert adain["finite"] and adain["max_mean_error"] < 1e-5 and adain["max_std_error"] < 1e-3
    assert adain["min_text_vs_style_mean"] > 0.1  # the statistics really moved


def test_the_ip_branch_and_the_styled_rows_equal_the_float64_formulas(report):
    formula = report["formula"]
    assert formula["calls"] == 1 and formula["strength"] == 0.6 and formula["txt_len"] == 7
    assert formula["max_branch_vs_instantx_formula"] < 1e-5 and formula["max_style_vs_formula"] < 1e-5
    assert formula["branch_vs_style"] > 0.1  # AdaIN reads the IP keys alone, not the image's own keys the branch also sees
    assert formula["rows_vs_float64_formula"] < 1e-5


def test_the_teacher_hands_over_the_unpatched_passs_queries_and_keys(report):
    formula = report["formula"]
    assert formula["teacher_vs_unpatched_pass"] < 1e-5  # the pass without the branch is the unpatched model's
    assert formula["teacher_vs_other_block"] > 0.1  # and it is this block's
    teacher = report["teacher"]
    assert teacher["passes_teacher=False"] == STEPS  # the wrapper we chain to sees every pass
    assert STEPS < teacher["passes_teacher=True"] < 2 * STEPS
    assert teacher["on_vs_off"] > 0.01


def test_another_packs_block_patch_before_or_after_ours_keeps_both_effects(report):
    chaining = report["chaining"]
    assert chaining["order_difference"] == 0.0 and chaining["theirs_alone_change"] > 0.1
    for order in ("ours first", "theirs first"):
        assert chaining[order]["vs_ours_alone"] > 0.1 and chaining[order]["vs_theirs_alone"] > 0.1, order
    assert chaining["ours first"]["their_attention_calls"] > STEPS  # our sub-attentions go through their override
    assert chaining["theirs first"]["their_attention_calls"] == STEPS  # their override wraps ours: one call per step


def test_style_cfg_acts_with_true_cfg_only(report):
    cfg = report["style_cfg"]
    assert cfg["cfg=1"] == {"negative_style_effect": 0.0, "finite": True}  # ComfyUI runs no negative pass at cfg 1
    assert cfg["cfg=3"]["finite"] and cfg["cfg=3"]["negative_style_effect"] > 0.1


def test_sd35_medium_blocks_image_only_attention_passes_through(report):
    medium = report["medium_like"]
    assert medium["styled_calls_per_step"] == 3 and medium["joint_lengths"] == [7 + 16]
    assert medium["finite"] and medium["change"] > 0.1


def test_bad_inputs_name_what_fits(report):
    errors = report["errors"]
    on_flux = errors["sd35_adapter_on_flux"]
    assert on_flux.startswith("UnsupportedDiTError: ") and "use a Flux IP-Adapter or Redux" in on_flux
    assert "use the StyleStudio Cross-Modal AdaIN node" in errors["sd35_adapter_on_sdxl"]
    assert "SD3/SD3.5 takes its style from InstantX's SD3.5-Large IP-Adapter" in errors["flux_adapter_on_sd3"]
    assert "SDXL" in errors["sdxl_adapter_on_sd3"] and "fits the StyleStudio Cross-Modal AdaIN node" in errors["sdxl_adapter_on_sd3"]
    narrow = errors["adapter_of_another_width"]
    assert "is for an MM-DiT 64 wide" in narrow and "this MODEL is 128 wide" in narrow
    assert "reads 20-wide ones: load SigLIP so400m" in errors["clip_vision_of_wrong_size"]
    assert "joint (double) blocks only" in errors["single_blocks_preset"]


def test_chroma_is_flux_shaped_for_the_block_list(report):
    assert report["chroma_blocks"] == [["double_block", 0], ["double_block", 1], ["single_block", 0], ["single_block", 1],
                                       ["single_block", 2]]


def test_comfyui_loads_the_adapter_weights_with_the_model_once_and_a_second_node_is_refused(report):
    managed = report["managed_weights"]
    assert managed["attached"] == 1  # one patcher under the node's key among the MODEL's additional models
    assert managed["listed_before_sampling"] == [0]  # the node only attaches it: sampling loads it, with the MODEL
    assert managed["listed_after_sampling_twice"] == [1]  # no duplicate entry in current_loaded_models
    assert managed["weights_at"] == [["cpu torch.float32"]]  # the MODEL's device (--cpu) and compute dtype
    assert managed["counted_bytes"] == [managed["file_bytes"]]  # ComfyUI counts every tensor of the file, once
    assert managed["twice_equal"]
    # a second StyleStudio DiT node would reroute the first one's sub-attentions as if they were joint ones: refused
    assert "already carries a StyleStudio (DiT) patch" in managed["second_node"]
    assert "batch them into style_image" in managed["second_node"]
