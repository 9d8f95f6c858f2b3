"""A stand-in for ComfyUI_IPAdapter_plus's attn2 patching, written from its observable behaviour (none of its code).

Facts reproduced (ComfyUI_IPAdapter_plus: ``Attn2Replace`` and ``set_model_patch_replace``):

* one collecting patch per key computes ``out = attention(q, k, v)`` and then, for every callback whose
  ``sigma_end <= sigma <= sigma_start``, ``out = out + callback(out, q, k, v, extra_options, **kwargs)``;
* applying copies the ``transformer_options`` / ``patches_replace`` / ``attn2`` dicts; when the key already holds a
  patch it calls ``.add(callback, **kwargs)`` on that patch in place, otherwise it stores a new collecting patch;
* keys: ``(block, id)`` on SD1.5, ``(block, id, transformer_index)`` on SDXL.

Used by the unit tests (with plain torch attention) and by the real-ComfyUI probes (with ComfyUI's attention).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor

Attention = Callable[..., Tensor]
IP_TOKENS = 3


class CollectingPatch:
    """IPAdapter_plus's attn2 replace patch: plain attention plus every added contribution."""

    def __init__(self, callback: Callable[..., Tensor], attention: Attention, **kwargs: Any) -> None:
        self.attention = attention
        self.callbacks = [(callback, kwargs)]

    def add(self, callback: Callable[..., Tensor], **kwargs: Any) -> None:
        self.callbacks.append((callback, kwargs))

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        out = self.attention(q, k, v, extra_options["n_heads"])
        sigma = float(extra_options["sigmas"][0]) if "sigmas" in extra_options else 1e9
        for callback, kwargs in self.callbacks:
            if kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out


class ImagePromptCallback:
    """An image-prompt contribution: ``weight * attention(q, K_ip, V_ip)`` with fixed tokens; counts its calls per layer."""

    def __init__(self, attention: Attention) -> None:
        self.attention = attention
        self.calls: Counter[Hashable] = Counter()

    def __deepcopy__(self, memo: dict) -> "ImagePromptCallback":
        return self  # IPAdapter_plus's callback is a function, which ModelPatcher.clone()'s deepcopy keeps as it is

    def tokens(self, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
        grid = torch.arange(IP_TOKENS * width, dtype=torch.float32).view(1, IP_TOKENS, width)
        keys, values = torch.sin(grid * 0.37), 2.0 * torch.cos(grid * 0.11)
        return keys.to(like.device, like.dtype), values.to(like.device, like.dtype)

    def __call__(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any],
                 weight: float = 1.0, **_: Any) -> Tensor:
        self.calls[(*extra_options["block"], extra_options.get("block_index", 0))] += 1
        keys, values = self.tokens(q.shape[-1], q)
        size = (q.shape[0], -1, -1)
        return weight * self.attention(q, keys.expand(size), values.expand(size), extra_options["n_heads"])


def apply_collecting_patch(transformer_options: dict, key: tuple, callback: Callable[..., Tensor], attention: Attention,
                           weight: float = 1.0, sigma_start: float = math.inf, sigma_end: float = 0.0) -> dict:
    """IPAdapter_plus's ``set_model_patch_replace`` on one key; returns the options the model should carry next."""
    kwargs = {"weight": weight, "sigma_start": sigma_start, "sigma_end": sigma_end}
    options = dict(transformer_options)
    options["patches_replace"] = dict(options.get("patches_replace", {}))
    attn2 = options["patches_replace"]["attn2"] = dict(options["patches_replace"].get("attn2", {}))
    if key in attn2:
        attn2[key].add(callback, **kwargs)
    else:
        attn2[key] = CollectingPatch(callback, attention, **kwargs)
    return options


def ipadapter_keys(layers: list[tuple[str, int, int]]) -> list[tuple]:
    """The keys IPAdapter_plus patches for a model: per block where each block holds one layer (SD1.5), else per layer."""
    per_block = Counter(layer[:2] for layer in layers)
    if all(count == 1 for count in per_block.values()):
        return list(dict.fromkeys(layer[:2] for layer in layers))
    return list(layers)


def comfy_lookup(attn2: dict, layer: tuple[str, int, int]) -> Any:
    """The patch ComfyUI's BasicTransformerBlock runs for a layer: the indexed key first, then the block key."""
    return attn2[layer] if layer in attn2 else attn2.get(layer[:2])
