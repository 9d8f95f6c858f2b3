"""In a real ComfyUI, in-process: VCT's inversions, concept file, attention control and chaining on a tiny SD1.5-shaped
UNet and CLIP built from ComfyUI's own classes. The work happens in probes/vct_in_comfyui.py (ComfyUI's venv)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

PROBE = Path(__file__).parent / "probes" / "vct_in_comfyui.py"


@pytest.fixture(scope="module")
def report(comfyui) -> dict:
    return comfyui.probe(PROBE, timeout=900)


RECONSTRUCTIONS = {"SD1.5": lambda report: report["reconstruction"],
                   "SDXL": lambda report: report["sdxl_concept"]["reconstruction"]}  # with ComfyUI's SDXL CLIP


@pytest.mark.parametrize("family", sorted(RECONSTRUCTIONS))
def test_ddim_inversion_reconstructs_at_cfg_1_and_null_text_removes_the_cfg_drift(report, family):
    result = RECONSTRUCTIONS[family](report)
    # DDIM inversion then sampling at CFG 1 (6 steps): within 20 % of the content's RMS
    assert result["cfg1_rms"] < 0.2 * result["scale"]
    # at CFG 7.5 the plain inversion drifts (several times the CFG-1 error) ...
    assert result["plain_cfg_rms"] > 3 * result["cfg1_rms"]
    # ... and null-text optimisation removes the drift: at least 3x smaller, no worse than sampling at CFG 1
    assert result["null_text_rms"] * 3 < result["plain_cfg_rms"]
    assert result["null_text_rms"] <= result["cfg1_rms"]
    assert result["same_noise"] == 0.0  # the node's inverted noise is the core's
    assert len(result["inner_losses"]) == 6 and all(loss < 0.01 for loss in result["inner_losses"])


def test_concept_inversion_lowers_its_loss_and_its_file_works_in_clip_text_encode(report):
    result = report["concept"]
    assert result["best_loss"] < result["first_loss"]
    assert result["keys"] == {"emb_params": [3, 768]}  # the SD1.5 textual-inversion layout
    # a taken name is never overwritten: the second run wrote _00001 and left the first file as it was
    assert result["names"] == ["embedding:vct_probe", "embedding:vct_probe_00001"]
    assert result["new_files"] == ["vct_probe.safetensors", "vct_probe_00001.safetensors"] and result["first_unchanged"]
    assert len(result["shown"]) == 1 and result["shown"][0].startswith("done (validation loss ")  # the node's text
    assert result["shown"][0].endswith("written to vct_probe_00001.safetensors")
    # CLIPTextEncode with "embedding:vct_probe" loads the vectors: the conditioning differs from the prompt without
    # it and from the initializer word in its place (the vectors moved)
    assert result["concept_shape"] == [1, 77, 768]
    assert result["change_vs_prompt"] > 0.1 and result["change_vs_initializer"] > 0.1


def test_without_injection_the_fusion_is_plain_sampling_of_the_target_stream(report):
    result = report["injection"]
    assert result["off_vs_plain"] < 1e-4  # batched with the source stream vs alone: float rounding only
    assert result["on_vs_off"] > 0.05


def test_with_injection_the_target_uses_the_sources_self_attention_in_the_injected_layers_and_steps(report):
    result = report["injection"]
    assert result["self_steps"] == [0, 4] and result["layers"] == 7
    injected, untouched = result["injected"], result["untouched"]
    # steps [0, 4) in the layers of at most 16 queries: 4 such layers per step
    assert len(injected) == 4 * 4 and {e["tokens"] for e in injected} == {16}
    assert all(e["cond"] == 0.0 for e in injected)  # the conditional target's probabilities are the source's, exactly
    assert all(e["uncond"] > 1e-3 for e in injected if e["step"] > 0)  # the unconditional half is never injected
    # elsewhere (64-query layers, steps 4 and 5) the target attends with its own queries and keys
    assert len(untouched) == 6 * 7 - 16
    assert all(e["cond"] > 1e-3 for e in untouched if e["step"] > 0)


def test_an_ipadapter_style_patch_before_or_after_vcts_gives_the_same_fusion(report):
    result = report["chaining"]
    assert result["finite"] and result["order_difference"] == 0.0
    assert result["ip_effect"] > 0.01 and result["cross_effect"] > 0.01  # both the IP-Adapter and the refine acted


def test_the_nodes_fuse_end_to_end_and_refuse_bad_inputs_clearly(report):
    result = report["nodes"]
    assert result["translated_finite"]
    assert result["reconstruction_rms"] < 0.2 * result["translated_vs_content"]  # the source stream keeps the content
    errors = result["errors"]
    assert "another MODEL" in errors["other_model"]
    assert "NaN" in errors["nan_latent"] and "one image latent" in errors["batch_latent"]
    assert "one image" in errors["reference_batch"] and "plain file name" in errors["bad_name"]


def test_on_an_sdxl_shaped_unet_inversion_and_injection_hold_with_the_adm_vector_and_indexed_layers(report):
    result = report["sdxl"]
    assert result["cfg1_rms"] < 0.35 * result["scale"]  # 6 DDIM steps on a random UNet: within 35 % of the content RMS
    assert result["plain_cfg_rms"] > 3 * result["cfg1_rms"]  # CFG 7.5 drifts
    # 10 null-text steps reduce it only 1.2x here: the null is a 7x32 random-context stand-in (224 numbers, each moved at
    # most lr = 1e-2 per Adam step); with the SDXL CLIP's 77x2048 conditioning the SDXL test above measures 6x
    assert result["null_text_rms"] < 0.95 * result["plain_cfg_rms"]
    assert result["off_vs_plain"] < 1e-4
    # 16 transformer layers, 10 of them in blocks of 2 (keyed (block, id, index)); every self-attention call at <= 16
    # queries in steps [0, 4) used the source's probabilities exactly
    assert result["layers"] == 16 and result["indexed_keys"] == 10
    assert result["injected"] > 0 and result["injected_max_difference"] == 0.0


def test_sdxl_concept_inversion_through_an_sdxl_clip_writes_clip_l_and_clip_g_that_clip_text_encode_reads(report):
    result = report["sdxl_concept"]
    assert result["best_loss"] < result["first_loss"]
    assert result["keys"] == {"clip_l": [3, 768], "clip_g": [3, 1280]}  # SDXL's textual-inversion layout
    # core CLIPTextEncode with "embedding:vct_sdxl" on the SDXL CLIP: both encoders' features and the pooled vector move
    assert result["context_shape"] == [1, 77, 2048]
    assert result["clip_l_change"] > 0.1 and result["clip_g_change"] > 0.1 and result["pooled_change"] > 0.1
    assert result["translated_finite"]  # the fusion runs on the SDXL model with the SDXL concept


def test_core_comfyui_uses_crossed_concept_files_silently_and_the_vct_nodes_refuse_them(report):
    result = report["sdxl_concept"]
    core, errors = result["core"], result["errors"]
    # what core ComfyUI does (why the nodes must check): an SD1.5 file in an SDXL CLIP reaches clip_l and is dropped
    # from clip_g with only a log warning; an SDXL file in an SD1.5 CLIP is read as its clip_l half without a word
    assert core["sd15_file_in_sdxl_clip_l_change"] > 0.1 and core["sd15_file_in_sdxl_clip_g_change"] == 0.0
    assert core["sdxl_file_in_sd15_clip_change"] > 0.1
    assert "768-wide vectors for the CLIP's clip_g, which takes 1280-wide" in errors["sd15_concept_on_sdxl"]
    for case in ("sdxl_concept_on_sd15", "foreign_sdxl_file_on_sd15"):  # ours, and an SDXL file without our metadata
        assert "is an SDXL embedding (clip_l + clip_g) and the CLIP has no clip_g" in errors[case]
    assert "'embedding:no_such_concept' is not an embedding in models/embeddings" in errors["missing_concept"]
    assert "the CLIP gives 768-wide text features, the SDXL MODEL's UNet takes 2048-wide" in errors["sd15_clip_with_sdxl_model"]
    assert "2048-wide text features" in errors["sdxl_clip_content_inversion_on_sd15"]
    assert "do not fit the SDXL MODEL (needs ['g', 'l'])" in errors["sd15_clip_concept_inversion_on_sdxl"]
