"""InstantX's SD3.5 IP-Adapter: the original key layout in both file formats, the time-conditioned Resampler and the per-block
IP branch against diffusers' own classes (loaded through diffusers' own converters), and the errors for files and models that
do not fit."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from adapter_layouts import sd35_ip_adapter_layout
from torch import nn

from comfyui_stylemamba.stylestudio.adapter_files import IPAdapterError
from comfyui_stylemamba.stylestudio.attention import split_heads
from comfyui_stylemamba.stylestudio.dit_adapters import load_dit_adapter
from comfyui_stylemamba.stylestudio.dit_blocks import UnsupportedDiTError
from comfyui_stylemamba.stylestudio.sd3_ip_adapter import (adapter_norm, block_keys_values, ip_branch, parse_sd3_ip_adapter, resample,
                                                           timestep_embedding)

diffusers = pytest.importorskip("diffusers")
from diffusers import SD3Transformer2DModel  # noqa: E402
from diffusers.loaders.transformer_sd3 import SD3Transformer2DLoadersMixin  # noqa: E402
from diffusers.models.embeddings import get_timestep_embedding  # noqa: E402

WIDTH, HEADS, BLOCKS = 32, 2, 3  # the tiny MM-DiT: 2 heads of 16
FEATURES, HIDDEN, QUERIES, DEPTH, TIME_IN = 20, 32, 6, 4, 16  # Resampler: 1 head of 64, 4 layers (what diffusers assumes)


def original_layout(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    return sd35_ip_adapter_layout(WIDTH, HEADS, BLOCKS, FEATURES, HIDDEN, QUERIES, DEPTH, TIME_IN, seed)


def tiny_sd3(adapter: dict) -> SD3Transformer2DModel:
    """diffusers' SD3.5-style transformer (RMS q/k norm, last block context_pre_only) with the adapter loaded by diffusers."""
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=BLOCKS, attention_head_dim=WIDTH // HEADS,
                                  num_attention_heads=HEADS, joint_attention_dim=12, caption_projection_dim=WIDTH,
                                  pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8, qk_norm="rms_norm")
    model._load_ip_adapter_weights(adapter, low_cpu_mem_usage=False)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for block in model.transformer_blocks:  # the block's own q/k norms must differ from the adapter's, and from 1
            for norm in (block.attn.norm_q, block.attn.norm_k, block.attn.norm_added_q, block.attn.norm_added_k):
                norm.weight.copy_(1 + 0.3 * torch.randn(norm.weight.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def layout():
    return original_layout()


def features(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 9, FEATURES, generator=torch.Generator().manual_seed(seed))


def test_the_timestep_embedding_is_diffusers_with_cos_first():
    t = torch.tensor([0.0, 3.5, 999.0])
    for dim in (16, 17):
        ours = timestep_embedding(t, dim)
        assert ours.shape == (3, dim)
        assert torch.allclose(ours, get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0), atol=1e-6)


def test_the_resampler_equals_diffusers_time_image_projection_loaded_from_the_original_keys(layout):
    convert = SD3Transformer2DLoadersMixin._convert_ip_adapter_image_proj_to_diffusers
    reference = convert(None, layout["image_proj"], low_cpu_mem_usage=False)
    x, t = features(), torch.tensor([999.0, 250.5])
    with torch.no_grad():
        tokens, time = reference(x, t)
    ours, our_time = resample(layout["image_proj"], x, t)
    assert ours.shape == (2, QUERIES, WIDTH) and our_time.shape == (2, HIDDEN)
    assert (ours - tokens).abs().max() < 1e-5 and (our_time - time).abs().max() < 1e-5
    assert (resample(layout["image_proj"], x, t.flip(0))[0] - ours).abs().max() > 1e-3  # the timestep matters


def softmax_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


@pytest.mark.parametrize("index", range(BLOCKS))
def test_the_ip_branch_equals_diffusers_sd3_ip_adapter_processor(layout, index):
    """Through diffusers' processor (to_out set to identity to read the attention output): image rows ``J + scale·B``. Ours
    starts, as in ComfyUI, from the queries/keys *after* the block's own RMSNorm and the context tokens first."""
    model = tiny_sd3(layout)
    attn = model.transformer_blocks[index].attn
    processor = attn.processor
    processor.scale = 0.7
    with torch.no_grad():
        attn.to_out[0].weight.copy_(torch.eye(WIDTH))
        attn.to_out[0].bias.zero_()
    g = torch.Generator().manual_seed(index)
    image, context = torch.randn(2, 10, WIDTH, generator=g), torch.randn(2, 5, WIDTH, generator=g)
    adapter = parse_sd3_ip_adapter(layout, "a")
    tokens, time = resample(adapter.image_proj, features(), torch.tensor([600.0, 600.0]))
    with torch.no_grad():
        expected = attn(hidden_states=image, encoder_hidden_states=context, ip_hidden_states=tokens, temb=time)[0]
        head = WIDTH // HEADS
        q_img, k_img = attn.norm_q(split_heads(attn.to_q(image), head_dim=head)), attn.norm_k(split_heads(attn.to_k(image), head_dim=head))
        v_img = split_heads(attn.to_v(image), head_dim=head)
        q_txt = attn.norm_added_q(split_heads(attn.add_q_proj(context), head_dim=head))
        k_txt = attn.norm_added_k(split_heads(attn.add_k_proj(context), head_dim=head))
        v_txt = split_heads(attn.add_v_proj(context), head_dim=head)
        joint = softmax_attention(q_img, torch.cat((k_txt, k_img), 2), torch.cat((v_txt, v_img), 2))
        k_ip, v_ip = block_keys_values(adapter.blocks[index], tokens, time)
        branch, style = ip_branch(q_img, k_img, v_img, k_ip, v_ip, adapter.blocks[index], (attn.norm_q.weight, attn.norm_k.weight),
                                  softmax_attention)
    ours = (joint + 0.7 * branch).transpose(1, 2).flatten(2)
    assert branch.shape == style.shape == (2, HEADS, 10, head)
    assert (ours - expected).abs().max() < 1e-5
    assert (branch - style).abs().max() > 1e-2  # the branch also attends to the image's own keys
    adapter_query = adapter_norm(q_img, adapter.blocks[index]["norm_q.weight"], attn.norm_q.weight)
    assert torch.allclose(style, softmax_attention(adapter_query, k_ip, v_ip))


def test_without_a_block_norm_the_adapter_norm_is_the_adapters_rmsnorm_of_the_raw_query():
    x = torch.randn(2, 2, 5, 16, generator=torch.Generator().manual_seed(3)) * 4
    weight = torch.rand(16) + 0.5
    reference = diffusers.models.normalization.RMSNorm(16, 1e-6)
    with torch.no_grad():
        reference.weight.copy_(weight)
        assert torch.allclose(adapter_norm(x, weight, None), reference(x), atol=1e-6)
        block = torch.rand(16) + 0.5
        normed_by_block = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * block
        assert torch.allclose(adapter_norm(normed_by_block, weight, block), reference(x), atol=1e-6)


def test_load_dit_adapter_reads_safetensors_flat_and_bin_nested_alike(tmp_path, layout):
    save_file({f"{group}.{key}": value.contiguous() for group, values in layout.items() for key, value in values.items()},
              str(tmp_path / "ip.safetensors"))
    torch.save(layout, tmp_path / "ip-adapter.bin")
    flat, nested = load_dit_adapter(str(tmp_path / "ip.safetensors")), load_dit_adapter(str(tmp_path / "ip-adapter.bin"))
    for adapter in (flat, nested):
        assert adapter.layout == "instantx-sd3.5"
        assert (adapter.width, adapter.head_dim, adapter.feature_dim, sorted(adapter.blocks)) == (WIDTH, 16, FEATURES, [0, 1, 2])
    assert all(torch.equal(flat.blocks[2][k], nested.blocks[2][k]) for k in flat.blocks[2])


class Norm(nn.Module):
    def __init__(self, width: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None


class FakeMMDiT(nn.Module):
    """What the adapter reads of ComfyUI's MMDiT: width, heads, and each joint block's image-stream q/k norms."""

    def __init__(self, width: int = WIDTH, heads: int = HEADS, blocks: int = BLOCKS, layer_norm: bool = False):
        super().__init__()
        self.hidden_size, self.num_heads = width, heads
        self.joint_blocks = nn.ModuleList()
        for _ in range(blocks):
            joint = nn.Module()
            joint.x_block = nn.Module()
            joint.x_block.attn = nn.Module()
            joint.x_block.attn.ln_q, joint.x_block.attn.ln_k = Norm(width // heads, layer_norm), Norm(width // heads, layer_norm)
            self.joint_blocks.append(joint)


class FakeFlux(nn.Module):
    def __init__(self):
        super().__init__()
        self.double_blocks, self.single_blocks, self.txt_in = nn.ModuleList(), nn.ModuleList(), nn.Linear(2, 2)


def test_the_adapter_names_the_model_and_clip_vision_that_fit(layout):
    adapter = parse_sd3_ip_adapter(layout, "ip.bin")
    adapter.check_model(FakeMMDiT())
    assert adapter.model_blocks(FakeMMDiT()) == [("double_block", i) for i in range(BLOCKS)]
    with pytest.raises(IPAdapterError, match=r"'ip.bin' \(instantx-sd3.5\) is for an MM-DiT 32 wide with 3 joint blocks of 16-wide "
                                             r"heads .* this MODEL is 64 wide with 3 joint blocks of 32-wide heads: .*SD3.5 Large only"):
        adapter.check_model(FakeMMDiT(width=64))
    with pytest.raises(IPAdapterError, match="with 4 joint blocks"):
        adapter.check_model(FakeMMDiT(blocks=4))
    with pytest.raises(IPAdapterError, match="this MODEL normalises queries/keys with a LayerNorm"):
        adapter.check_model(FakeMMDiT(layer_norm=True))
    with pytest.raises(UnsupportedDiTError, match=r"but this MODEL is a Flux model \(ComfyUI's FakeFlux\): use a Flux IP-Adapter or Redux with Flux"):
        adapter.check_model(FakeFlux())
    features = adapter.tokens({"penultimate_hidden_states": torch.ones(2, 9, FEATURES, dtype=torch.float16)})
    assert features.dtype == torch.float32 and features.shape == (2, 9, FEATURES)
    with pytest.raises(IPAdapterError, match=r"shape \(2, 9, 16\), but IP-Adapter 'ip.bin' \(instantx-sd3.5\) reads 20-wide ones: "
                                             r"load SigLIP so400m"):
        adapter.tokens({"penultimate_hidden_states": torch.zeros(2, 9, 16)})


def test_a_flux_adapter_on_an_sd3_model_names_the_sd35_adapter():
    from comfyui_stylemamba.stylestudio.flux_ip_adapter import INSTANTX, FluxIPAdapter

    flux = FluxIPAdapter("flux.bin", INSTANTX, {}, [(torch.zeros(WIDTH, 8), None, torch.zeros(WIDTH, 8), None)])
    with pytest.raises(UnsupportedDiTError, match="SD3/SD3.5 takes its style from InstantX's SD3.5-Large IP-Adapter"):
        flux.check_model(FakeMMDiT())


def test_files_that_are_not_complete_sd35_adapters_are_refused(layout):
    broken = {"image_proj": layout["image_proj"], "ip_adapter": {**layout["ip_adapter"], "1.to_v_ip.weight": torch.zeros(WIDTH, 8)}}
    with pytest.raises(IPAdapterError, match="block 1 has shapes"):
        parse_sd3_ip_adapter(broken, "x")
    no_time = {"image_proj": {k: v for k, v in layout["image_proj"].items() if "time" not in k}, "ip_adapter": layout["ip_adapter"]}
    with pytest.raises(IPAdapterError, match="not the SD3.5 time-conditioned Resampler"):
        parse_sd3_ip_adapter(no_time, "x")
    missing = {"image_proj": layout["image_proj"], "ip_adapter": {k: v for k, v in layout["ip_adapter"].items() if k != "2.norm_k.weight"}}
    with pytest.raises(IPAdapterError, match="per-block weights are incomplete"):
        parse_sd3_ip_adapter(missing, "x")


def test_a_file_of_no_known_layout_is_refused_naming_the_sd35_adapter_among_what_fits(tmp_path):
    save_file({"something.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    sdxl = {"image_proj": {"proj.weight": torch.zeros(4 * 2048, 1280), "proj.bias": torch.zeros(4 * 2048),
                           "norm.weight": torch.ones(2048), "norm.bias": torch.zeros(2048)},
            "ip_adapter": {"1.to_k_ip.weight": torch.zeros(640, 2048), "1.to_v_ip.weight": torch.zeros(640, 2048)}}
    torch.save(sdxl, tmp_path / "ip-adapter_sdxl.bin")
    sd35 = ("instantx-sd3.5 (SD3.5 Large: InstantX SD3.5-Large-IP-Adapter, ip-adapter.bin, with SigLIP so400m "
            "(sigclip_vision_patch14_384, 1152-wide penultimate hidden states))")
    for name, opening in (("other.safetensors", "not an IP-Adapter layout this node knows (top-level groups: ['something'])"),
                          ("ip-adapter_sdxl.bin", "an IP-Adapter for SDXL UNets (standard): it fits the StyleStudio Cross-Modal "
                                                  "AdaIN node on SD1.5/SDXL models, not a DiT")):
        with pytest.raises(IPAdapterError) as refused:
            load_dit_adapter(str(tmp_path / name))
        message = str(refused.value)
        assert message.startswith(f"'{name}': {opening}; this node takes instantx-flux (Flux.1: InstantX FLUX.1-dev-IP-Adapter")
        assert f"; {sd35}; xlabs-flux (Flux.1: XLabs flux-ip-adapter with CLIP ViT-L/14" in message
