"""ComfyUI attention patches for StyleStudio, as plain callables on already-projected q/k/v.

ComfyUI calls an attn1/attn2 replace patch as ``patch(q, k, v, extra_options)`` with tensors of
shape ``(batch, tokens, heads * dim_head)`` and puts the result through ``to_out`` itself. The
batch is ``len(extra_options["cond_or_uncond"])`` equal chunks, 0 = positive, 1 = negative.

Every patch chains to the replace patch it displaces (``previous``), so other attention
patches keep working, and is immutable: ``__deepcopy__`` returns ``self`` because ComfyUI
deep-copies ``model_options`` on every ``ModelPatcher.clone()`` and the style keys/values need
not be duplicated each time. Per-call state (the teacher hand-over) travels in
``transformer_options`` instead.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .adain import cross_modal_adain
from .layers import Layer

AttentionFn = Callable[..., Tensor]
ReplacePatch = Callable[[Tensor, Tensor, Tensor, dict[str, Any]], Tensor]

TEACHER_KEY = "stylestudio_teacher"
NEGATIVE = 1  # ComfyUI's index for the uncond half in cond_or_uncond


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, attn_precision: torch.dtype | None = None) -> Tensor:
    """Multi-head attention in ComfyUI's ``(batch, tokens, heads * dim_head)`` layout."""
    dtype = q.dtype
    if attn_precision == torch.float32:
        q, k, v = q.float(), k.float(), v.float()
    split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).flatten(2).to(dtype)


def _attend(previous: ReplacePatch | None, attention: AttentionFn,
            q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
    if previous is not None:
        return previous(q, k, v, extra_options)
    return attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"))


@dataclass(frozen=True)
class SigmaWindow:
    """Active while ``low <= sigma <= high`` (ComfyUI's start/end percent turned into sigmas)."""

    high: float
    low: float

    def contains(self, sigmas: Tensor | None) -> bool:
        if sigmas is None:
            return True
        sigma = float(sigmas.max())
        return self.low <= sigma <= self.high


@dataclass(frozen=True, eq=False)
class StyleKV:
    """One layer's style keys/values ``(1, tokens, inner_dim)`` for the positive and negative halves."""

    k_pos: Tensor
    v_pos: Tensor
    k_neg: Tensor
    v_neg: Tensor

    def for_half(self, cond_or_uncond: int, like: Tensor) -> tuple[Tensor, Tensor]:
        k, v = (self.k_neg, self.v_neg) if cond_or_uncond == NEGATIVE else (self.k_pos, self.v_pos)
        return k.to(like.device, like.dtype), v.to(like.device, like.dtype)


@dataclass
class TeacherHandover:
    """Teacher queries/keys per self-attention layer: recorded in the text-only pass, consumed by the styled one."""

    recording: bool
    qk: dict[Layer, tuple[Tensor, Tensor]] = field(default_factory=dict)


class CrossAdaINPatch:
    """attn2 replace patch: ``lerp(T, AdaIN(T, I), strength)`` with ``T`` the text and ``I`` the style-token attention."""

    def __init__(self, style: StyleKV, strength: float, window: SigmaWindow,
                 previous: ReplacePatch | None = None, attention: AttentionFn = sdpa_attention) -> None:
        self.style, self.strength, self.window = style, strength, window
        self.previous, self.attention = previous, attention

    def __deepcopy__(self, memo: dict) -> "CrossAdaINPatch":
        return self

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        text = _attend(self.previous, self.attention, q, k, v, extra_options)
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


class TeacherAttn1Patch:
    """attn1 replace patch: in the styled pass use the teacher's map ``softmax(Q_t K_tᵀ/√d)`` with the styled pass's own V.

    Hands over ``(Q_t, K_t)`` instead of the map itself: the result is the same product, but
    it costs ``O(tokens·channels)`` per layer instead of ``O(heads·tokens²)`` (11.8 GB → 0.84 GB in
    fp16 for all SDXL self-attention layers at 1024², batch 1 with CFG), and the styled pass
    keeps using the fused attention kernel.
    """

    def __init__(self, previous: ReplacePatch | None = None, attention: AttentionFn = sdpa_attention) -> None:
        self.previous, self.attention = previous, attention

    def __deepcopy__(self, memo: dict) -> "TeacherAttn1Patch":
        return self

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        handover = extra_options.get(TEACHER_KEY)
        if handover is not None:
            block = extra_options["block"]
            layer = (block[0], block[1], extra_options["block_index"])
            if handover.recording:
                handover.qk[layer] = (q, k)
            elif layer in handover.qk:
                q, k = handover.qk.pop(layer)
        return _attend(self.previous, self.attention, q, k, v, extra_options)


class TeacherWrapper:
    """UNet function wrapper: while the teacher is active, run a text-only pass first and hand its self-attention over.

    The teacher pass sees the same latent, sigma and conditioning (ControlNet included) but
    no style. StyleStudio's teacher follows its own trajectory from the same noise; here it
    re-starts from the styled latent at every step, which needs no second sampler state and
    matches it exactly at the first step.
    """

    def __init__(self, end_sigma: float, previous: Callable | None = None) -> None:
        self.end_sigma, self.previous = end_sigma, previous

    def __deepcopy__(self, memo: dict) -> "TeacherWrapper":
        return self

    def __call__(self, apply_model: Callable, args: dict[str, Any]) -> Tensor:
        if float(args["timestep"].max()) < self.end_sigma:
            return self._run(apply_model, args)
        record = TeacherHandover(recording=True)
        self._run(apply_model, _with_handover(args, record))
        return self._run(apply_model, _with_handover(args, TeacherHandover(recording=False, qk=record.qk)))

    def _run(self, apply_model: Callable, args: dict[str, Any]) -> Tensor:
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])


def _with_handover(args: dict[str, Any], handover: TeacherHandover) -> dict[str, Any]:
    c = dict(args["c"])
    c["transformer_options"] = {**c.get("transformer_options", {}), TEACHER_KEY: handover}
    return {**args, "c": c}
