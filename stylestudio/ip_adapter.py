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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .adapter_files import Groups, IPAdapterError, read_state_dict
from .image_projection import RESAMPLER_DIM_HEAD, norm_tokens, perceiver_resample, resampler_depth, resampler_keys
from .layers import Layer

_LAYER_KEY = re.compile(r"^(\d+)\.to_([kv])_ip\.weight$")
_STANDARD_KEYS = {"proj.weight", "proj.bias", "norm.weight", "norm.bias"}
#: The UNet families by the text-context width their cross-attention takes, for messages.
CONTEXT_FAMILIES = {768: "SD1.5", 1024: "SD2", 2048: "SDXL"}


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


def parse_ip_adapter(groups: Groups, name: str) -> IPAdapterWeights:
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
        depth = resampler_depth(proj)
        expected = resampler_keys(depth)
        inner = proj.get("layers.0.0.to_q.weight", torch.empty(0, 0)).shape[0]
        if depth == 0 or inner % RESAMPLER_DIM_HEAD:
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
            f"takes {sorted(model_dims)} ({', '.join(f'{dim}: {family}' for dim, family in CONTEXT_FAMILIES.items())}): they belong to different model families"
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


def style_tokens(weights: IPAdapterWeights, features: Tensor) -> Tensor:
    """Project a batch of reference images and join their tokens ``(1, images * tokens, context_dim)``: several images
    style together."""
    return project_image_features(weights, features).flatten(0, 1).unsqueeze(0)
