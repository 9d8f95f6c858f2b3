"""In a real ComfyUI, in-process: StyleStudio (DiT IP-Adapter) on a tiny Flux built from ComfyUI's classes, with XLabs- and
InstantX-layout adapter files, sampled with comfy.sample. The work happens in probes/stylestudio_dit_ipadapter_in_comfyui.py
(ComfyUI's venv); this asserts."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

PROBE = Path(__file__).parent / "probes" / "stylestudio_dit_ipadapter_in_comfyui.py"
LAYOUTS = ("xlabs", "instantx")
BLOCKS = 6  # the tiny Flux: 2 double + 4 single blocks


@pytest.fixture(scope="module")
def report(comfyui) -> dict:
    return comfyui.probe(PROBE, timeout=600)


def test_undoing_rope_gives_back_the_blocks_pre_rope_queries(report):
    assert report["unrope_max_error"] < 1e-5  # float32 rounding of one rotation and back


@pytest.mark.parametrize("layout", LAYOUTS)
def test_strength_zero_is_the_released_adapter_formula(layout, report):
    result = report[layout]
    assert result["strength0_vs_reference_one_call"] < 1e-5  # the block-redoing reference takes the query before RoPE
    assert result["strength0_vs_reference_sampled"] < 1e-4
    assert result["strength0_teacher_on_vs_off"] == 0.0  # strength 0 is the plain adapter, teacher or not
    assert result["plain_adapter_change"] > 0.1


def test_presets_sample_finite_or_say_where_the_adapter_has_weights(report):
    xlabs, instantx = report["xlabs"]["presets"], report["instantx"]["presets"]
    single = xlabs["single blocks"]  # XLabs has weights in the double blocks only; its "style" is their late half
    assert single.startswith("IPAdapterError: ") and "has them for blocks 0-1" in single
    for result in (xlabs["style"], xlabs["double blocks"], xlabs["all blocks"], *instantx.values()):
        assert result["finite"] and result["vs_plain_adapter"] > 0.1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_adain_gives_the_image_tokens_the_branchs_statistics(layout, report):
    adain = report[layout]["adain"]
    assert adain["calls"] == {"xlabs": 1, "instantx": 2}[layout] * 4  # blocks 1 and 5 chosen; XLabs has only block 1
    assert adain["shapes"] == ["[1, 16, 32]"]
    assert adain["max_mean_error"] < 1e-5 and adain["max_std_error"] < 1e-3
    assert adain["min_text_vs_style_mean"] > 0.1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_teacher_is_the_pass_without_the_adapter_and_hands_its_map_over(layout, report):
    handover = report[layout]["handover"]
    assert handover["blocks"] == BLOCKS and handover["styled_calls"] == handover["with_teacher"] == 1  # block 0 chosen
    assert handover["max_teacher_vs_no_adapter_pass"] == 0.0
    assert handover["max_formula_error"] < 1e-5
    teacher = report[layout]["teacher"]
    assert teacher["passes_teacher=False"] == teacher["steps"] < teacher["passes_teacher=True"] < 2 * teacher["steps"]
    assert teacher["on_vs_off"] > 0.01


@pytest.mark.parametrize("layout", LAYOUTS)
def test_another_packs_block_patch_before_or_after_ours_keeps_both_effects(layout, report):
    chaining = report[layout]["chaining"]
    assert chaining["order_difference"] == 0.0 and chaining["theirs_alone_change"] > 0.1
    for order in ("ours first", "theirs first"):
        assert chaining[order]["vs_ours_alone"] > 0.1 and chaining[order]["vs_theirs_alone"] > 0.1, order
    assert chaining["theirs first"]["their_attention_calls"] == 4  # their override wraps ours: one call per step
    # ours inside theirs: all five of our attention calls per step go through their override (text rows, w_C, A_C, A_X, A_ip)
    assert chaining["ours first"]["their_attention_calls"] == 5 * 4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_style_cfg_acts_only_with_true_cfg(layout, report):
    cfg = report[layout]["style_cfg"]
    assert cfg["cfg=1"] == {"negative_style_effect": 0.0, "finite": True}
    assert cfg["cfg=3"]["finite"] and cfg["cfg=3"]["negative_style_effect"] > 0.1


def test_bad_inputs_name_what_fits(report):
    errors = report["errors"]
    assert errors["sdxl_model"].startswith("UnsupportedDiTError: ") and "use the StyleStudio Cross-Modal AdaIN node" in errors["sdxl_model"]
    assert "an IP-Adapter for SDXL UNets" in errors["sdxl_adapter_on_flux"] and "XLabs flux-ip-adapter" in errors["sdxl_adapter_on_flux"]
    assert "gives 28-wide image embeddings but" in errors["clip_vision_of_wrong_size"] and "CLIP ViT-L/14" in errors["clip_vision_of_wrong_size"]
    assert "makes 64-wide keys/values but this MODEL's blocks are 32 wide" in errors["adapter_for_a_wider_model"]
    assert "chose no block" in errors["xlabs_with_single_blocks_only"]


@pytest.mark.parametrize("layout", [*LAYOUTS, "instantx in bf16"])
def test_comfyui_loads_counts_and_offloads_the_style_keys_values_with_the_model(layout, report):
    managed = report["managed_kv_bf16"] if layout == "instantx in bf16" else report[layout]["managed_kv"]
    assert managed["attached"] == 1  # one patcher under the node's key among the MODEL's additional models
    assert managed["listed_before_sampling"] == [0]  # the node only attaches it: sampling loads it, with the MODEL
    assert managed["listed_after_sampling_twice"] == [1]  # no duplicate entry in current_loaded_models
    dtype = "bfloat16" if layout == "instantx in bf16" else "float32"
    assert managed["weights_at"] == [[f"cpu torch.{dtype}"]]  # the MODEL's device (--cpu) and compute dtype
    # ComfyUI counts every block's keys/values once: without a negative style image the halves share them
    assert managed["counted_bytes"] == [managed["kv_bytes"]] and managed["kv_bytes"] > 0
    assert managed["counted_bytes_with_negative_image"] == [2 * managed["kv_bytes"]]
    assert managed["twice_equal"] and managed["finite"]
