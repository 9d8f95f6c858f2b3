"""StyleStudio's cross-modal AdaIN and teacher on Flux-class DiTs, where text, style and image share one joint attention.

In a Flux block every token attends to ``[text tokens | Redux style tokens | image tokens]`` with one
softmax (the Redux tokens are appended to the text conditioning). For an image query the joint
output splits exactly by key group,

    J = w_C · A_C + w_X · A_X,     A_C = attn(q, K_text+style),  A_X = attn(q, K_image),

with ``w_C`` the softmax mass the query puts on the text+style keys and ``w_X = 1 - w_C``; and
``w_C · A_C = w_T · A_T + w_S · A_S`` is the *sum* of a text and a style branch, the shape IP-Adapter
has on UNets. Cross-modal AdaIN replaces that sum by the text branch carrying the style branch's
statistics, with the same total mass:

    styled = w_C · AdaIN(A_T, A_S) + w_X · A_X,   out = lerp(J, styled, strength)

(mean/std per sample and channel over the image tokens, as on UNets). Text queries are left alone.
The teacher hands the image→image part over: ``A_X = softmax(Q_t K_tᵀ/√d) · V`` with the teacher's
image queries/keys and the styled pass's own values, weighted by the styled pass's ``w_X``.

How it sits in ComfyUI: a "dit" block replace patch puts an ``optimized_attention_override`` into the
block's ``transformer_options`` for the length of the block, so the block's own code (and any other
pack's block patch it chains to) runs unchanged and only its attention call is rerouted; an override
already there is kept and used for every attention we compute. Which tokens are style tokens is
decided once per model call by a function wrapper that finds the node's own Redux tokens at the end of
each sample's context (see ``ReduxStyle``).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .adain import cross_modal_adain
from .dit_blocks import DiTBlock
from .patches import NEGATIVE, TEACHER_KEY, ChainedPatch, SigmaWindow, TeacherHandover

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]  # (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D) -> (B, H, Lq, D)
STYLE_KEY = "stylestudio_dit"


def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _merge_heads(x: Tensor) -> Tensor:
    return x.transpose(1, 2).flatten(2)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def cross_mass(q: Tensor, k: Tensor, cross_len: int, attend: Attend) -> Tensor:
    """``w_C``: the joint softmax's mass on the first ``cross_len`` keys, per query and head, shape ``(B, H, Lq, 1)``.

    Read off one fused attention call whose values are the group indicator (padded to the head width,
    which every kernel accepts), so the ``Lq × Lk`` map is never materialised.
    """
    indicator = torch.zeros(k.shape, dtype=q.dtype, device=q.device)
    indicator[:, :, :cross_len, 0] = 1
    return attend(q, k, indicator)[..., :1]


def styled_image_attention(q: Tensor, k: Tensor, v: Tensor, txt_len: int, n_style: int, styled: Tensor | None,
                           strength: float, attend: Attend = sdpa, teacher_qk: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The image queries' attention output ``(B, H, L_img, D)`` with AdaIN and/or the teacher's image→image map.

    ``q, k, v`` are ``(B, H, txt_len + L_img, D)`` with the text (last ``n_style`` of it: style) first;
    ``styled`` marks the samples whose last ``n_style`` text tokens are style tokens (``None``: all).
    """
    qi = q[:, :, txt_len:]
    w_cross = cross_mass(qi, k, txt_len, attend)
    cross = w_cross * attend(qi, k[:, :, :txt_len], v[:, :, :txt_len])
    if strength > 0 and 0 < n_style < txt_len:
        split = txt_len - n_style
        text = attend(qi, k[:, :, :split], v[:, :, :split])
        style = attend(qi, k[:, :, split:txt_len], v[:, :, split:txt_len])
        adain = _split_heads(cross_modal_adain(_merge_heads(text), _merge_heads(style)), q.shape[1])
        mixed = torch.lerp(cross, w_cross * adain, strength)
        cross = mixed if styled is None else torch.where(styled.view(-1, 1, 1, 1), mixed, cross)
    qx, kx = teacher_qk if teacher_qk is not None else (qi, k[:, :, txt_len:])
    return cross + (1 - w_cross) * attend(qx, kx, v[:, :, txt_len:])


@dataclass(frozen=True)
class StyleBatch:
    """Per model call: the context length and which samples end in ``n_style`` style tokens."""

    txt_len: int
    n_style: int
    styled: Tensor  # (B,) bool


@dataclass(eq=False)
class ReduxStyle:
    """The style tokens the node appended: positive, and negative (style-based CFG) when a negative image was given.

    Found again at sampling time by value at the end of each sample's context, because nothing else
    survives the trip: ComfyUI hands a Flux model only the concatenated context (conditioning options
    do not reach it), and positive and negative halves are batched together only when their lengths
    agree, which says nothing about which tokens are whose. Matching our own tokens exactly cannot
    mistake text, another pack's tokens or another Redux image for ours.
    """

    positive: Tensor  # (1, N, C)
    negative: Tensor | None = None
    copies: dict = field(default_factory=dict, init=False, repr=False)

    def _tokens(self, half: int, like: Tensor) -> Tensor | None:
        tokens = self.negative if half == NEGATIVE else self.positive
        if tokens is None:
            return None
        key = (half, like.device, like.dtype)
        if key not in self.copies:
            self.copies[key] = tokens[0].to(like.device, like.dtype)
        return self.copies[key]

    def find(self, context: Tensor, cond_or_uncond: list[int]) -> StyleBatch:
        """Which samples of ``context (B, L, C)`` end in their half's style tokens; one token count per call."""
        halves = cond_or_uncond or [0]
        per_chunk = context.shape[0] // len(halves)
        counts = []
        for index in range(context.shape[0]):
            tokens = self._tokens(halves[min(index // max(per_chunk, 1), len(halves) - 1)], context)
            found = tokens is not None and tokens.shape[0] < context.shape[1] and torch.equal(context[index, -tokens.shape[0]:], tokens)
            counts.append(tokens.shape[0] if found else 0)
        n_style = max(counts)
        styled = torch.tensor([count == n_style > 0 for count in counts], device=context.device)
        return StyleBatch(context.shape[1], n_style, styled)


class BlockAttention:
    """The ``optimized_attention_override`` one block runs with: reroutes its joint attention, chains any earlier override."""

    def __init__(self, block: DiTBlock, batch: StyleBatch, strength: float, handover: TeacherHandover | None,
                 previous: Callable | None) -> None:
        self.block, self.batch, self.strength, self.handover, self.previous = block, batch, strength, handover, previous

    def __call__(self, func: Callable, q: Tensor, k: Tensor, v: Tensor, heads: int, *args: Any, **kwargs: Any) -> Tensor:
        def inner(q_: Tensor, k_: Tensor, v_: Tensor, **overrides: Any) -> Tensor:
            call = {**kwargs, **overrides}
            if self.previous is not None:
                return self.previous(func, q_, k_, v_, heads, *args, **call)
            return func(q_, k_, v_, heads, *args, **call)

        txt_len = self.batch.txt_len
        if not kwargs.get("skip_reshape") or kwargs.get("mask") is not None or q.ndim != 4 or q.shape[2] <= txt_len:
            return inner(q, k, v)  # not Flux's joint attention, or a masked one (regional prompts): left as it is
        if self.handover is not None and self.handover.recording:
            self.handover.qk[self.block] = (q[:, :, txt_len:], k[:, :, txt_len:])
            return inner(q, k, v)
        teacher_qk = self.handover.qk.pop(self.block, None) if self.handover is not None else None
        attend = lambda q_, k_, v_: inner(q_, k_, v_, skip_output_reshape=True)
        text_rows = attend(q[:, :, :txt_len], k, v)
        image_rows = styled_image_attention(q, k, v, txt_len, self.batch.n_style, self.batch.styled, self.strength, attend, teacher_qk)
        out = torch.cat((text_rows, image_rows), dim=2)
        return out if kwargs.get("skip_output_reshape") else _merge_heads(out)


class DiTBlockPatch(ChainedPatch):
    """A "dit" double/single block replace patch: runs the block (or the patch it displaced) with ``BlockAttention``.

    ``strength`` is 0 on blocks that only take part in the teacher's hand-over.
    """

    def __init__(self, block: DiTBlock, strength: float, window: SigmaWindow, previous: Callable | None = None) -> None:
        self.block, self.strength, self.window, self.previous = block, strength, window, previous

    def __call__(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Tensor]:
        options = args.get("transformer_options") or {}
        batch, handover = options.get(STYLE_KEY), options.get(TEACHER_KEY)
        in_window = self.window.contains(options.get("sigmas"))
        adain = self.strength > 0 and in_window and batch is not None and batch.n_style > 0
        if batch is None or not (adain or handover is not None):
            return self._run(args, extra)
        override = BlockAttention(self.block, batch, self.strength if adain else 0.0, handover,
                                  options.get("optimized_attention_override"))
        return self._run({**args, "transformer_options": {**options, "optimized_attention_override": override}}, extra)

    def _run(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Tensor]:
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


class DiTStyleWrapper(ChainedPatch):
    """Model function wrapper: finds the style tokens of this call, and runs the text-only teacher pass while it is active.

    The teacher pass sees the same latent, sigma and conditioning with the style tokens cut off;
    every block records its image queries/keys, which the styled pass then uses for its image→image
    attention. A call that mixes styled and unstyled samples (only possible when their lengths
    happen to agree) or carries an attention mask runs without the teacher: the style tokens could
    not be cut from every sample alike.
    """

    def __init__(self, style: ReduxStyle, teacher_end_sigma: float | None, previous: Callable | None = None) -> None:
        self.style, self.teacher_end_sigma, self.previous = style, teacher_end_sigma, previous

    def __call__(self, apply_model: Callable, args: dict[str, Any]) -> Tensor:
        context = args["c"]["c_crossattn"]
        batch = self.style.find(context, args.get("cond_or_uncond") or [])
        teach = (self.teacher_end_sigma is not None and float(args["timestep"].max()) >= self.teacher_end_sigma
                 and batch.n_style > 0 and bool(batch.styled.all()) and "attention_mask" not in args["c"])
        if not teach:
            return self._run(apply_model, args, batch, None)
        record = TeacherHandover(recording=True)
        text_only = {**args, "c": {**args["c"], "c_crossattn": context[:, :batch.txt_len - batch.n_style]}}
        plain = StyleBatch(batch.txt_len - batch.n_style, 0, torch.zeros_like(batch.styled))
        self._run(apply_model, text_only, plain, record)
        return self._run(apply_model, args, batch, TeacherHandover(recording=False, qk=record.qk))

    def _run(self, apply_model: Callable, args: dict[str, Any], batch: StyleBatch, handover: TeacherHandover | None) -> Tensor:
        c = dict(args["c"])
        options = {**c.get("transformer_options", {}), STYLE_KEY: batch}
        if handover is not None:
            options[TEACHER_KEY] = handover
        c["transformer_options"] = options
        args = {**args, "c": c}
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])
