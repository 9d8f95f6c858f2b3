"""StyleStudio on Flux with an IP-Adapter, the pure-torch core on CPU: undoing RoPE, the IP branch against diffusers'
XLabs processor and InstantX's formula (float64), the branch's AdaIN/lerp/teacher, the block patch's two places of
injection and style CFG, and reading both Flux adapter layouts with their errors."""

import math

import pytest
import torch
from diffusers.models.embeddings import ImageProjection, apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxIPAdapterAttnProcessor, FluxPosEmbed
from safetensors.torch import save_file
from torch import nn

from comfyui_stylemamba.stylestudio.adapter_files import IPAdapterError
from comfyui_stylemamba.stylestudio.attention import sdpa
from comfyui_stylemamba.stylestudio.dit import (ATTENTION, RESIDUAL, STYLE_KEY, BranchCall, DiTBlockPatch, DiTStyleWrapper,
                                                FixedImageKV, ImageBranch, ImageStyle, StyleBatch, branch_image_attention,
                                                cross_mass, unrope)
from comfyui_stylemamba.stylestudio.dit_adapters import load_dit_adapter
from comfyui_stylemamba.stylestudio.hooks import TEACHER_KEY, SigmaWindow, TeacherHandover

B, H, D, TXT, IMG, N = 2, 2, 8, 5, 12, 3  # batch, heads, head width, text tokens, image tokens, IP tokens
WIDTH, TOKEN_WIDTH = H * D, 12  # model width, IP token width
AXES = [2, 2, 4]  # RoPE axes (sum = D)


def rope_tables(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """diffusers' Flux RoPE (cos, sin) for ``length`` positions, and the same rotation in ComfyUI's ``pe`` layout."""
    ids = torch.stack([torch.zeros(length), torch.arange(length) % 4, torch.arange(length) // 4], -1).double()
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=AXES)(ids)
    c, s = cos[:, ::2].double(), sin[:, ::2].double()  # one angle per channel pair
    pe = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (L, D/2, 2, 2): [[cos, -sin], [sin, cos]]
    return cos.double(), sin.double(), pe[None, None]


def comfy_rope(x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """ComfyUI's ``apply_rope1``, in x's dtype: ``out_pair = pe_i @ pair``."""
    pairs = x.unflatten(-1, (-1, 1, 2))
    return (pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]).flatten(-2)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_unrope_undoes_comfyuis_rotation_which_is_diffusers_rotation():
    q = randn(B, H, TXT + IMG, D)
    cos, sin, pe = rope_tables(TXT + IMG)
    roped = comfy_rope(q, pe)
    reference = apply_rotary_emb(q.float(), (cos.float(), sin.float()), sequence_dim=2)  # diffusers computes in float32
    assert torch.allclose(roped.float(), reference, atol=1e-6)
    assert not torch.allclose(roped, q, atol=1e-2)
    assert torch.allclose(unrope(roped, pe), q, atol=1e-14)
    assert unrope(q, None) is q
    half = unrope(roped.half(), pe.float())  # computed in pe's dtype, handed back in x's
    assert half.dtype == torch.float16 and torch.allclose(half.double(), q, atol=1e-2)


def tiny_diffusers_attention(seed: int = 1) -> FluxAttention:
    torch.manual_seed(seed)
    attention = FluxAttention(query_dim=WIDTH, heads=H, dim_head=D, added_kv_proj_dim=WIDTH, bias=True, context_pre_only=False,
                              processor=FluxIPAdapterAttnProcessor(WIDTH, TOKEN_WIDTH, num_tokens=(N,), scale=1.0))
    return attention.double()


def joint_query(attention: FluxAttention, img: torch.Tensor, txt: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
    """The roped joint query ``[text | image]`` that ComfyUI's Flux hands the attention override, built from diffusers' weights."""
    def heads(x, norm):
        return norm(x.unflatten(-1, (H, D))).transpose(1, 2)

    query = torch.cat((heads(attention.add_q_proj(txt), attention.norm_added_q), heads(attention.to_q(img), attention.norm_q)), 2)
    return comfy_rope(query, pe)


def test_the_xlabs_branch_is_diffusers_flux_ip_adapter_output():
    attention = tiny_diffusers_attention()
    img, txt, tokens = randn(1, IMG, WIDTH, seed=2), randn(1, TXT, WIDTH, seed=3), randn(1, N, TOKEN_WIDTH, seed=4)
    cos, sin, pe = rope_tables(TXT + IMG)
    with torch.no_grad():
        *_, expected = attention.processor(attention, img, txt, image_rotary_emb=(cos, sin), ip_hidden_states=[tokens])
        processor = attention.processor
        k, v = processor.to_k_ip[0](tokens), processor.to_v_ip[0](tokens)
        branch = ImageBranch(FixedImageKV.holding(k, v), RESIDUAL)
        query = joint_query(attention, img, txt, pe)
        ours, style = BranchCall(branch, {"pe": pe}, [0]).attention(query, query, query, TXT, sdpa)
    assert ours.shape == (1, H, IMG, D)
    assert torch.allclose(ours.transpose(1, 2).flatten(2), expected, atol=1e-12) and torch.equal(style, ours)


def rms_heads(x):
    heads = x.unflatten(-1, (H, D))
    return (heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + 1e-5)).flatten(-2)


def test_each_half_attends_to_its_own_image_and_the_query_is_taken_before_rope():
    q = randn(B, H, TXT + IMG, D, seed=5)
    _, _, pe = rope_tables(TXT + IMG)
    k_pos, v_pos, k_neg, v_neg = (randn(1, N, WIDTH, seed=s) for s in (6, 7, 8, 9))
    branch = ImageBranch(FixedImageKV.holding(k_pos, v_pos, (k_neg, v_neg)), ATTENTION, text_rows=True)
    roped = comfy_rope(q, pe)
    out, _ = BranchCall(branch, {"pe": pe}, [0, 1]).attention(roped, roped, roped, 0, sdpa)
    split = lambda t: t.unflatten(-1, (H, D)).transpose(1, 2)
    assert torch.allclose(out[:1], sdpa(q[:1], split(k_pos), split(v_pos)), atol=1e-12)
    assert torch.allclose(out[1:], sdpa(q[1:], split(k_neg), split(v_neg)), atol=1e-12)


def test_branch_image_attention_lerps_from_the_plain_adapter_to_adain_with_the_joint_mass():
    q, k, v = (randn(B, H, TXT + IMG, D, seed=s) for s in (10, 11, 12))
    ip = randn(B, H, IMG, D, seed=13) * 2 + 1
    qi = q[:, :, TXT:]
    joint = sdpa(q, k, v)[:, :, TXT:]
    assert torch.allclose(branch_image_attention(q, k, v, TXT, ip, True, 0.0, sdpa), joint + ip, atol=1e-12)
    assert torch.allclose(branch_image_attention(q, k, v, TXT, ip, False, 0.0, sdpa), joint, atol=1e-12)
    w = cross_mass(qi, k, TXT, sdpa)
    own = (1 - w) * sdpa(qi, k[:, :, TXT:], v[:, :, TXT:])
    for into in (True, False):
        out = branch_image_attention(q, k, v, TXT, ip, into, 1.0, sdpa)
        adain = ((out - own) / w).transpose(1, 2).flatten(2)
        style = ip.transpose(1, 2).flatten(2)
        assert torch.allclose(adain.mean(1), style.mean(1), atol=1e-5)
        assert torch.allclose(adain.std(1, correction=0), style.std(1, correction=0), rtol=1e-3)
        half = branch_image_attention(q, k, v, TXT, ip, into, 0.5, sdpa)
        plain = branch_image_attention(q, k, v, TXT, ip, into, 0.0, sdpa)
        assert torch.allclose(half, (out + plain) / 2, atol=1e-12)
    q_t, k_t = randn(B, H, IMG, D, seed=14), randn(B, H, IMG, D, seed=15)
    handed = branch_image_attention(q, k, v, TXT, ip, True, 0.0, sdpa, (q_t, k_t))
    teacher_map = torch.softmax(q_t @ k_t.transpose(-1, -2) / math.sqrt(D), -1)
    expected = w * sdpa(qi, k[:, :, :TXT], v[:, :, :TXT]) + ip + (1 - w) * (teacher_map @ v[:, :, TXT:])
    assert torch.allclose(handed, expected, atol=1e-12)


def raw_attention(q, k, v, heads, skip_reshape=False, skip_output_reshape=False, **kwargs):
    out = sdpa(q, k, v)
    return out if skip_output_reshape else out.transpose(1, 2).flatten(2)


def fake_block(kind):
    """A block whose one attention call honours ComfyUI's override; its image stream is the attention output."""
    def run(args):
        q, k, v = args["qkv"]
        options = args["transformer_options"]
        override = options.get("optimized_attention_override")
        call = dict(skip_reshape=True, mask=None, transformer_options=options)
        out = override(raw_attention, q, k, v, H, **call) if override else raw_attention(q, k, v, H, **call)
        return {"img": out if kind == "single_block" else out[:, TXT:]}
    return run


def block_args(q, k, v, pe, halves, sigma=5.0, **options):
    batch = StyleBatch(TXT, 0, torch.ones(B, dtype=torch.bool))
    return {"qkv": (q, k, v), "pe": pe, "transformer_options": {STYLE_KEY: batch, "sigmas": torch.tensor([sigma]),
                                                                "cond_or_uncond": halves, **options}}


def test_the_block_patch_adds_the_plain_branch_where_each_adapter_does_and_replaces_it_with_adain():
    q, k, v = (randn(B, H, TXT + IMG, D, seed=s) for s in (16, 17, 18))
    _, _, pe = rope_tables(TXT + IMG)
    k_ip, v_ip = randn(1, N, WIDTH, seed=19), randn(1, N, WIDTH, seed=20) + 3
    kv = FixedImageKV.holding(k_ip, v_ip)
    merged = lambda t: t.transpose(1, 2).flatten(2)
    ip_all = merged(sdpa(unrope(q, pe), *(t.unflatten(-1, (H, D)).transpose(1, 2).expand(B, -1, -1, -1) for t in (k_ip, v_ip))))
    plain = raw_attention(q, k, v, H)
    window = SigmaWindow(high=10.0, low=0.0)
    cases = {("double_block", ATTENTION, False): plain[:, TXT:] + ip_all[:, TXT:],  # InstantX double
             ("single_block", ATTENTION, True): plain + ip_all,  # InstantX single: text rows too
             ("double_block", RESIDUAL, False): plain[:, TXT:] + ip_all[:, TXT:]}  # XLabs: after the block
    for (kind, into, text_rows), expected in cases.items():
        patch = DiTBlockPatch((kind, 0), 0.0, window, branch=ImageBranch(kv, into, text_rows))
        out = patch(block_args(q, k, v, pe, [0, 0]), {"original_block": fake_block(kind)})["img"]
        assert torch.allclose(out, expected, atol=1e-12), (kind, into)
        styled = DiTBlockPatch((kind, 0), 1.0, window, branch=ImageBranch(kv, into, text_rows))
        out = styled(block_args(q, k, v, pe, [0, 0]), {"original_block": fake_block(kind)})["img"]
        image_rows = out[:, TXT:] if kind == "single_block" else out
        assert not torch.allclose(image_rows, expected[:, -IMG:], atol=1e-3)
        if kind == "single_block":  # the text rows lose the branch at strength 1
            assert torch.allclose(out[:, :TXT], plain[:, :TXT], atol=1e-12)
        recorded = TeacherHandover(recording=True)
        teacher_pass = patch(block_args(q, k, v, pe, [0, 0], **{TEACHER_KEY: recorded}), {"original_block": fake_block(kind)})
        assert torch.equal(teacher_pass["img"], plain if kind == "single_block" else plain[:, TXT:])  # no branch
        assert recorded.qk[(kind, 0)][0].shape == (B, H, IMG, D)


def test_outside_the_window_the_adapter_is_plain_and_style_cfg_uses_the_negative_image_on_the_uncond_half():
    q, k, v = (randn(B, H, TXT + IMG, D, seed=s) for s in (21, 22, 23))
    _, _, pe = rope_tables(TXT + IMG)
    k_pos, v_pos, k_neg, v_neg = (randn(1, N, WIDTH, seed=s) for s in (24, 25, 26, 27))
    branch = ImageBranch(FixedImageKV.holding(k_pos, v_pos, (k_neg, v_neg)), ATTENTION)
    window = SigmaWindow(high=1.0, low=0.5)
    styled, plain = DiTBlockPatch(("double_block", 1), 1.0, window, branch=branch), DiTBlockPatch(("double_block", 1), 0.0, window, branch=branch)
    run = lambda patch, sigma, halves: patch(block_args(q, k, v, pe, halves, sigma), {"original_block": fake_block("double_block")})["img"]
    assert torch.equal(run(styled, 5.0, [0, 1]), run(plain, 5.0, [0, 1]))
    assert not torch.allclose(run(styled, 0.7, [0, 1]), run(plain, 0.7, [0, 1]), atol=1e-3)
    both_positive, cfg = run(plain, 5.0, [0, 0]), run(plain, 5.0, [0, 1])
    assert torch.equal(cfg[0], both_positive[0]) and (cfg[1] - both_positive[1]).abs().max() > 1e-2


def test_the_wrapper_teaches_with_the_branch_off_then_styles():
    calls = []

    def apply_model(x, t, c_crossattn, transformer_options, **kwargs):
        handover = transformer_options.get(TEACHER_KEY)
        batch = transformer_options[STYLE_KEY]
        calls.append((c_crossattn.shape[1], batch.txt_len, None if handover is None else handover.recording))
        return x

    wrapper = DiTStyleWrapper(ImageStyle(), teacher_end_sigma=0.5)
    args = lambda sigma: {"input": torch.zeros(2), "timestep": torch.tensor([sigma]), "cond_or_uncond": [0, 1],
                          "c": {"c_crossattn": torch.zeros(2, TXT, 4), "transformer_options": {}}}
    wrapper(apply_model, args(0.8))
    wrapper(apply_model, args(0.2))
    assert calls == [(TXT, TXT, True), (TXT, TXT, False), (TXT, TXT, None)]
    assert DiTStyleWrapper(ImageStyle(), None)(lambda x, t, **c: c["transformer_options"][STYLE_KEY].styled, args(0.8)).tolist() == [True, True]


# --- reading the files -------------------------------------------------------------------------------------------

class TinyFlux(nn.Module):
    def __init__(self, double=2, single=3, width=WIDTH, heads=H):
        super().__init__()
        self.double_blocks, self.single_blocks = nn.ModuleList(nn.Identity() for _ in range(double)), nn.ModuleList(nn.Identity() for _ in range(single))
        self.txt_in, self.hidden_size, self.num_heads = nn.Linear(TOKEN_WIDTH, width), width, heads


def xlabs_state(doubles=2, clip=10, tokens=N, width=WIDTH):
    g = torch.Generator().manual_seed(30)
    state = {"ip_adapter_proj_model.proj.weight": torch.randn(tokens * TOKEN_WIDTH, clip, generator=g),
             "ip_adapter_proj_model.proj.bias": torch.randn(tokens * TOKEN_WIDTH, generator=g),
             "ip_adapter_proj_model.norm.weight": torch.rand(TOKEN_WIDTH, generator=g) + 0.5,
             "ip_adapter_proj_model.norm.bias": torch.randn(TOKEN_WIDTH, generator=g)}
    for i in range(doubles):
        for kv in "kv":
            state[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj.weight"] = torch.randn(width, TOKEN_WIDTH, generator=g)
            state[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj.bias"] = torch.randn(width, generator=g)
    return state


def instantx_state(blocks=5, clip=14, tokens=4, width=WIDTH):
    g = torch.Generator().manual_seed(31)
    image_proj = {"proj.0.weight": torch.randn(2 * clip, clip, generator=g), "proj.0.bias": torch.randn(2 * clip, generator=g),
                  "proj.2.weight": torch.randn(tokens * TOKEN_WIDTH, 2 * clip, generator=g),
                  "proj.2.bias": torch.randn(tokens * TOKEN_WIDTH, generator=g),
                  "norm.weight": torch.rand(TOKEN_WIDTH, generator=g) + 0.5, "norm.bias": torch.randn(TOKEN_WIDTH, generator=g)}
    layers = {f"{i}.to_{kv}_ip.weight": torch.randn(width, TOKEN_WIDTH, generator=g) for i in range(blocks) for kv in "kv"}
    return {"image_proj": image_proj, "ip_adapter": layers}


def test_xlabs_safetensors_projects_like_diffusers_and_branches_into_the_stream_after_each_double_block(tmp_path):
    state = xlabs_state()
    save_file(state, tmp_path / "flux-ip-adapter.safetensors")
    adapter = load_dit_adapter(str(tmp_path / "flux-ip-adapter.safetensors"))
    assert adapter.layout == "xlabs-flux"
    embeds = torch.randn(2, 10, generator=torch.Generator().manual_seed(32))
    tokens = adapter.tokens({"image_embeds": embeds})
    reference = ImageProjection(image_embed_dim=10, cross_attention_dim=TOKEN_WIDTH, num_image_text_embeds=N)
    reference.load_state_dict({k.replace("ip_adapter_proj_model.", "").replace("proj", "image_embeds"): v
                               for k, v in state.items() if k.startswith("ip_adapter_proj_model.")})
    with torch.no_grad():
        assert torch.allclose(tokens, reference(embeds).flatten(0, 1)[None], atol=1e-5)  # two images: 2 N tokens
    branches = adapter.branches(tokens, tokens, TinyFlux())
    assert sorted(branches) == [("double_block", 0), ("double_block", 1)]
    branch = branches[("double_block", 1)]
    assert branch.into == RESIDUAL and not branch.text_rows
    k, v = branch.kv(0, slice(0, 1), {}, torch.zeros((), dtype=torch.float16))
    w = lambda kv, part: state[f"double_blocks.1.processor.ip_adapter_double_stream_{kv}_proj.{part}"]
    assert k.dtype == torch.float16 and torch.allclose(v.float(), tokens @ w("v", "weight").T + w("v", "bias"), atol=1e-2)


def test_instantx_bin_normalises_keys_and_values_per_head_and_covers_the_single_blocks(tmp_path):
    state = instantx_state()
    torch.save(state, tmp_path / "ip-adapter.bin")
    adapter = load_dit_adapter(str(tmp_path / "ip-adapter.bin"))
    assert adapter.layout == "instantx-flux"
    embeds = torch.randn(1, 14, generator=torch.Generator().manual_seed(33))
    p = state["image_proj"]
    hidden = torch.nn.functional.gelu(embeds @ p["proj.0.weight"].T + p["proj.0.bias"]) @ p["proj.2.weight"].T + p["proj.2.bias"]
    expected = torch.nn.functional.layer_norm(hidden.reshape(1, 4, TOKEN_WIDTH), (TOKEN_WIDTH,), p["norm.weight"], p["norm.bias"])
    tokens = adapter.tokens({"image_embeds": embeds})
    assert torch.allclose(tokens, expected, atol=1e-5)
    branches = adapter.branches(tokens, tokens, TinyFlux())
    assert [b for b, br in branches.items() if br.text_rows] == [("single_block", i) for i in range(3)]
    assert all(br.into == ATTENTION for br in branches.values())
    k, v = branches[("single_block", 0)].kv(0, slice(0, 1), {}, tokens)  # block 2 of 5: the first single block
    layer = state["ip_adapter"]
    assert torch.allclose(k, rms_heads(tokens @ layer["2.to_k_ip.weight"].T), atol=1e-5)
    assert torch.allclose(v, rms_heads(tokens @ layer["2.to_v_ip.weight"].T), atol=1e-5)


def test_the_keys_values_are_one_module_read_where_it_is_put_and_shared_by_the_halves_without_a_negative_image(tmp_path):
    state = instantx_state()
    torch.save(state, tmp_path / "ip-adapter.bin")
    adapter = load_dit_adapter(str(tmp_path / "ip-adapter.bin"))
    assert adapter.sampling_weights is None  # nothing projected yet
    embeds = torch.randn(2, 14, generator=torch.Generator().manual_seed(34))
    style, negative = adapter.tokens({"image_embeds": embeds[:1]}), adapter.tokens({"image_embeds": embeds[1:]})
    branches = adapter.branches(style, style, TinyFlux())
    module = adapter.sampling_weights
    kv_bytes = 5 * 2 * 4 * WIDTH * 4  # blocks × (K, V) × tokens × width × float32
    assert sum(t.numel() * t.element_size() for t in module.state_dict().values()) == kv_bytes  # as ComfyUI counts it
    module.half()  # ComfyUI casts and moves the module (attach_model: the MODEL's dtype)
    like = torch.zeros((), dtype=torch.float16)
    for half in (0, 1):  # no negative image: both halves read the one positive copy, in place
        k, v = branches[("single_block", 0)].kv(half, slice(0, 1), {}, like)
        assert k is module.blocks[2].k and v is module.blocks[2].v
    assert torch.allclose(k.float(), rms_heads(style @ state["ip_adapter"]["2.to_k_ip.weight"].T), atol=1e-2)
    with_negative = adapter.branches(style, negative, TinyFlux())
    assert adapter.sampling_weights is not module
    assert sum(t.numel() * t.element_size() for t in adapter.sampling_weights.state_dict().values()) == 2 * kv_bytes
    k_pos, _ = with_negative[("double_block", 0)].kv(0, slice(0, 1), {}, style)
    k_neg, v_neg = with_negative[("double_block", 0)].kv(1, slice(0, 1), {}, style)
    assert torch.allclose(k_pos, rms_heads(style @ state["ip_adapter"]["0.to_k_ip.weight"].T), atol=1e-5)
    assert torch.allclose(k_neg, rms_heads(negative @ state["ip_adapter"]["0.to_k_ip.weight"].T), atol=1e-5)
    assert torch.allclose(v_neg, rms_heads(negative @ state["ip_adapter"]["0.to_v_ip.weight"].T), atol=1e-5)


def test_bad_adapters_and_mismatches_name_what_fits(tmp_path):
    save_file({"something.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(IPAdapterError, match="not an IP-Adapter layout this node knows.*instantx-flux.*xlabs-flux"):
        load_dit_adapter(str(tmp_path / "other.safetensors"))
    sdxl = {"image_proj.proj.weight": torch.zeros(4 * 2048, 1280), "image_proj.proj.bias": torch.zeros(4 * 2048),
            "image_proj.norm.weight": torch.ones(2048), "image_proj.norm.bias": torch.zeros(2048),
            "ip_adapter.1.to_k_ip.weight": torch.zeros(640, 2048), "ip_adapter.1.to_v_ip.weight": torch.zeros(640, 2048)}
    save_file(sdxl, tmp_path / "ip-adapter_sdxl.safetensors")
    with pytest.raises(IPAdapterError, match="an IP-Adapter for SDXL UNets .standard.: it fits the StyleStudio Cross-Modal AdaIN node"):
        load_dit_adapter(str(tmp_path / "ip-adapter_sdxl.safetensors"))
    save_file(xlabs_state(), tmp_path / "x.safetensors")
    xlabs = load_dit_adapter(str(tmp_path / "x.safetensors"))
    with pytest.raises(IPAdapterError, match="clip_vision gives 1152-wide image embeddings but .* reads 10-wide ones: load CLIP ViT-L/14"):
        xlabs.tokens({"image_embeds": torch.zeros(1, 1152)})
    with pytest.raises(IPAdapterError, match="makes 16-wide keys/values but this MODEL's blocks are 32 wide"):
        xlabs.check_model(TinyFlux(width=32))
    with pytest.raises(IPAdapterError, match="has weights for 2 double blocks, this MODEL has 19"):
        xlabs.check_model(TinyFlux(double=19))
    torch.save(instantx_state(), tmp_path / "i.bin")
    with pytest.raises(IPAdapterError, match="reads 14-wide ones: load SigLIP so400m"):
        load_dit_adapter(str(tmp_path / "i.bin")).tokens({"image_embeds": torch.zeros(1, 768)})
    broken = xlabs_state()
    del broken["double_blocks.1.processor.ip_adapter_double_stream_v_proj.bias"]
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(IPAdapterError, match="block 1 lacks some of its key/value weights and biases"):
        load_dit_adapter(str(tmp_path / "broken.safetensors"))
