"""StyleStudio on SD3/SD3.5 (MM-DiT joint blocks), the pure-torch side on CPU: the attention override on SD3's call form
((B, L, H·D) queries/keys, (B, L, H, D) values, no skip_reshape), the image-only attention of SD3.5 Medium's blocks left
alone, the SD3.5 IP branch inside the block patch, the per-step Resampler tokens, and the joint-block presets."""

import math

import pytest
import torch
from adapter_layouts import sd35_ip_adapter_layout
from torch import nn

from comfyui_stylemamba.stylestudio.dit import (STYLE_KEY, BlockAttention, BranchCall, DiTBlockPatch, ImageStyle, StyleBatch,
                                                branch_image_attention)
from comfyui_stylemamba.stylestudio.dit_blocks import mmdit_blocks, select_dit_blocks
from comfyui_stylemamba.stylestudio.hooks import SigmaWindow
from comfyui_stylemamba.stylestudio.sd3_ip_adapter import SD3Tokens, block_keys_values, ip_branch, parse_sd3_ip_adapter, resample
from comfyui_stylemamba.stylestudio.tensor_group import TensorGroup

B, H, D, TXT, IMG, BLOCKS = 2, 2, 16, 5, 9, 3
WIDTH = H * D


def softmax_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def comfy_attention(q, k, v, heads, skip_reshape=False, skip_output_reshape=False, mask=None, **kwargs):
    """ComfyUI's attention contract: (B, L, H·D) in (v may be (B, L, H, D)) unless skip_reshape; (B, L, H·D) out unless
    skip_output_reshape."""
    if not skip_reshape:
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    out = softmax_attention(q, k, v)
    return out if skip_output_reshape else out.transpose(1, 2).flatten(2)


def heads_first(t):
    return t.reshape(t.shape[0], t.shape[1], H, -1).transpose(1, 2)


def sd3_call(seed: int, length: int = TXT + IMG):
    """q/k as SD3's ``pre_attention`` gives them, ``(B, L, H·D)``; v ``(B, L, H, D)`` (split_qkv's, not reshaped)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, length, *shape, generator=g, dtype=torch.float64) for shape in ((WIDTH,), (WIDTH,), (H, D)))


class FakeMMDiT(nn.Module):
    def __init__(self, blocks: int = BLOCKS):
        super().__init__()
        self.hidden_size, self.num_heads = WIDTH, H
        self.joint_blocks = nn.ModuleList()
        g = torch.Generator().manual_seed(7)
        for _ in range(blocks):
            joint = nn.Module()
            joint.x_block = nn.Module()
            joint.x_block.attn = nn.Module()
            for name in ("ln_q", "ln_k"):
                norm = nn.Module()
                norm.weight = nn.Parameter(1 + 0.3 * torch.randn(D, generator=g, dtype=torch.float64))
                setattr(joint.x_block.attn, name, norm)
            self.joint_blocks.append(joint)


@pytest.fixture(scope="module")
def adapter():
    return parse_sd3_ip_adapter(sd35_ip_adapter_layout(WIDTH, H, BLOCKS), "ip.bin")


def features(seed: int = 1):
    return torch.randn(1, 4, 20, generator=torch.Generator().manual_seed(seed))


def test_the_override_styles_sd3s_joint_call_and_keeps_its_text_rows(adapter):
    q, k, v = sd3_call(0)
    model = FakeMMDiT()
    branch = adapter.branches(features(), features(2), model)[("double_block", 1)]
    args = {"img": torch.zeros(B, IMG, WIDTH), "transformer_options": {"sigmas": torch.tensor([0.7, 0.7])}}
    call = BranchCall(branch, args, [0, 1])
    attention = BlockAttention(("double_block", 1), StyleBatch(TXT, 0, torch.ones(B, dtype=torch.bool)), 0.6, None, None, call, IMG)
    out = attention(comfy_attention, q, k, v, heads=H, transformer_options={})
    assert out.shape == (B, TXT + IMG, WIDTH)
    qh, kh, vh = heads_first(q), heads_first(k), v.transpose(1, 2)
    plain = comfy_attention(q, k, v, H)
    assert torch.allclose(out[:, :TXT], plain[:, :TXT], atol=1e-12)  # text rows untouched
    added, style = call.attention(qh, kh, vh, TXT, softmax_attention)
    expected = branch_image_attention(qh, kh, vh, TXT, added, True, 0.6, softmax_attention, None, style)
    assert torch.allclose(out[:, TXT:], expected.transpose(1, 2).flatten(2), atol=1e-12)
    assert (out[:, TXT:] - plain[:, TXT:]).abs().max() > 0.1


def test_at_strength_zero_the_image_rows_are_the_joint_attention_plus_the_branch(adapter):
    q, k, v = sd3_call(1)
    branch = adapter.branches(features(), features(), FakeMMDiT())[("double_block", 0)]
    args = {"img": torch.zeros(B, IMG, WIDTH), "transformer_options": {"sigmas": torch.tensor([0.3, 0.3])}}
    call = BranchCall(branch, args, [0, 1])
    attention = BlockAttention(("double_block", 0), StyleBatch(TXT, 0, torch.ones(B, dtype=torch.bool)), 0.0, None, None, call, IMG)
    out = attention(comfy_attention, q, k, v, heads=H)
    added, _ = call.attention(heads_first(q), heads_first(k), v.transpose(1, 2), TXT, softmax_attention)
    plain = comfy_attention(q, k, v, H)
    assert torch.allclose(out[:, TXT:], plain[:, TXT:] + added.transpose(1, 2).flatten(2), atol=1e-12)
    assert torch.equal(out[:, :TXT], plain[:, :TXT])


def test_sd35_mediums_image_only_attention_and_masked_calls_pass_through_untouched():
    q, k, v = sd3_call(2, length=IMG)  # attn2 of an x_block_self_attn block: image tokens only
    attention = BlockAttention(("double_block", 0), StyleBatch(TXT, 0, torch.ones(B, dtype=torch.bool)), 1.0, None, None, None, IMG)
    assert torch.equal(attention(comfy_attention, q, k, v, heads=H), comfy_attention(q, k, v, H))
    q, k, v = sd3_call(3)
    mask = torch.zeros(TXT + IMG, TXT + IMG, dtype=torch.float64)
    assert torch.equal(attention(comfy_attention, q, k, v, heads=H, mask=mask), comfy_attention(q, k, v, H))


def test_the_block_patch_passes_the_image_length_and_runs_the_block_with_the_override(adapter):
    q, k, v = sd3_call(4)
    branches = adapter.branches(features(), features(), FakeMMDiT())
    patch = DiTBlockPatch(("double_block", 2), 1.0, SigmaWindow(high=10.0, low=0.0), branch=branches[("double_block", 2)])
    seen = []

    def block(args):  # SD3's block_wrap: one joint call, then (Medium) an image-only one, both through the override
        override = args["transformer_options"]["optimized_attention_override"]
        joint = override(comfy_attention, q, k, v, heads=H, transformer_options=args["transformer_options"])
        seen.append(override(comfy_attention, q[:, TXT:], k[:, TXT:], v[:, TXT:], heads=H))
        return {"txt": None, "img": joint}  # the last block is pre_only: no text output

    options = {STYLE_KEY: ImageStyle().find(torch.zeros(B, TXT, 8), [0, 1]), "sigmas": torch.tensor([1.0, 1.0]), "cond_or_uncond": [0, 1]}
    out = patch({"img": torch.zeros(B, IMG, WIDTH), "txt": torch.zeros(B, TXT, WIDTH), "vec": torch.zeros(B, WIDTH),
                 "transformer_options": options}, {"original_block": block})
    assert out["txt"] is None and out["img"].shape == (B, TXT + IMG, WIDTH)
    assert (out["img"][:, TXT:] - comfy_attention(q, k, v, H)[:, TXT:]).abs().max() > 0.1
    assert torch.equal(seen[0], comfy_attention(q[:, TXT:], k[:, TXT:], v[:, TXT:], H))


def test_the_resampler_runs_once_per_half_and_step_and_without_a_negative_image_the_uncond_half_reads_zeros(adapter):
    tokens = SD3Tokens(adapter.sampling_weights.resampler, features(), torch.zeros(1, 4, 20))
    first = tokens.get(0, torch.tensor([0.5]), torch.device("cpu"))
    assert tokens.get(0, torch.tensor([0.5]), torch.device("cpu")) is first
    assert first[0].shape == (1, 6, WIDTH) and first[1].shape == (1, 32)
    later = tokens.get(0, torch.tensor([0.25]), torch.device("cpu"))
    assert len(tokens.cache) == 1 and (later[0] - first[0]).abs().max() > 1e-3  # the timestep conditions the tokens
    style = features()
    kv = adapter.branches(style, style, FakeMMDiT())[("double_block", 0)].kv
    assert torch.equal(kv.tokens.features[1], torch.zeros_like(style))  # negative is positive: zeros, as diffusers
    other = features(3)
    assert adapter.branches(style, other, FakeMMDiT())[("double_block", 0)].kv.tokens.features[1] is other


def image_rows(kv_positive: list[torch.Tensor], like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Fixed image rows' q, k, v and the positive half's IP keys/values, ``(B, H, L, D)`` in ``like``'s dtype."""
    q, k, v = sd3_call(5)
    q, k = (heads_first(t[:, TXT:]).to(like.dtype) for t in (q, k))
    return (q, k, v[:, TXT:].transpose(1, 2).to(like.dtype), *(heads_first(t).expand(B, -1, -1, -1) for t in kv_positive))


def branch_outputs(branch, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One block's K_ip/V_ip for both CFG halves at sigma 0.4, and its combine on fixed image rows, in ``like``'s dtype."""
    args = {"transformer_options": {"sigmas": torch.tensor([0.4])}}
    kv = [t for half in (0, 1) for t in branch.kv(half, slice(half, half + 1), args, like)]
    q, k, v, k_ip, v_ip = image_rows(kv[:2], like)
    return (*kv, *branch.combine(q, k, v, k_ip, v_ip, softmax_attention))


def reference_outputs(raw: dict, index: int, positive: torch.Tensor, attention: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``branch_outputs`` from the file's tensors as the node read them before they moved into a module: copied to the
    queries' dtype per call, the Resampler in the file's dtype."""
    timestep = torch.tensor([0.4]) * 1000
    kv = []
    for half_features in (positive, torch.zeros_like(positive)):
        tokens, time_emb = resample(raw["image_proj"], half_features, timestep.expand(half_features.shape[0]))
        weights = {key: value.to(like.dtype) for key, value in raw["blocks"][index].items()}
        k, v = block_keys_values(weights, tokens.flatten(0, 1)[None].to(like.dtype), time_emb[:1].to(like.dtype))
        kv += [t.transpose(1, 2).flatten(2) for t in (k, v)]
    q, k, v, k_ip, v_ip = image_rows(kv[:2], like)
    norms = (attention.ln_q.weight, attention.ln_k.weight)
    return (*kv, *ip_branch(q, k, v, k_ip, v_ip, {key: value.to(like.dtype) for key, value in raw["blocks"][index].items()}, norms,
                            softmax_attention))


def test_the_sampling_weights_module_holds_every_tensor_the_branch_reads_and_changes_no_result():
    adapter = parse_sd3_ip_adapter(sd35_ip_adapter_layout(WIDTH, H, BLOCKS), "ip.bin")
    raw = {"image_proj": dict(adapter.image_proj), "blocks": {i: dict(block) for i, block in adapter.blocks.items()}}
    module, model, style = adapter.sampling_weights, FakeMMDiT(), features()
    groups = [module.resampler, *module.blocks]
    file_tensors = [*adapter.image_proj.values(), *(t for block in adapter.blocks.values() for t in block.values())]
    assert module is adapter.sampling_weights and all(type(group) is TensorGroup for group in groups)
    assert len(list(module.parameters())) == len(file_tensors) == 3 * 7 + len(adapter.image_proj)
    assert {p.data_ptr() for p in module.parameters()} == {t.data_ptr() for t in file_tensors}  # shared until ComfyUI moves it
    assert not any(p.requires_grad for p in module.parameters())
    assert all(len(list(group.parameters(recurse=False))) == len(group.names) for group in groups)  # leaves ComfyUI can load one by one
    branches = adapter.branches(style, style, model)
    like = torch.zeros(1)  # float32: the module's dtype, as ComfyUI attaches it in the MODEL's compute dtype
    for index in range(BLOCKS):  # the result of before, bit for bit
        attention = model.joint_blocks[index].x_block.attn
        ours, before = branch_outputs(branches[("double_block", index)], like), reference_outputs(raw, index, style, attention, like)
        assert all(torch.equal(a, b) for a, b in zip(ours, before, strict=True))

    module.double()  # as ComfyUI's .to() does: new tensors; the file's are then spoiled, so a read of them would show
    raw64 = {"image_proj": {k: v.double() for k, v in raw["image_proj"].items()},
             "blocks": {i: {k: v.double() for k, v in block.items()} for i, block in raw["blocks"].items()}}
    for tensor in file_tensors:
        tensor.fill_(math.nan)
    like = torch.zeros(1, dtype=torch.float64)
    branches = adapter.branches(style, style, model)
    for index in range(BLOCKS):
        ours = branch_outputs(branches[("double_block", index)], like)
        expected = reference_outputs(raw64, index, style, model.joint_blocks[index].x_block.attn, like)
        assert all(t.dtype == torch.float64 and t.isfinite().all() for t in ours)
        assert all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))


def test_the_block_keys_values_are_made_per_step_and_need_its_sigma(adapter):
    kv = adapter.branches(features(), features(), FakeMMDiT())[("double_block", 2)].kv
    like = torch.zeros(1, dtype=torch.float64)
    args = {"transformer_options": {"sigmas": torch.tensor([0.4])}}
    k, v = kv(0, slice(0, 1), args, like)
    assert k.shape == v.shape == (1, 6, WIDTH) and k.dtype == torch.float64
    kv(1, slice(1, 2), args, like)
    assert len(kv.tokens.cache) == 2  # both halves at this step
    with pytest.raises(ValueError, match="needs the step's sigma"):
        kv(0, slice(0, 1), {}, like)


def test_joint_block_presets():
    blocks = mmdit_blocks(FakeMMDiT(blocks=38))
    assert blocks == [("double_block", i) for i in range(38)]
    assert select_dit_blocks(blocks, "style") == [("double_block", i) for i in range(19, 38)]
    assert select_dit_blocks(blocks, "double blocks") == select_dit_blocks(blocks, "all blocks") == blocks
    assert select_dit_blocks(blocks, "custom", "0, 36-37") == [("double_block", 0), ("double_block", 36), ("double_block", 37)]
    with pytest.raises(ValueError, match="joint .double. blocks only .SD3/SD3.5.; choose style, double blocks, all blocks or custom"):
        select_dit_blocks(blocks, "single blocks")
