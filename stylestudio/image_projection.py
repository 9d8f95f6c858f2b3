"""The image projections IP-Adapters share: layer-normed tokens, and the Perceiver "Resampler" with its one key description.

The Resampler of IP-Adapter Plus and CSGO (SD1.5/SDXL) and InstantX's SD3.5 one (the same network, conditioned on the
timestep) share their keys: ``latents``, ``proj_in``, ``proj_out``, ``norm_out`` and per layer ``layers.i.0.*``
(attention) and ``layers.i.1.*`` (feed-forward); SD3.5 adds ``time_embedding.*`` and ``layers.i.2.1`` (the time
modulation). Every released Resampler uses 64-d heads.
"""

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import merge_heads, sdpa, split_heads

RESAMPLER_TOP_KEYS = frozenset({"latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias",
                                "norm_out.weight", "norm_out.bias"})
RESAMPLER_LAYER_KEYS = frozenset({"0.norm1.weight", "0.norm1.bias", "0.norm2.weight", "0.norm2.bias", "0.to_q.weight",
                                  "0.to_kv.weight", "0.to_out.weight", "1.0.weight", "1.0.bias", "1.1.weight", "1.3.weight"})
RESAMPLER_DIM_HEAD = 64  # every released Resampler (Plus SD1.5/SDXL, CSGO, InstantX SD3.5) uses 64-d heads
_LN_EPS = 1e-5


def resampler_depth(proj: Iterable[str]) -> int:
    """How many ``layers.i`` a Resampler's keys hold."""
    return len({key.split(".")[1] for key in proj if key.startswith("layers.")})


def resampler_keys(depth: int, top: Iterable[str] = (), per_layer: Iterable[str] = ()) -> set[str]:
    """Every key a Resampler of ``depth`` layers has, with a variant's extra ``top`` and ``per_layer`` keys."""
    layer_keys = RESAMPLER_LAYER_KEYS | set(per_layer)
    return set(RESAMPLER_TOP_KEYS) | set(top) | {f"layers.{i}.{key}" for i in range(depth) for key in layer_keys}


def norm_tokens(flat: Tensor, norm_weight: Tensor, norm_bias: Tensor) -> Tensor:
    """``(images, N * C)`` -> ``(images, N, C)`` layer-normed tokens: how every linear or MLP image projection ends."""
    width = norm_weight.shape[0]
    return F.layer_norm(flat.reshape(flat.shape[0], -1, width), (width,), norm_weight, norm_bias, _LN_EPS)


def perceiver_resample(p: dict[str, Tensor], x: Tensor, time_emb: Tensor | None = None) -> Tensor:
    """Perceiver resampler: learned queries cross-attend to the image patches and to themselves.

    With ``time_emb`` ``(batch, width)`` it is SD3.5's timestep-conditioned Resampler (InstantX): the
    embedding is added to the projected patches, and each layer modulates its queries and its
    feed-forward input with a shift/scale it projects from the embedding (``layers.i.2.1``).
    """
    x = F.linear(x, p["proj_in.weight"], p["proj_in.bias"])
    if time_emb is not None:
        x = x + time_emb[:, None]
    latents = p["latents"].expand(x.shape[0], -1, -1)
    width = latents.shape[-1]
    for i in range(resampler_depth(p)):
        w = {k[len(f"layers.{i}."):]: v for k, v in p.items() if k.startswith(f"layers.{i}.")}
        modulate = _time_modulation(w, time_emb)
        media = F.layer_norm(x, (width,), w["0.norm1.weight"], w["0.norm1.bias"], _LN_EPS)
        queries = modulate(F.layer_norm(latents, (width,), w["0.norm2.weight"], w["0.norm2.bias"], _LN_EPS), 0)
        q = F.linear(queries, w["0.to_q.weight"])
        k, v = F.linear(torch.cat([media, queries], dim=1), w["0.to_kv.weight"]).chunk(2, dim=-1)
        heads = (split_heads(t, head_dim=RESAMPLER_DIM_HEAD) for t in (q, k, v))
        latents = latents + F.linear(merge_heads(sdpa(*heads)), w["0.to_out.weight"])
        hidden = modulate(F.layer_norm(latents, (width,), w["1.0.weight"], w["1.0.bias"], _LN_EPS), 1)
        latents = latents + F.linear(F.gelu(F.linear(hidden, w["1.1.weight"])), w["1.3.weight"])
    out = F.linear(latents, p["proj_out.weight"], p["proj_out.bias"])
    return F.layer_norm(out, (out.shape[-1],), p["norm_out.weight"], p["norm_out.bias"], _LN_EPS)


def _time_modulation(w: dict[str, Tensor], time_emb: Tensor | None) -> Callable[[Tensor, int], Tensor]:
    """``modulate(x, part)``: ``x · (1 + scale) + shift`` with part 0 (attention queries) or 1 (feed-forward);
    the identity without a time embedding."""
    if time_emb is None:
        return lambda x, part: x
    shift_attn, scale_attn, shift_ff, scale_ff = F.linear(F.silu(time_emb), w["2.1.weight"], w["2.1.bias"]).chunk(4, dim=-1)
    pairs = ((shift_attn, scale_attn), (shift_ff, scale_ff))
    return lambda x, part: torch.addcmul(pairs[part][0][:, None], x, 1 + pairs[part][1][:, None])
