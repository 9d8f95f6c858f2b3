"""StyleStudio core: cross-modal AdaIN, the attn2/attn1 patches as pure functions, the teacher wrapper, layer presets."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from comfyui_stylemamba.stylestudio.adain import cross_modal_adain
from comfyui_stylemamba.stylestudio.block_indices import parse_block_indices
from comfyui_stylemamba.stylestudio.layers import (
    SD15_BLOCKS, SDXL_BLOCKS, UnsupportedModelError, detect_family, select_layers, unet_cross_attention_layers,
)
from comfyui_stylemamba.stylestudio.hooks import TEACHER_KEY, SigmaWindow, TeacherHandover
from comfyui_stylemamba.stylestudio.patches import CrossAdaINPatch, StyleKV, TeacherAttn1Patch, TeacherWrapper

HEADS, DIM_HEAD = 2, 4
INNER = HEADS * DIM_HEAD


def reference_attention(q, k, v, heads=HEADS):
    """softmax(QKᵀ/√d)V written out per head, independent of any fused kernel."""
    b, n, inner = q.shape
    d = inner // heads
    qh, kh, vh = (t.reshape(t.shape[0], t.shape[1], heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weights @ vh).permute(0, 2, 1, 3).reshape(b, n, inner)


def options(cond_or_uncond, sigma=5.0, block=("output", 1), index=0, **extra):
    return {"n_heads": HEADS, "dim_head": DIM_HEAD, "cond_or_uncond": cond_or_uncond, "sigmas": torch.tensor([sigma]),
            "block": block, "block_index": index, "attn_precision": None, **extra}


def random_style(tokens=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return StyleKV(*(torch.randn(1, tokens, INNER, generator=g) for _ in range(4)))


# -- cross-modal AdaIN ----------------------------------------------------------------------------

def test_adain_takes_the_style_statistics_per_sample_and_channel():
    text, style = torch.randn(3, 50, 6) * 2 + 1, torch.randn(3, 50, 6) * 0.3 - 4
    out = cross_modal_adain(text, style)
    torch.testing.assert_close(out.mean(1), style.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.std(1), style.std(1), atol=1e-4, rtol=1e-4)
    # the spatial pattern is the text's: per channel, out is an increasing affine map of text
    corr = torch.stack([torch.corrcoef(torch.stack([text[b, :, c], out[b, :, c]]))[0, 1] for b in range(3) for c in range(6)])
    torch.testing.assert_close(corr, torch.ones_like(corr), atol=1e-5, rtol=0)


def test_adain_is_identity_when_text_and_style_share_statistics():
    text = torch.randn(2, 40, 5)
    shuffled = text[:, torch.randperm(40)]  # same per-channel mean and std, different layout
    torch.testing.assert_close(cross_modal_adain(text, shuffled), text, atol=1e-4, rtol=1e-4)


def test_adain_keeps_half_precision_and_rejects_mismatched_shapes():
    text = torch.randn(1, 64, 8, dtype=torch.float16)
    assert cross_modal_adain(text, torch.randn_like(text)).dtype == torch.float16
    with pytest.raises(ValueError, match="share a shape"):
        cross_modal_adain(torch.randn(1, 4, 8), torch.randn(1, 5, 8))


def test_adain_matches_the_papers_formula_and_strength_lerps_from_text():
    text, style = torch.randn(2, 30, 4) * 3 + 2, torch.randn(2, 30, 4) * 0.5 - 1
    t_mean, t_std = text.mean(1, keepdim=True), text.std(1, keepdim=True)
    s_mean, s_std = style.mean(1, keepdim=True), style.std(1, keepdim=True)
    formula = (text - t_mean) / t_std * s_std + s_mean  # unbiased stds as in StyleStudio's code
    torch.testing.assert_close(cross_modal_adain(text, style), formula, atol=1e-4, rtol=1e-4)
    assert torch.equal(cross_modal_adain(text, style, strength=0.0), text)
    torch.testing.assert_close(cross_modal_adain(text, style, strength=0.25), 0.75 * text + 0.25 * formula, atol=1e-4, rtol=1e-4)


# -- attn2 patch ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cond_or_uncond", [[1, 0], [0, 1], [0], [1]])
def test_attn2_patch_uses_each_halfs_own_style_tokens(cond_or_uncond):
    per_chunk, tokens = 2, 12
    q = torch.randn(per_chunk * len(cond_or_uncond), tokens, INNER)
    k, v = torch.randn(q.shape[0], 7, INNER), torch.randn(q.shape[0], 7, INNER)
    style = random_style()
    out = CrossAdaINPatch(style, strength=0.6, window=SigmaWindow(high=10.0, low=1.0))(q, k, v, options(cond_or_uncond))

    text = reference_attention(q, k, v)
    for i, half in enumerate(cond_or_uncond):
        rows = slice(i * per_chunk, (i + 1) * per_chunk)
        k_ip, v_ip = (style.k_neg, style.v_neg) if half == 1 else (style.k_pos, style.v_pos)
        image = reference_attention(q[rows], k_ip.expand(per_chunk, -1, -1), v_ip.expand(per_chunk, -1, -1))
        expected = 0.4 * text[rows] + 0.6 * cross_modal_adain(text[rows], image)  # the lerp, written out
        torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=1e-5)


def test_attn2_patch_is_plain_attention_at_strength_zero_outside_the_window_and_in_the_teacher_pass():
    q, k, v = torch.randn(2, 9, INNER), torch.randn(2, 5, INNER), torch.randn(2, 5, INNER)
    window = SigmaWindow(high=10.0, low=1.0)
    text = reference_attention(q, k, v)
    cases = [
        (CrossAdaINPatch(random_style(), 0.0, window), options([0, 1])),
        (CrossAdaINPatch(random_style(), 1.0, window), options([0, 1], sigma=0.5)),
        (CrossAdaINPatch(random_style(), 1.0, window), options([0, 1], sigma=11.0)),
        (CrossAdaINPatch(random_style(), 1.0, window), options([0, 1], **{TEACHER_KEY: TeacherHandover(recording=True)})),
    ]
    for patch, extra in cases:
        torch.testing.assert_close(patch(q, k, v, extra), text, atol=1e-6, rtol=1e-6)
    styled = CrossAdaINPatch(random_style(), 1.0, window)(q, k, v, options([0, 1]))
    assert (styled - text).abs().max() > 1e-2


def test_attn2_patch_chains_to_the_patch_it_replaced_and_survives_deepcopy():
    q, k, v = torch.randn(2, 9, INNER), torch.randn(2, 5, INNER), torch.randn(2, 5, INNER)
    calls = []

    def previous(q, k, v, extra):
        calls.append(extra["block"])
        return torch.full_like(q, 3.0) + torch.arange(q.shape[1]).view(1, -1, 1)

    patch = CrossAdaINPatch(random_style(), 1.0, SigmaWindow(high=10.0, low=0.0), previous=previous)
    out = patch(q, k, v, options([0, 1]))
    assert calls == [("output", 1)]
    # AdaIN keeps the previous patch's layout: out is an increasing affine map of it per channel
    assert torch.all(out[:, 1:] > out[:, :-1])
    twin = copy.deepcopy({"p": patch})["p"]  # what every ModelPatcher.clone() does to model_options
    assert twin.style is patch.style and twin.previous is previous and twin.collected is not patch.collected


# -- teacher --------------------------------------------------------------------------------------

def test_teacher_hand_over_applies_the_teachers_softmax_map_to_the_students_values():
    q_t, k_t, v_t = (torch.randn(2, 16, INNER) for _ in range(3))
    q_s, k_s, v_s = (torch.randn(2, 16, INNER) for _ in range(3))
    patch = TeacherAttn1Patch()
    record = TeacherHandover(recording=True)
    extra = options([0, 1], block=("input", 4), index=1)

    teacher_out = patch(q_t, k_t, v_t, {**extra, TEACHER_KEY: record})
    torch.testing.assert_close(teacher_out, reference_attention(q_t, k_t, v_t), atol=1e-5, rtol=1e-5)
    assert set(record.qk) == {("input", 4, 1)}

    replay = TeacherHandover(recording=False, qk=record.qk)
    student_out = patch(q_s, k_s, v_s, {**extra, TEACHER_KEY: replay})
    d = DIM_HEAD
    heads = lambda t: t.reshape(2, 16, HEADS, d).permute(0, 2, 1, 3)
    teacher_map = torch.softmax(heads(q_t) @ heads(k_t).transpose(-1, -2) / math.sqrt(d), dim=-1)
    expected = (teacher_map @ heads(v_s)).permute(0, 2, 1, 3).reshape(2, 16, INNER)
    torch.testing.assert_close(student_out, expected, atol=1e-5, rtol=1e-5)
    assert replay.qk == {}  # consumed, so memory is released layer by layer
    # without a hand-over (teacher inactive) the layer is ordinary self-attention
    torch.testing.assert_close(patch(q_s, k_s, v_s, extra), reference_attention(q_s, k_s, v_s), atol=1e-5, rtol=1e-5)


def test_teacher_wrapper_runs_a_recording_pass_then_the_styled_pass_only_while_active():
    seen = []

    def apply_model(x, t, **c):
        handover = c["transformer_options"].get(TEACHER_KEY)
        seen.append(None if handover is None else handover.recording)
        if handover is not None and handover.recording:
            handover.qk[("output", 0, 0)] = (x, x)
        return x * 2 + (0 if handover is None or handover.recording else 1)

    wrapper = TeacherWrapper(end_sigma=3.0)
    x = torch.ones(2, 4, 8, 8)
    c = {"transformer_options": {"patches_replace": {}}}
    out = wrapper(apply_model, {"input": x, "timestep": torch.tensor([5.0, 5.0]), "c": c, "cond_or_uncond": [0, 1]})
    assert seen == [True, False] and torch.equal(out, x * 2 + 1)
    assert TEACHER_KEY not in c["transformer_options"]  # the caller's options are not mutated
    seen.clear()
    out = wrapper(apply_model, {"input": x, "timestep": torch.tensor([2.0, 2.0]), "c": c, "cond_or_uncond": [0, 1]})
    assert seen == [None] and torch.equal(out, x * 2)


def test_teacher_wrapper_chains_to_an_existing_unet_wrapper():
    calls = []

    def previous(apply_model, args):
        calls.append(args["c"]["transformer_options"][TEACHER_KEY].recording)
        return apply_model(args["input"], args["timestep"], **args["c"])

    wrapper = TeacherWrapper(end_sigma=0.0, previous=previous)
    out = wrapper(lambda x, t, **c: x + 1, {"input": torch.zeros(1), "timestep": torch.tensor([1.0]), "c": {"transformer_options": {}}})
    assert calls == [True, False] and out.item() == 1.0


# -- layers ---------------------------------------------------------------------------------------

def layout(blocks, depth):
    return [(name, block_id, t) for name, block_id in blocks for t in range(depth(name, block_id))]


SD15_LAYERS = layout(SD15_BLOCKS, lambda name, block_id: 1)
SDXL_LAYERS = layout(SDXL_BLOCKS, lambda name, block_id: 2 if (name, block_id) in {("input", 4), ("input", 5), ("output", 3), ("output", 4), ("output", 5)} else 10)


def test_sd15_presets():
    assert len(SD15_LAYERS) == 16 and detect_family(SD15_LAYERS) == "SD1.5"
    assert select_layers(SD15_LAYERS, "style") == [("output", 3, 0), ("output", 4, 0), ("output", 5, 0)]
    assert select_layers(SD15_LAYERS, "all up blocks") == [("output", i, 0) for i in range(3, 12)]
    assert select_layers(SD15_LAYERS, "custom", "0, 6, 14-15") == [("input", 1, 0), ("middle", 0, 0), ("output", 10, 0), ("output", 11, 0)]


def test_sdxl_presets():
    assert len(SDXL_LAYERS) == 70 and len(SDXL_BLOCKS) == 11 and detect_family(SDXL_LAYERS) == "SDXL"
    assert select_layers(SDXL_LAYERS, "style") == [("output", 1, t) for t in range(10)]
    assert select_layers(SDXL_LAYERS, "custom", "6") == select_layers(SDXL_LAYERS, "style")
    up = select_layers(SDXL_LAYERS, "all up blocks")
    assert len(up) == 36 and {layer[0] for layer in up} == {"output"}
    assert select_layers(SDXL_LAYERS, "custom", "0-1") == [("input", 4, 0), ("input", 4, 1), ("input", 5, 0), ("input", 5, 1)]


def test_presets_reject_bad_input():
    odd = [("input", 3, 0), ("output", 2, 0)]
    assert detect_family(odd) is None
    with pytest.raises(ValueError, match="'style' preset knows the SD1.5 and SDXL"):
        select_layers(odd, "style")
    assert select_layers(odd, "all up blocks") == [("output", 2, 0)]
    with pytest.raises(ValueError, match="outside 0-10"):
        parse_block_indices("3, 11", 11)
    with pytest.raises(ValueError, match="cannot read 'x'"):
        parse_block_indices("1, x", 11)
    with pytest.raises(ValueError, match="empty"):
        parse_block_indices(" , ", 11)
    with pytest.raises(ValueError, match="Unknown layer preset"):
        select_layers(SD15_LAYERS, "everything")


class _Attention(nn.Module):
    def __init__(self, inner, context):
        super().__init__()
        self.to_k = nn.Linear(context, inner, bias=False)


class _Transformer(nn.Module):
    def __init__(self, inner, context, cross=True):
        super().__init__()
        self.attn1 = _Attention(inner, inner)
        self.attn2 = _Attention(inner, context) if cross else None


class _Spatial(nn.Module):
    def __init__(self, inner, depth):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(_Transformer(inner, 12) for _ in range(depth))


def test_layout_is_read_from_the_unet_module_tree():
    unet = nn.Module()
    unet.input_blocks = nn.ModuleList([nn.Sequential(nn.Identity()), nn.Sequential(nn.Identity(), _Spatial(8, 2))])
    unet.middle_block = nn.Sequential(_Spatial(16, 1))
    unet.output_blocks = nn.ModuleList([nn.Sequential(_Spatial(8, 1))])
    assert unet_cross_attention_layers(unet) == {("input", 1, 0): (8, 12), ("input", 1, 1): (8, 12), ("middle", 0, 0): (16, 12), ("output", 0, 0): (8, 12)}


def test_models_without_unet_cross_attention_are_refused_with_the_supported_list():
    class MMDiT(nn.Module):
        pass

    with pytest.raises(UnsupportedModelError, match="supports SD1.5/SD2 and SDXL.*is MMDiT.*SD3, Flux"):
        unet_cross_attention_layers(MMDiT())
    no_cross = nn.Module()
    no_cross.input_blocks, no_cross.output_blocks = nn.ModuleList(), nn.ModuleList([nn.Sequential(nn.Identity())])
    with pytest.raises(UnsupportedModelError, match="no cross-attention"):
        unet_cross_attention_layers(no_cross)


def test_style_kv_copies_each_tensor_once_per_device_and_dtype_and_shares_the_halves_it_shares():
    k, v = torch.randn(1, 3, INNER), torch.randn(1, 3, INNER)
    shared = StyleKV(k, v, k, v)  # no negative style image: both halves are the same tensors
    like = torch.zeros(1, dtype=torch.float64)
    k_pos, v_pos = shared.for_half(0, like)
    k_neg, v_neg = shared.for_half(1, like)
    assert k_pos is k_neg and v_pos is v_neg and k_pos.dtype == torch.float64
    torch.testing.assert_close(k_pos, k.double(), rtol=0, atol=0)
    assert shared.for_half(0, like)[0] is k_pos  # the copy is kept for the next step
    separate = StyleKV(k, v, k.clone(), v.clone())
    assert separate.for_half(0, like)[0] is not separate.for_half(1, like)[0]
