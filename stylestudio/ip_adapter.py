"""IP-Adapter files: read, recognise the layout, and turn CLIP-vision features into style keys/values.

Supported layouts (facts from the IP-Adapter and CSGO releases):
  * standard: ``image_proj.{proj,norm}.*`` projects CLIP ``image_embeds`` to a few tokens;
  * Plus: ``image_proj.latents`` + Perceiver ``layers.*`` (the "Resampler") over CLIP's
    penultimate hidden states;
  * CSGO (the adapter StyleStudio uses): ``style_image_proj.*`` (either of the above) next to
    ``content_image_proj.*``; its style weights live in the up blocks, content in the down blocks.
Per-layer weights are ``ip_adapter.{n}.to_k_ip.weight`` / ``to_v_ip.weight`` where ``n`` is the
layer's position among diffusers' attention processors (attn1 even, attn2 odd; down, up, mid).
"""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import PackError
from .layers import Layer

_LAYER_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
_STANDARD_KEYS = {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
_RESAMPLER_TOP_KEYS = {"latents", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias",
                       "norm_out.weight", "norm_out.bias"}
_RESAMPLER_LAYER_KEYS = {"0.norm1.weight", "0.norm1.bias", "0.norm2.weight", "0.norm2.bias", "0.to_q.weight",
                         "0.to_kv.weight", "0.to_out.weight", "1.0.weight", "1.0.bias", "1.1.weight", "1.3.weight"}
_RESAMPLER_DIM_HEAD = 64  # every released Resampler (Plus SD1.5/SDXL, CSGO) uses 64-d heads
_LN_EPS = 1e-5


class IPAdapterError(PackError, ValueError):
    """An IP-Adapter file that cannot be used, or one that does not fit the model / CLIP vision."""


@dataclass(frozen=True)
class IPAdapterWeights:
    """The parts of an IP-Adapter file StyleStudio needs, validated."""

    name: str
    kind: str  # "standard", "plus" or "csgo"
    image_proj: dict[str, Tensor]
    layers: dict[int, tuple[Tensor, Tensor]]  # processor index -> (to_k_ip, to_v_ip)

    @property
    def uses_hidden_states(self) -> bool:
        """Resampler projections read CLIP's penultimate hidden states, the others ``image_embeds``."""
        return "latents" in self.image_proj

    @property
    def feature_dim(self) -> int:
        key = "proj_in.weight" if self.uses_hidden_states else "proj.weight"
        return self.image_proj[key].shape[1]

    @property
    def context_dim(self) -> int:
        return next(iter(self.layers.values()))[0].shape[1]


def read_state_dict(path: str) -> dict[str, dict[str, Tensor]]:
    """Read ``.safetensors`` (flat, prefixed keys) or ``.bin``/``.pt`` (nested or flat) into ``{group: {key: tensor}}``."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise IPAdapterError(f"IP-Adapter file not found: {path}")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            raw = load_file(path, device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # every reader failure means the same thing to the user
        raise IPAdapterError(f"Cannot read IP-Adapter file {name!r}: {error}") from error
    if not isinstance(raw, dict):
        raise IPAdapterError(f"IP-Adapter file {name!r} holds a {type(raw).__name__}, not a state dict")
    groups: dict[str, dict[str, Tensor]] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            groups.setdefault(str(key), {}).update({str(k): v for k, v in value.items() if isinstance(v, Tensor)})
        elif isinstance(value, Tensor) and "." in str(key):
            group, rest = str(key).split(".", 1)
            groups.setdefault(group, {})[rest] = value
    return groups


def parse_ip_adapter(groups: dict[str, dict[str, Tensor]], name: str) -> IPAdapterWeights:
    """Recognise the layout and check every shape the projection and the patches rely on."""
    if "style_image_proj" in groups:
        kind, proj = "csgo", groups["style_image_proj"]
    elif "image_proj" in groups:
        proj = groups["image_proj"]
        kind = "plus" if "latents" in proj else "standard"
    else:
        raise IPAdapterError(
            f"{name!r} is not an IP-Adapter: it has no 'image_proj' or 'style_image_proj' weights "
            f"(top-level groups: {sorted(groups)[:8]})"
        )
    _check_projection(proj, name)
    layers = _parse_layers(groups.get("ip_adapter", {}), name)
    out_dim = proj["proj_out.weight"].shape[0] if "latents" in proj else proj["norm.weight"].shape[0]
    context_dims = {k.shape[1] for k, _ in layers.values()}
    if context_dims != {out_dim}:
        raise IPAdapterError(f"{name!r}: image projection gives {out_dim}-d tokens but to_k_ip layers take {sorted(context_dims)}")
    return IPAdapterWeights(name=name, kind=kind, image_proj=proj, layers=layers)


def load_ip_adapter(path: str) -> IPAdapterWeights:
    """Read and validate an IP-Adapter file (tensors only: ``torch.load(weights_only=True)``)."""
    return parse_ip_adapter(read_state_dict(path), os.path.basename(path))


def _check_projection(proj: dict[str, Tensor], name: str) -> None:
    if "latents" in proj:
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        expected = _RESAMPLER_TOP_KEYS | {f"layers.{i}.{k}" for i in range(depth) for k in _RESAMPLER_LAYER_KEYS}
        inner = proj.get("layers.0.0.to_q.weight", torch.empty(0, 0)).shape[0]
        if depth == 0 or inner % _RESAMPLER_DIM_HEAD:
            raise IPAdapterError(f"{name!r}: Resampler projection with {depth} layers and {inner}-d attention is not supported")
    else:
        expected = _STANDARD_KEYS
    if set(proj) != expected:
        odd = sorted(set(proj) ^ expected)[:6]
        raise IPAdapterError(
            f"{name!r}: unsupported image projection (keys differ from standard/Plus/CSGO IP-Adapters: {odd}); "
            f"FaceID, full-face (MLP) and other variants are not supported"
        )
    if "latents" not in proj and proj["proj.weight"].shape[0] % proj["norm.weight"].shape[0]:
        raise IPAdapterError(f"{name!r}: proj output {proj['proj.weight'].shape[0]} is not a multiple of the token size")


def _parse_layers(group: dict[str, Tensor], name: str) -> dict[int, tuple[Tensor, Tensor]]:
    halves: dict[int, dict[str, Tensor]] = {}
    for key, tensor in group.items():
        match = _LAYER_KEY.match(key)
        if match is None:
            raise IPAdapterError(f"{name!r}: unsupported per-layer weight 'ip_adapter.{key}' (only to_k_ip / to_v_ip are supported)")
        halves.setdefault(int(match[1]), {})[match[2]] = tensor
    if not halves:
        raise IPAdapterError(f"{name!r} has no 'ip_adapter.N.to_k_ip.weight' layers")
    layers = {}
    for index, pair in sorted(halves.items()):
        if set(pair) != {"k", "v"}:
            raise IPAdapterError(f"{name!r}: layer {index} has to_{''.join(pair)}_ip but not both to_k_ip and to_v_ip")
        if pair["k"].ndim != 2 or pair["k"].shape != pair["v"].shape:
            shapes = f"to_k_ip {tuple(pair['k'].shape)} / to_v_ip {tuple(pair['v'].shape)}"
            raise IPAdapterError(f"{name!r}: layer {index} {shapes} are not matching matrices")
        layers[index] = (pair["k"], pair["v"])
    return layers


def weights_per_layer(weights: IPAdapterWeights, model_layers: dict[Layer, tuple[int, int]]) -> dict[Layer, tuple[Tensor, Tensor]]:
    """Assign the adapter's per-layer weights to the model's attn2 layers, or say why they do not fit.

    Diffusers numbers attention processors down blocks, up blocks, mid block; ComfyUI's blocks
    are input, middle, output, so the i-th cross-attention layer in (input, output, middle) order
    is processor ``2 i + 1``.
    """
    ordered = [l for part in ("input", "output", "middle") for l in model_layers if l[0] == part]
    model_dims = {dims[1] for dims in model_layers.values()}
    if weights.context_dim not in model_dims:
        raise IPAdapterError(
            f"IP-Adapter {weights.name!r} is for {weights.context_dim}-d text context, but the model's cross-attention "
            f"takes {sorted(model_dims)} (768: SD1.5, 1024: SD2, 2048: SDXL): they belong to different model families"
        )
    by_index = {2 * i + 1: layer for i, layer in enumerate(ordered)}
    if weights.kind == "csgo":
        unknown = sorted(set(weights.layers) - set(by_index))
    else:
        unknown = sorted(set(weights.layers) ^ set(by_index))
    if unknown:
        raise IPAdapterError(
            f"IP-Adapter {weights.name!r} has {len(weights.layers)} cross-attention layers, the model has {len(ordered)}: "
            f"they belong to different model families"
        )
    assigned = {}
    for index, (k, v) in weights.layers.items():
        layer = by_index[index]
        if weights.kind == "csgo" and layer[0] != "output":
            continue  # CSGO's down-block weights belong to its content branch
        if k.shape[0] != model_layers[layer][0]:
            raise IPAdapterError(
                f"IP-Adapter {weights.name!r}: layer {layer} gives {k.shape[0]} channels, the model's has {model_layers[layer][0]}"
            )
        assigned[layer] = (k, v)
    return assigned


def project_image_features(weights: IPAdapterWeights, features: Tensor) -> Tensor:
    """CLIP-vision features -> style tokens ``(images, tokens, context_dim)``.

    ``features`` is ``image_embeds`` ``(images, dim)`` for standard projections and the
    penultimate hidden states ``(images, patches, dim)`` for Resampler ones.
    """
    which = "penultimate hidden states" if weights.uses_hidden_states else "image embeddings"
    expected_ndim = 3 if weights.uses_hidden_states else 2
    if features.ndim != expected_ndim or features.shape[-1] != weights.feature_dim:
        raise IPAdapterError(
            f"CLIP vision model gives {which} of shape {tuple(features.shape)}, but IP-Adapter {weights.name!r} expects "
            f"{weights.feature_dim}-d {which}: load the CLIP vision model this adapter was trained with "
            f"(ViT-H: 1024-d embeds / 1280-d hidden; ViT-bigG: 1280-d embeds / 1664-d hidden)"
        )
    p = {k: v.to(features.device, torch.float32) for k, v in weights.image_proj.items()}
    x = features.float()
    if not weights.uses_hidden_states:
        return norm_tokens(F.linear(x, p["proj.weight"], p["proj.bias"]), p["norm.weight"], p["norm.bias"])
    return perceiver_resample(p, x)


def rms_norm(x: Tensor, eps: float, weight: Tensor | None = None) -> Tensor:
    """RMSNorm over the last dim (per head, where the DiT adapters normalise keys/values), with an optional weight."""
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return normed if weight is None else normed * weight


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
    depth = len({k.split(".")[1] for k in p if k.startswith("layers.")})
    x = F.linear(x, p["proj_in.weight"], p["proj_in.bias"])
    if time_emb is not None:
        x = x + time_emb[:, None]
    latents = p["latents"].expand(x.shape[0], -1, -1)
    width = latents.shape[-1]
    for i in range(depth):
        w = {k[len(f"layers.{i}."):]: v for k, v in p.items() if k.startswith(f"layers.{i}.")}
        modulate = _time_modulation(w, time_emb)
        media = F.layer_norm(x, (width,), w["0.norm1.weight"], w["0.norm1.bias"], _LN_EPS)
        queries = modulate(F.layer_norm(latents, (width,), w["0.norm2.weight"], w["0.norm2.bias"], _LN_EPS), 0)
        q = F.linear(queries, w["0.to_q.weight"])
        k, v = F.linear(torch.cat([media, queries], dim=1), w["0.to_kv.weight"]).chunk(2, dim=-1)
        heads = q.shape[-1] // _RESAMPLER_DIM_HEAD
        split = lambda t: t.unflatten(-1, (heads, _RESAMPLER_DIM_HEAD)).transpose(1, 2)
        attended = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)
        latents = latents + F.linear(attended, w["0.to_out.weight"])
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
