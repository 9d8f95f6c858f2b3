"""ComfyUI attention patches for StyleStudio on SD1.5/SDXL UNets, as plain callables on already-projected q/k/v.

ComfyUI calls an attn1/attn2 replace patch as ``patch(q, k, v, extra_options)`` with tensors of
shape ``(batch, tokens, heads * dim_head)`` and puts the result through ``to_out`` itself. The
batch is ``len(extra_options["cond_or_uncond"])`` equal chunks, 0 = positive, 1 = negative.

Living beside other packs' patches:

* every patch chains to the replace patch (or UNet wrapper) it displaces, ``previous``, and passes
  on ComfyUI's ``.to(device)`` / ``.to(dtype)`` calls to it;
* the attn2 patch also takes part in the collecting convention of ComfyUI_IPAdapter_plus: a pack
  applied later that finds our patch on its key calls ``add(callback, **kwargs)`` instead of
  replacing it. Chained or collected, other packs' contributions join the text branch before
  AdaIN, so the order in which the packs were applied does not change the result;
* ComfyUI deep-copies ``model_options`` on every ``ModelPatcher.clone()``. A copy shares the style
  keys/values (and their per-device copies) but gets its own list of collected callbacks, so a
  pack adding to the clone it made leaves the model it was given unchanged. Per-call state (the
  teacher hand-over) travels in ``transformer_options``.

What the DiT side shares with these patches (the sigma window, the chaining base, the teacher's hand-over)
lives in ``hooks``; the attention arithmetic in ``attention``.
"""

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .adain import cross_modal_adain
from .attention import sdpa_attention
from .hooks import NEGATIVE, TEACHER_KEY, ChainedPatch, SigmaWindow, call_model, run_teacher_then_styled

AttentionFn = Callable[..., Tensor]
ReplacePatch = Callable[[Tensor, Tensor, Tensor, dict[str, Any]], Tensor]


def attend_or_chain(previous: ReplacePatch | None, attention: AttentionFn,
                    q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
    """The patch this one displaced (another pack's, chained), or plain attention where there was none."""
    if previous is not None:
        return previous(q, k, v, extra_options)
    return attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))


@dataclass(frozen=True, eq=False)
class StyleKV:
    """One layer's style keys/values ``(1, tokens, inner_dim)`` for the positive and negative halves.

    Attention runs on the UNet's device and dtype; the copies made there are kept per
    ``(device, dtype)``, so a sampling step attends without copying from the CPU again, and halves
    that share a tensor (no negative style image) share its copy.
    """

    k_pos: Tensor
    v_pos: Tensor
    k_neg: Tensor
    v_neg: Tensor
    copies: dict[tuple[torch.device, torch.dtype], tuple[Tensor, ...]] = field(default_factory=dict, init=False, repr=False)

    def for_half(self, cond_or_uncond: int, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (like.device, like.dtype)
        if key not in self.copies:
            moved: dict[int, Tensor] = {}  # without a negative image the halves share tensors: one copy each
            for t in (self.k_pos, self.v_pos, self.k_neg, self.v_neg):
                if id(t) not in moved:
                    moved[id(t)] = t.to(like.device, like.dtype)
            self.copies[key] = tuple(moved[id(t)] for t in (self.k_pos, self.v_pos, self.k_neg, self.v_neg))
        k_pos, v_pos, k_neg, v_neg = self.copies[key]
        return (k_neg, v_neg) if cond_or_uncond == NEGATIVE else (k_pos, v_pos)

    def keep_only(self, device: torch.device) -> None:
        """Drop the copies on other devices: ComfyUI moved the model (to the offload device when it unloads it)."""
        for key in [key for key in self.copies if key[0] != device]:
            del self.copies[key]


def style_kv(layer_weights: tuple[Tensor, Tensor], positive: Tensor, negative: Tensor) -> StyleKV:
    """Project both token sets once with the layer's to_k_ip / to_v_ip, so sampling steps only attend."""
    k, v = (w.float() for w in layer_weights)
    return StyleKV(F.linear(positive, k), F.linear(positive, v), F.linear(negative, k), F.linear(negative, v))


class CollectingPatch(ChainedPatch):
    """Base of our attn2 patches: the layer's own output is the displaced patch (or plain attention) plus every
    contribution a pack applied later handed over with ``add`` (the convention of ComfyUI_IPAdapter_plus)."""

    def __init__(self, previous: ReplacePatch | None = None, attention: AttentionFn = sdpa_attention) -> None:
        self.previous, self.attention = previous, attention
        self.collected: list[tuple[Callable[..., Tensor], dict[str, Any]]] = []

    def __deepcopy__(self, memo: dict) -> "CollectingPatch":
        twin = copy.copy(self)
        twin.collected = list(self.collected)
        return twin

    def add(self, callback: Callable[..., Tensor], **kwargs: Any) -> None:
        """IPAdapter_plus's convention: ``out += callback(out, q, k, v, extra_options, **kwargs)`` while
        ``kwargs["sigma_end"] <= sigma <= kwargs["sigma_start"]``."""
        self.collected.append((callback, kwargs))

    def text_attention(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        """The layer's own output: the displaced patch (or plain attention) plus every collected contribution."""
        out = attend_or_chain(self.previous, self.attention, q, k, v, extra_options)
        sigmas = extra_options.get("sigmas")
        for callback, kwargs in self.collected:
            window = SigmaWindow(high=kwargs.get("sigma_start", math.inf), low=kwargs.get("sigma_end", -math.inf))
            if window.contains(sigmas):
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out


class CrossAdaINPatch(CollectingPatch):
    """attn2 replace patch: ``lerp(T, AdaIN(T, I), strength)`` with ``T`` the text and ``I`` the style-token attention.

    ``T`` includes what other packs add on this layer, whether they were applied before ours
    (``previous``) or after it (``add``).
    """

    def __init__(self, style: StyleKV, strength: float, window: SigmaWindow,
                 previous: ReplacePatch | None = None, attention: AttentionFn = sdpa_attention) -> None:
        super().__init__(previous, attention)
        self.style, self.strength, self.window = style, strength, window

    def set_new_condition(self, **kwargs: Any) -> None:
        """The convention of ComfyUI_IPAdapter_plus before May 2024: it hands over data that only its own patch can use."""
        raise TypeError(
            "This ComfyUI_IPAdapter_plus version (from before May 2024) can only add to its own attention patch, and "
            "StyleStudio Cross-Modal AdaIN already patches this layer: apply the IPAdapter node before StyleStudio, "
            "or update ComfyUI_IPAdapter_plus."
        )

    def to(self, device_or_dtype: torch.device | torch.dtype) -> ChainedPatch:
        if isinstance(device_or_dtype, torch.device):
            self.style.keep_only(device_or_dtype)
        return super().to(device_or_dtype)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        text = self.text_attention(q, k, v, extra_options)
        handover = extra_options.get(TEACHER_KEY)
        if self.strength == 0.0 or (handover is not None and handover.recording) or not self.window.contains(extra_options.get("sigmas")):
            return text
        return cross_modal_adain(text, self.style_attention(q, extra_options), self.strength)

    def style_attention(self, q: Tensor, extra_options: dict[str, Any]) -> Tensor:
        """Attend each CFG chunk to its own style tokens: positive style or negative style."""
        halves = extra_options.get("cond_or_uncond") or [0]
        heads, precision = extra_options["n_heads"], extra_options.get("attn_precision")
        outs = []
        for half, chunk in zip(halves, q.chunk(len(halves))):
            k_ip, v_ip = self.style.for_half(half, chunk)
            size = (chunk.shape[0], -1, -1)
            outs.append(self.attention(chunk, k_ip.expand(size), v_ip.expand(size), heads, attn_precision=precision))
        return torch.cat(outs)


class TeacherAttn1Patch(ChainedPatch):
    """attn1 replace patch: in the styled pass use the teacher's map ``softmax(Q_t K_tᵀ/√d)`` with the styled pass's own V.

    Hands over ``(Q_t, K_t)`` instead of the map itself: the result is the same product, but
    it costs ``O(tokens·channels)`` per layer instead of ``O(heads·tokens²)`` (11.8 GB → 0.84 GB in
    fp16 for all SDXL self-attention layers at 1024², batch 1 with CFG), and the styled pass
    keeps using the fused attention kernel.
    """

    def __init__(self, previous: ReplacePatch | None = None, attention: AttentionFn = sdpa_attention) -> None:
        self.previous, self.attention = previous, attention

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        handover = extra_options.get(TEACHER_KEY)
        if handover is not None:
            block = extra_options["block"]
            layer = (block[0], block[1], extra_options["block_index"])
            if handover.recording:
                handover.qk[layer] = (q, k)
            elif layer in handover.qk:
                q, k = handover.qk.pop(layer)
        return attend_or_chain(self.previous, self.attention, q, k, v, extra_options)


class TeacherWrapper(ChainedPatch):
    """UNet function wrapper: while the teacher is active, run a text-only pass first and hand its self-attention over.

    The teacher pass sees the same latent, sigma and conditioning (ControlNet included) but
    no style. StyleStudio's teacher follows its own trajectory from the same noise; here it
    re-starts from the styled latent at every step, which needs no second sampler state and
    matches it exactly at the first step.
    """

    def __init__(self, end_sigma: float, previous: Callable | None = None) -> None:
        self.end_sigma, self.previous = end_sigma, previous

    def __call__(self, apply_model: Callable, args: dict[str, Any]) -> Tensor:
        if float(args["timestep"].max()) < self.end_sigma:
            return call_model(self.previous, apply_model, args, {})
        return run_teacher_then_styled(lambda handover: call_model(self.previous, apply_model, args, {TEACHER_KEY: handover}))
