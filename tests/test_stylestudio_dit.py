"""StyleStudio on Flux-class DiTs, the pure-torch core on CPU: the joint-attention split, AdaIN statistics, the teacher's
hand-over, finding the style tokens, block presets, and the node's checks of the style model and CLIP vision."""

import math

import pytest
import torch
from torch import nn

from comfyui_stylemamba.nodes.stylestudio_dit_nodes import StyleModelError, append_tokens, redux_tokens
from comfyui_stylemamba.stylestudio.dit import (STYLE_KEY, BlockAttention, DiTBlockPatch, DiTStyleWrapper, ReduxStyle, StyleBatch,
                                                cross_mass, styled_image_attention)
from comfyui_stylemamba.stylestudio.dit_blocks import UnsupportedDiTError, flux_blocks, select_dit_blocks
from comfyui_stylemamba.stylestudio.hooks import TEACHER_KEY, SigmaWindow, TeacherHandover

B, H, D, TXT, STYLE, IMG = 2, 3, 8, 7, 4, 10  # the last STYLE of the TXT tokens are style tokens


def qkv(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, TXT + IMG, D, generator=g, dtype=torch.float64) for _ in range(3))


def softmax_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def explicit_mass(q, k, upto):
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights[..., :upto].sum(-1, keepdim=True)


def channel_stats(x):  # (B, H, L, D) -> per sample and channel over tokens
    merged = x.transpose(1, 2).flatten(2)
    return merged.mean(1), merged.std(1, correction=0)


def test_cross_mass_is_the_joint_softmax_mass_on_the_text_keys():
    q, k, _ = qkv()
    assert torch.allclose(cross_mass(q, k, TXT, softmax_attention), explicit_mass(q, k, TXT), atol=1e-12)


def test_at_strength_zero_the_split_reassembles_the_joint_attention():
    q, k, v = qkv()
    joint = softmax_attention(q, k, v)[:, :, TXT:]
    out = styled_image_attention(q, k, v, TXT, STYLE, None, 0.0, softmax_attention)
    assert out.shape == (B, H, IMG, D)
    assert torch.allclose(out, joint, atol=1e-12)


def test_at_strength_one_the_text_branch_carries_the_style_statistics_with_the_joint_mass():
    q, k, v = qkv(1)
    qi, split = q[:, :, TXT:], TXT - STYLE
    text = softmax_attention(qi, k[:, :, :split], v[:, :, :split])
    style = softmax_attention(qi, k[:, :, split:TXT], v[:, :, split:TXT])
    own = softmax_attention(qi, k[:, :, TXT:], v[:, :, TXT:])
    w = explicit_mass(qi, k, TXT)
    out = styled_image_attention(q, k, v, TXT, STYLE, None, 1.0, softmax_attention)
    adain = (out - (1 - w) * own) / w
    (mean, std), (s_mean, s_std), (t_mean, t_std) = channel_stats(adain), channel_stats(style), channel_stats(text)
    assert torch.allclose(mean, s_mean, atol=1e-5) and torch.allclose(std, s_std, rtol=1e-3)  # float32 stats, eps
    assert not torch.allclose(mean, t_mean, atol=1e-2)
    # AdaIN keeps the text branch's layout: a per-channel affine map of it
    merged_adain, merged_text = adain.transpose(1, 2).flatten(2), text.transpose(1, 2).flatten(2)
    expected = (merged_text - t_mean[:, None]) / (t_std[:, None] + 1e-5) * s_std[:, None] + s_mean[:, None]
    assert torch.allclose(merged_adain, expected, atol=1e-4)
    half = styled_image_attention(q, k, v, TXT, STYLE, None, 0.5, softmax_attention)
    assert torch.allclose(half, (out + softmax_attention(q, k, v)[:, :, TXT:]) / 2, atol=1e-12)


def test_unstyled_samples_keep_the_joint_attention():
    q, k, v = qkv(2)
    styled = torch.tensor([True, False])
    out = styled_image_attention(q, k, v, TXT, STYLE, styled, 1.0, softmax_attention)
    joint = softmax_attention(q, k, v)[:, :, TXT:]
    assert torch.allclose(out[1], joint[1], atol=1e-12) and (out[0] - joint[0]).abs().max() > 1e-3


def test_the_handover_is_the_teachers_image_map_applied_to_the_students_values():
    q, k, v = qkv(3)
    q_t, k_t, _ = qkv(4)
    teacher = (q_t[:, :, TXT:], k_t[:, :, TXT:])
    out = styled_image_attention(q, k, v, TXT, STYLE, None, 0.0, softmax_attention, teacher)
    qi = q[:, :, TXT:]
    w = explicit_mass(qi, k, TXT)
    teacher_map = torch.softmax(teacher[0] @ teacher[1].transpose(-1, -2) / math.sqrt(D), dim=-1)
    expected = w * softmax_attention(qi, k[:, :, :TXT], v[:, :, :TXT]) + (1 - w) * (teacher_map @ v[:, :, TXT:])
    assert torch.allclose(out, expected, atol=1e-12)


def test_redux_style_finds_its_own_tokens_at_the_end_of_each_half():
    g = torch.Generator().manual_seed(5)
    positive, negative, text = (torch.randn(1, n, 6, generator=g) for n in (3, 3, 5))
    style = ReduxStyle(positive, negative)
    context = torch.cat([torch.cat((text, positive), 1), torch.cat((text, negative), 1)])
    batch = style.find(context, [1, 0])  # chunk 0 is the negative half: the tokens sit in the wrong halves
    assert batch.n_style == 0 and batch.styled.tolist() == [False, False]
    batch = style.find(context, [0, 1])
    assert (batch.txt_len, batch.n_style, batch.styled.tolist()) == (8, 3, [True, True])
    plain = ReduxStyle(positive).find(torch.cat([context[:1], torch.cat((text, text[:, :3]), 1)]), [0, 0])
    assert plain.styled.tolist() == [True, False]
    # an fp16 conditioning holds the tokens as fp16: still found
    assert ReduxStyle(positive).find(context.half(), [0, 0]).styled.tolist() == [True, False]


class FakeFlux(nn.Module):
    def __init__(self, double: int = 19, single: int = 38):
        super().__init__()
        self.double_blocks, self.single_blocks = nn.ModuleList(nn.Identity() for _ in range(double)), nn.ModuleList(nn.Identity() for _ in range(single))
        self.txt_in = nn.Linear(16, 4)


def test_block_presets_on_flux_1():
    blocks = flux_blocks(FakeFlux())
    assert len(blocks) == 57 and blocks[19] == ("single_block", 0)
    assert select_dit_blocks(blocks, "style") == [("single_block", i) for i in range(19, 38)]
    assert len(select_dit_blocks(blocks, "double blocks")) == 19 and len(select_dit_blocks(blocks, "single blocks")) == 38
    assert select_dit_blocks(blocks, "custom", "0, 19-20") == [("double_block", 0), ("single_block", 0), ("single_block", 1)]
    with pytest.raises(ValueError, match="outside 0-56"):
        select_dit_blocks(blocks, "custom", "57")


def test_other_families_get_an_error_naming_what_fits():
    mmdit, unet = nn.Module(), nn.Module()
    mmdit.joint_blocks, unet.input_blocks = nn.ModuleList(), nn.ModuleList()
    with pytest.raises(UnsupportedDiTError, match="SD3/SD3.5 takes its style from InstantX.s SD3.5-Large IP-Adapter"):
        flux_blocks(mmdit)
    with pytest.raises(UnsupportedDiTError, match="this MODEL is an SD1.5/SDXL UNet .*: use the StyleStudio Cross-Modal AdaIN node"):
        flux_blocks(unet)


class Redux(nn.Module):
    def __init__(self, vision: int, context: int):
        super().__init__()
        self.redux_up, self.redux_down = nn.Linear(vision, 3 * context), nn.Linear(3 * context, context)


class StyleModel:
    def __init__(self, model):
        self.model = model

    def get_cond(self, output):
        return self.model.redux_down(torch.nn.functional.silu(self.model.redux_up(output["last_hidden_state"])))


class ClipVision:
    def __init__(self, width: int):
        self.width = width

    def encode_image(self, image):
        return {"last_hidden_state": torch.ones(image.shape[0], 5, self.width)}


def test_redux_tokens_and_their_errors():
    image = torch.zeros(2, 8, 8, 3)
    tokens = redux_tokens(StyleModel(Redux(12, 16)), ClipVision(12), image, 16)
    assert tokens.shape == (1, 10, 16)
    with pytest.raises(StyleModelError, match="makes 16-wide tokens but this MODEL reads 32-wide"):
        redux_tokens(StyleModel(Redux(12, 16)), ClipVision(12), image, 32)
    with pytest.raises(StyleModelError, match="clip_vision gives 8-wide features but the Redux model reads 12-wide.*SigLIP so400m"):
        redux_tokens(StyleModel(Redux(12, 16)), ClipVision(8), image, 16)
    with pytest.raises(StyleModelError, match="style_model is a Linear, not a Flux Redux model"):
        redux_tokens(StyleModel(nn.Linear(2, 2)), ClipVision(12), image, 16)
    cond = append_tokens([[torch.zeros(1, 3, 16, dtype=torch.float16), {"pooled_output": 1}]], tokens)
    assert cond[0][0].shape == (1, 13, 16) and cond[0][0].dtype == torch.float16 and cond[0][1] == {"pooled_output": 1}


def raw_attention(q, k, v, heads, skip_reshape=False, skip_output_reshape=False, **kwargs):
    out = softmax_attention(q, k, v)
    return out if skip_output_reshape else out.transpose(1, 2).flatten(2)


def fake_block(args):
    """A block whose one attention call honours ComfyUI's override, like Flux's ``wrap_attn``."""
    q, k, v = args["qkv"]
    options = args["transformer_options"]
    override = options.get("optimized_attention_override")
    call = dict(skip_reshape=True, mask=None, transformer_options=options)
    return {"img": override(raw_attention, q, k, v, H, **call) if override else raw_attention(q, k, v, H, **call)}


def test_block_patch_routes_the_attention_chains_an_earlier_override_and_records_for_the_teacher():
    q, k, v = qkv(6)
    seen = []

    def earlier_override(func, *args, **kwargs):
        seen.append(args[0].shape[2])
        return func(*args, **kwargs)

    batch = StyleBatch(TXT, STYLE, torch.tensor([True, True]))
    patch = DiTBlockPatch(("single_block", 3), 1.0, SigmaWindow(high=10.0, low=0.0))
    options = {STYLE_KEY: batch, "sigmas": torch.tensor([5.0]), "optimized_attention_override": earlier_override}
    out = patch({"qkv": (q, k, v), "transformer_options": options}, {"original_block": fake_block})["img"]
    expected = torch.cat((softmax_attention(q, k, v)[:, :, :TXT],
                          styled_image_attention(q, k, v, TXT, STYLE, None, 1.0, softmax_attention)), 2)
    assert torch.allclose(out, expected.transpose(1, 2).flatten(2), atol=1e-12)
    assert seen and all(length in (TXT, IMG) for length in seen)  # every sub-attention went through the earlier override
    outside = {**options, "sigmas": torch.tensor([20.0])}
    untouched = patch({"qkv": (q, k, v), "transformer_options": outside}, {"original_block": fake_block})["img"]
    assert torch.equal(untouched, raw_attention(q, k, v, H))
    record = TeacherHandover(recording=True)
    patch({"qkv": (q, k, v), "transformer_options": {**outside, TEACHER_KEY: record}}, {"original_block": fake_block})
    assert [t.shape for t in record.qk[("single_block", 3)]] == [(B, H, IMG, D)] * 2


def test_a_masked_attention_is_left_alone():
    q, k, v = qkv(7)
    attention = BlockAttention(("double_block", 0), StyleBatch(TXT, STYLE, torch.tensor([True, True])), 1.0, None, None)
    mask = torch.zeros(TXT + IMG, TXT + IMG, dtype=torch.float64)
    out = attention(raw_attention, q, k, v, H, skip_reshape=True, mask=mask)
    assert torch.equal(out, raw_attention(q, k, v, H))


def test_the_wrapper_runs_a_text_only_teacher_pass_first_and_hands_it_over_while_active():
    style = ReduxStyle(torch.ones(1, 3, 6))
    text = torch.zeros(2, 5, 6)
    context = torch.cat((text, torch.ones(2, 3, 6)), 1)
    calls = []

    def apply_model(x, t, c_crossattn, transformer_options, **kwargs):
        handover = transformer_options.get(TEACHER_KEY)
        calls.append((c_crossattn.shape[1], transformer_options[STYLE_KEY].n_style, None if handover is None else handover.recording))
        return x

    wrapper = DiTStyleWrapper(style, teacher_end_sigma=0.5)
    args = lambda sigma, ctx, **c: {"input": torch.zeros(2), "timestep": torch.tensor([sigma]), "cond_or_uncond": [0],
                                     "c": {"c_crossattn": ctx, "transformer_options": {}, **c}}
    wrapper(apply_model, args(0.8, context))
    assert calls == [(5, 0, True), (8, 3, False)]  # text-only teacher pass (recording), then the styled pass (consuming)
    calls.clear()
    wrapper(apply_model, args(0.2, context))  # after the teacher's window
    wrapper(apply_model, args(0.8, torch.cat((context[:1], torch.zeros(1, 8, 6)))))  # one sample without style tokens
    wrapper(apply_model, args(0.8, context, attention_mask=torch.zeros(8, 8)))  # a masked call
    assert calls == [(8, 3, None), (8, 3, None), (8, 3, None)]
