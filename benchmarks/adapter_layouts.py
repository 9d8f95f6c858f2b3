"""Random IP-Adapter files in the released key layouts at chosen widths: XLabs and InstantX Flux, InstantX SD3.5.

What the StyleStudio benchmarks load, and the unit tests and the real-ComfyUI tier's probes too; pure torch (the dicts
are what ``safetensors.torch.save_file`` or ``torch.save`` writes).
"""

from __future__ import annotations

import math

import torch


def xlabs_flux_ip_adapter(generator: torch.Generator, width: int, token_width: int, clip_width: int, doubles: int,
                          tokens: int = 4) -> dict[str, torch.Tensor]:
    """XLabs flux-ip-adapter, flat keys as its .safetensors stores them: ImageProjModel over CLIP ViT-L image_embeds,
    and biased K/V projections in every double block's processor."""
    rand = lambda *shape: torch.randn(*shape, generator=generator) / math.sqrt(shape[-1])
    state = {"ip_adapter_proj_model.proj.weight": rand(tokens * token_width, clip_width),
             "ip_adapter_proj_model.proj.bias": torch.zeros(tokens * token_width),
             "ip_adapter_proj_model.norm.weight": torch.ones(token_width), "ip_adapter_proj_model.norm.bias": torch.zeros(token_width)}
    for i in range(doubles):
        for which in "kv":
            state[f"double_blocks.{i}.processor.ip_adapter_double_stream_{which}_proj.weight"] = rand(width, token_width)
            state[f"double_blocks.{i}.processor.ip_adapter_double_stream_{which}_proj.bias"] = torch.zeros(width)
    return state


def instantx_flux_ip_adapter(generator: torch.Generator, width: int, token_width: int, clip_width: int, blocks: int,
                             tokens: int) -> dict[str, dict[str, torch.Tensor]]:
    """InstantX FLUX.1-dev-IP-Adapter, nested groups as its ip-adapter.bin stores them: an MLP over SigLIP image_embeds
    (released: 128 tokens) and unbiased to_k_ip/to_v_ip for every double, then single block."""
    rand = lambda *shape: torch.randn(*shape, generator=generator) / math.sqrt(shape[-1])
    image_proj = {"proj.0.weight": rand(2 * clip_width, clip_width), "proj.0.bias": torch.zeros(2 * clip_width),
                  "proj.2.weight": rand(tokens * token_width, 2 * clip_width), "proj.2.bias": torch.zeros(tokens * token_width),
                  "norm.weight": torch.ones(token_width), "norm.bias": torch.zeros(token_width)}
    layers = {f"{n}.to_{which}_ip.weight": rand(width, token_width) for n in range(blocks) for which in "kv"}
    return {"image_proj": image_proj, "ip_adapter": layers}


def sd35_ip_adapter_layout(width: int, heads: int, blocks: int, features: int = 20, hidden: int = 32, queries: int = 6,
                           depth: int = 4, time_in: int = 16, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A random InstantX SD3.5 IP-Adapter in its original key layout (``image_proj`` Resampler with time embedding, and per
    joint block ``ip_adapter.n.*``), every weight away from its neutral value. The Resampler has one 64-wide head per 64
    channels of ``hidden`` and ``depth`` 4 layers, what diffusers' converter assumes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.3: torch.randn(*shape, generator=g) * s  # noqa: E731
    near_one = lambda n: 1 + r(n, s=0.2)  # noqa: E731
    inner = 64 * max(1, hidden // 64)
    proj = {"latents": r(1, queries, hidden, s=1.0), "proj_in.weight": r(hidden, features), "proj_in.bias": r(hidden),
            "proj_out.weight": r(width, hidden), "proj_out.bias": r(width), "norm_out.weight": near_one(width),
            "norm_out.bias": r(width), "time_embedding.linear_1.weight": r(hidden, time_in),
            "time_embedding.linear_1.bias": r(hidden), "time_embedding.linear_2.weight": r(hidden, hidden),
            "time_embedding.linear_2.bias": r(hidden)}
    for i in range(depth):
        p = f"layers.{i}."
        proj |= {p + "0.norm1.weight": near_one(hidden), p + "0.norm1.bias": r(hidden), p + "0.norm2.weight": near_one(hidden),
                 p + "0.norm2.bias": r(hidden), p + "0.to_q.weight": r(inner, hidden), p + "0.to_kv.weight": r(2 * inner, hidden),
                 p + "0.to_out.weight": r(hidden, inner), p + "1.0.weight": near_one(hidden), p + "1.0.bias": r(hidden),
                 p + "1.1.weight": r(4 * hidden, hidden), p + "1.3.weight": r(hidden, 4 * hidden),
                 p + "2.1.weight": r(4 * hidden, hidden), p + "2.1.bias": r(4 * hidden)}
    head = width // heads
    per_block = {}
    for n in range(blocks):
        per_block |= {f"{n}.norm_ip.linear.weight": r(2 * width, hidden), f"{n}.norm_ip.linear.bias": r(2 * width),
                      f"{n}.to_k_ip.weight": r(width, width, s=width ** -0.5), f"{n}.to_v_ip.weight": r(width, width, s=width ** -0.5),
                      f"{n}.norm_q.weight": near_one(head), f"{n}.norm_k.weight": near_one(head), f"{n}.norm_ip_k.weight": near_one(head)}
    return {"image_proj": proj, "ip_adapter": per_block}
