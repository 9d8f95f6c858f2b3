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

An IP-Adapter brings its style keys/values from outside the joint attention instead: per block a
callable gives ``K_ip, V_ip`` (``ImageBranch``), and the plain adapter adds ``A_ip = attn(q, K_ip, V_ip)``
for the image queries, taken *before* the rotary embedding (which ``unrope`` undoes exactly: it is a
rotation). Where the adapter adds it differs (``ATTENTION``: to the attention output, before the block's
projection, InstantX; ``RESIDUAL``: to the image stream after the block, XLabs). Cross-modal AdaIN
then reads

    styled = w_C · AdaIN(A_C, A_ip) + w_X · A_X,    out = lerp(untouched, styled, strength)

for both places at once: the attention output is lerped from ``J (+ A_ip)`` to ``styled`` and the
residual add fades with ``1 - strength``. The teacher's text-only pass is the pass without the branch.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .adain import cross_modal_adain
from .attention import Attend, merge_heads, sdpa, split_heads
from .dit_blocks import DiTBlock
from .hooks import NEGATIVE, TEACHER_KEY, ChainedPatch, SigmaWindow, TeacherHandover, call_model, run_teacher_then_styled
from .tensor_group import TensorGroup

ImageKV = Callable[[int, slice, dict[str, Any], Tensor], tuple[Tensor, Tensor]]
"""``(half, rows, block_args, like) -> (K_ip, V_ip)``, each ``(1 or rows, N, heads * D)`` on ``like``'s device and dtype:
the style keys/values of one block for the CFG half ``half`` (0 positive, 1 negative) and the batch rows ``rows``
of that half, given the block's replace-patch args (``vec``, ``pe``, ...)."""
BranchCombine = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Attend], tuple[Tensor, Tensor]]
"""``(q, k, v, K_ip, V_ip, attend) -> (added, style)``, all ``(B, H, L, D)``: an adapter's own branch for the query rows it
serves, given those rows' queries/keys/values as the block attends with them (InstantX SD3.5: adapter-normed queries over
the image's own keys and the IP keys); ``added`` is what the plain adapter adds, ``style`` the AdaIN statistics' source."""
STYLE_KEY = "stylestudio_dit"
ATTENTION, RESIDUAL = "attention", "residual"  # where an adapter adds its branch


def unrope(x: Tensor, pe: Tensor | None) -> Tensor:
    """Undo Flux's rotary embedding on ``x (B, H, L, D)`` whose rows sit where ``pe (B|1, 1, L, D/2, 2, 2)`` says.

    ComfyUI rotates each channel pair by ``pe[..., i, :, :]``, an orthogonal 2×2 matrix, in ``pe``'s
    dtype; its transpose takes the pair back, exact up to that dtype's rounding. ``pe`` None: no RoPE.
    """
    if pe is None:
        return x
    pairs = x.to(pe.dtype).unflatten(-1, (-1, 2))
    return (pe[..., 0, :] * pairs[..., :1] + pe[..., 1, :] * pairs[..., 1:]).flatten(-2).type_as(x)


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
        mixed = torch.lerp(cross, w_cross * _adain_heads(text, style), strength)
        cross = mixed if styled is None else torch.where(styled.view(-1, 1, 1, 1), mixed, cross)
    return cross + _image_to_image(qi, k, v, txt_len, w_cross, attend, teacher_qk)


def branch_image_attention(q: Tensor, k: Tensor, v: Tensor, txt_len: int, branch: Tensor, into_attention: bool,
                           strength: float, attend: Attend = sdpa, teacher_qk: tuple[Tensor, Tensor] | None = None,
                           style: Tensor | None = None) -> Tensor:
    """The image queries' attention output ``(B, H, L_img, D)`` beside an external style branch ``A_ip (B, H, L_img, D)``.

    ``lerp(w_C·A_C + [A_ip if into_attention], w_C·AdaIN(A_C, A_ip), strength) + w_X·A_X``, with ``A_C`` over
    every text key and ``A_X`` over the image keys (or the teacher's image→image map on these values).
    ``style``: where the AdaIN statistics come from when that is not the added branch itself (SD3.5: the
    branch's attention over the IP keys alone, without the image's own keys it also attends to).
    """
    qi = q[:, :, txt_len:]
    w_cross = cross_mass(qi, k, txt_len, attend)
    text = attend(qi, k[:, :, :txt_len], v[:, :, :txt_len])
    cross = w_cross * text + branch if into_attention else w_cross * text
    if strength > 0:
        cross = torch.lerp(cross, w_cross * _adain_heads(text, branch if style is None else style), strength)
    return cross + _image_to_image(qi, k, v, txt_len, w_cross, attend, teacher_qk)


def _adain_heads(text: Tensor, style: Tensor) -> Tensor:
    """Cross-modal AdaIN on ``(B, H, L, D)`` outputs, statistics per channel of the merged heads (as on UNets)."""
    return split_heads(cross_modal_adain(merge_heads(text), merge_heads(style)), text.shape[1])


def _image_to_image(qi: Tensor, k: Tensor, v: Tensor, txt_len: int, w_cross: Tensor, attend: Attend,
                    teacher_qk: tuple[Tensor, Tensor] | None) -> Tensor:
    """``w_X · A_X``: the image queries over the image keys, or the teacher's queries/keys on these values."""
    qx, kx = teacher_qk if teacher_qk is not None else (qi, k[:, :, txt_len:])
    return (1 - w_cross) * attend(qx, kx, v[:, :, txt_len:])


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


class ImageStyle:
    """The per-call side of an IP-Adapter's style: every sample is styled, through the blocks' ``ImageBranch``.

    Stands where ``ReduxStyle`` stands for ``DiTStyleWrapper``: there are no style tokens in the context,
    so the text-only teacher pass keeps the whole context and only drops the branch.
    """

    def find(self, context: Tensor, cond_or_uncond: list[int]) -> StyleBatch:
        return StyleBatch(context.shape[1], 0, torch.ones(context.shape[0], dtype=torch.bool, device=context.device))


@dataclass(frozen=True, eq=False)
class FixedImageKV:
    """``ImageKV`` for adapters whose keys/values depend only on the image (XLabs, InstantX Flux): projected once per prompt.

    ``group`` holds one block's ``k``/``v`` ``(1, N, heads * D)`` and, when a negative style image was given, ``k_neg``/
    ``v_neg``; without them the unconditional half reads the positive tensors (one copy). The keys/values are read
    wherever ComfyUI's model management put the group (see ``TensorGroup``), cast only if they are not there already.
    """

    group: TensorGroup

    @classmethod
    def holding(cls, k: Tensor, v: Tensor, negative: tuple[Tensor, Tensor] | None = None) -> "FixedImageKV":
        """The positive keys/values and the negative ``(k, v)``; ``negative`` None: the unconditional half shares the positive."""
        return cls(TensorGroup({"k": k, "v": v} if negative is None else {"k": k, "v": v, "k_neg": negative[0], "v_neg": negative[1]}))

    def __call__(self, half: int, rows: slice, args: dict[str, Any], like: Tensor) -> tuple[Tensor, Tensor]:
        tensors = self.group.tensors()
        suffix = "_neg" if half == NEGATIVE and "k_neg" in tensors else ""
        return tensors["k" + suffix].to(like.device, like.dtype), tensors["v" + suffix].to(like.device, like.dtype)


@dataclass(frozen=True, eq=False)
class ImageBranch:
    """One block's IP-Adapter branch: its keys/values, where the adapter adds it, and which queries it serves.

    ``text_rows``: the text queries get the branch too (InstantX's single blocks add it to every row);
    cross-modal AdaIN has no counterpart for them, so their share fades with ``1 - strength``.
    ``combine``: for an adapter whose branch is not ``attn(unrope(q), K_ip, V_ip)`` (see ``BranchCombine``).
    """

    kv: ImageKV
    into: str = ATTENTION
    text_rows: bool = False
    combine: "BranchCombine | None" = None

    def __post_init__(self) -> None:
        if self.into not in (ATTENTION, RESIDUAL):
            raise ValueError(f"ImageBranch.into must be {ATTENTION!r} or {RESIDUAL!r}, not {self.into!r}")


class BranchCall:
    """An ``ImageBranch`` during one block call: ``A_ip`` for the queries, and what is left for the image stream."""

    def __init__(self, branch: ImageBranch, args: dict[str, Any], halves: list[int]) -> None:
        self.branch, self.args, self.halves = branch, args, halves or [0]
        self.residual: Tensor | None = None  # (B, L_img, heads * D), added to the block's image stream (RESIDUAL)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, start: int, attend: Attend) -> tuple[Tensor, Tensor]:
        """``(added, style)`` for the rows ``start:`` of the joint ``q, k, v (B, H, L, D)``, per CFG half: both
        ``attn(unrope(q), K_ip, V_ip)``, or what the branch's ``combine`` makes of them."""
        pe = self.args.get("pe")
        queries = unrope(q[:, :, start:], pe[:, :, start:] if pe is not None else None)
        chunk = queries.shape[0] // len(self.halves)
        added, styles = [], []
        for index, half in enumerate(self.halves):
            rows = slice(index * chunk, (index + 1) * chunk)
            k_ip, v_ip = (split_heads(t, q.shape[1]).expand(chunk, -1, -1, -1)
                          for t in self.branch.kv(half, rows, self.args, queries))
            if self.branch.combine is None:
                out = style = attend(queries[rows], k_ip, v_ip)
            else:
                out, style = self.branch.combine(queries[rows], k[rows, :, start:], v[rows, :, start:], k_ip, v_ip, attend)
            added.append(out)
            styles.append(style)
        return torch.cat(added), torch.cat(styles)

    def add_to_stream(self, out: dict[str, Tensor], txt_len: int, single: bool) -> dict[str, Tensor]:
        """The block's output with the residual share added to its image tokens (a single block's come after the text)."""
        if self.residual is None:
            return out
        img = out["img"]
        if single:
            img = torch.cat((img[:, :txt_len], img[:, txt_len:] + self.residual.to(img.dtype)), 1)
        else:
            img = img + self.residual.to(img.dtype)
        return {**out, "img": img}


class BlockAttention:
    """The ``optimized_attention_override`` one block runs with: reroutes its joint attention, chains any earlier override."""

    def __init__(self, block: DiTBlock, batch: StyleBatch, strength: float, handover: TeacherHandover | None,
                 previous: Callable | None, branch: BranchCall | None = None, image_len: int | None = None) -> None:
        self.block, self.batch, self.strength, self.handover, self.previous = block, batch, strength, handover, previous
        self.branch, self.image_len = branch, image_len

    def __call__(self, func: Callable, q: Tensor, k: Tensor, v: Tensor, heads: int, *args: Any, **kwargs: Any) -> Tensor:
        def inner(q_: Tensor, k_: Tensor, v_: Tensor, **overrides: Any) -> Tensor:
            call = {**kwargs, **overrides}
            if self.previous is not None:
                return self.previous(func, q_, k_, v_, heads, *args, **call)
            return func(q_, k_, v_, heads, *args, **call)

        txt_len = self.batch.txt_len
        if q.ndim == 3 and not kwargs.get("skip_reshape"):
            return self._merged_layout(func, q, k, v, heads, inner, *args, **kwargs)
        if not kwargs.get("skip_reshape") or kwargs.get("mask") is not None or q.ndim != 4 or q.shape[2] <= txt_len:
            return inner(q, k, v)  # not Flux's joint attention, or a masked one (regional prompts): left as it is
        if self.handover is not None and self.handover.recording:
            self.handover.qk[self.block] = (q[:, :, txt_len:], k[:, :, txt_len:])
            return inner(q, k, v)
        teacher_qk = self.handover.qk.pop(self.block, None) if self.handover is not None else None
        attend = lambda q_, k_, v_: inner(q_, k_, v_, skip_output_reshape=True)
        if self.branch is not None:
            out = self._with_branch(q, k, v, attend, teacher_qk, inner)
        else:
            text_rows = attend(q[:, :, :txt_len], k, v)
            image_rows = styled_image_attention(q, k, v, txt_len, self.batch.n_style, self.batch.styled, self.strength, attend, teacher_qk)
            out = torch.cat((text_rows, image_rows), dim=2)
        return out if kwargs.get("skip_output_reshape") else merge_heads(out)

    def _merged_layout(self, func: Callable, q: Tensor, k: Tensor, v: Tensor, heads: int, inner: Callable,
                       *args: Any, **kwargs: Any) -> Tensor:
        """SD3's MM-DiT call: ``q, k (B, L, H·D)``, ``v (B, L, H, D)``, rows ``[context | image]``; rerouted as heads-first.

        Only the joint attention over ``txt_len + image_len`` rows is; SD3.5 Medium's image-only second
        attention in the same block, and a masked call, are left as they are.
        """
        if kwargs.get("mask") is not None or q.shape[1] != self.batch.txt_len + (self.image_len or 0) or self.image_len is None:
            return inner(q, k, v)
        heads_first = lambda t: split_heads(t.flatten(2), heads)  # v arrives as (B, L, H, D)
        out = self(func, heads_first(q), heads_first(k), heads_first(v), heads, *args,
                   **{**kwargs, "skip_reshape": True, "skip_output_reshape": True})
        return merge_heads(out)

    def _with_branch(self, q: Tensor, k: Tensor, v: Tensor, attend: Attend, teacher_qk: tuple[Tensor, Tensor] | None,
                     inner: Callable) -> Tensor:
        """Rows ``(B, H, L, D)`` with the IP-Adapter branch; the plain adapter keeps the block's one fused attention."""
        branch, txt_len, strength = self.branch, self.batch.txt_len, self.strength
        into_attention = branch.branch.into == ATTENTION
        start = 0 if branch.branch.text_rows else txt_len
        ip, style = branch.attention(q, k, v, start, attend)
        ip_image = ip[:, :, txt_len - start:]
        if not into_attention:
            branch.residual = merge_heads((1 - strength) * ip_image)
        if strength == 0 and teacher_qk is None:
            out = attend(q, k, v)
            if not into_attention:
                return out
            return torch.cat((out[:, :, :start], out[:, :, start:] + ip), dim=2)
        text_rows = attend(q[:, :, :txt_len], k, v)
        if into_attention and start == 0:
            text_rows = text_rows + (1 - strength) * ip[:, :, :txt_len]
        image_rows = branch_image_attention(q, k, v, txt_len, ip_image, into_attention, strength, attend, teacher_qk,
                                            style[:, :, txt_len - start:])
        return torch.cat((text_rows, image_rows), dim=2)


class DiTBlockPatch(ChainedPatch):
    """A "dit" double/single block replace patch: runs the block (or the patch it displaced) with ``BlockAttention``.

    ``strength`` is 0 on blocks that only take part in the teacher's hand-over.
    """

    def __init__(self, block: DiTBlock, strength: float, window: SigmaWindow, previous: Callable | None = None,
                 branch: ImageBranch | None = None) -> None:
        self.block, self.strength, self.window, self.previous, self.branch = block, strength, window, previous, branch

    def __call__(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Tensor]:
        options = args.get("transformer_options") or {}
        batch, handover = options.get(STYLE_KEY), options.get(TEACHER_KEY)
        recording = handover is not None and handover.recording
        branch = None if self.branch is None or batch is None or recording else BranchCall(self.branch, args, options.get("cond_or_uncond"))
        in_window = self.window.contains(options.get("sigmas"))
        adain = self.strength > 0 and in_window and batch is not None and (batch.n_style > 0 or branch is not None)
        if batch is None or not (adain or handover is not None or branch is not None):
            return self._run(args, extra)
        override = BlockAttention(self.block, batch, self.strength if adain else 0.0, handover,
                                  options.get("optimized_attention_override"), branch,
                                  args["img"].shape[1] if isinstance(args.get("img"), Tensor) else None)
        out = self._run({**args, "transformer_options": {**options, "optimized_attention_override": override}}, extra)
        return out if branch is None else branch.add_to_stream(out, batch.txt_len, self.block[0] == "single_block")

    def _run(self, args: dict[str, Any], extra: dict[str, Any]) -> dict[str, Tensor]:
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


class DiTStyleWrapper(ChainedPatch):
    """Model function wrapper: finds the style tokens of this call, and runs the text-only teacher pass while it is active.

    The teacher pass sees the same latent, sigma and conditioning with the style tokens cut off (Redux)
    or the blocks' IP-Adapter branches off (``ImageStyle``); every block records its image queries/keys,
    which the styled pass then uses for its image→image attention. A call that mixes styled and
    unstyled samples (only possible when their lengths happen to agree) or carries an attention mask
    runs without the teacher: the style tokens could not be cut from every sample alike.
    """

    def __init__(self, style: ReduxStyle | ImageStyle, teacher_end_sigma: float | None, previous: Callable | None = None) -> None:
        self.style, self.teacher_end_sigma, self.previous = style, teacher_end_sigma, previous

    def __call__(self, apply_model: Callable, args: dict[str, Any]) -> Tensor:
        context = args["c"]["c_crossattn"]
        batch = self.style.find(context, args.get("cond_or_uncond") or [])
        teach = (self.teacher_end_sigma is not None and float(args["timestep"].max()) >= self.teacher_end_sigma
                 and bool(batch.styled.all()) and "attention_mask" not in args["c"])
        if not teach:
            return self._run(apply_model, args, batch, None)
        text_only = {**args, "c": {**args["c"], "c_crossattn": context[:, :batch.txt_len - batch.n_style]}}
        plain = StyleBatch(batch.txt_len - batch.n_style, 0, torch.zeros_like(batch.styled))
        return run_teacher_then_styled(lambda handover: self._run(apply_model, args, batch, handover),
                                       lambda handover: self._run(apply_model, text_only, plain, handover))

    def _run(self, apply_model: Callable, args: dict[str, Any], batch: StyleBatch, handover: TeacherHandover | None) -> Tensor:
        options = {STYLE_KEY: batch} if handover is None else {STYLE_KEY: batch, TEACHER_KEY: handover}
        return call_model(self.previous, apply_model, args, options)
