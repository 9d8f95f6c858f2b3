"""VCT's attention control (prompt-to-prompt) as ComfyUI attn1/attn2 replace patches that chain with other packs'.

The fusion runs both streams in one batch of equal chunks; each model call carries a ``FusionCall`` in
``transformer_options[FUSION_KEY]`` saying which conditional chunk is the source and which the target, and at which
step. Without it (the patched MODEL used anywhere else) both patches only hand over to what they displaced. Only
conditional halves are paired: the unconditional halves of both streams run untouched, as in the reference.

* Self-attention injection: in layers with at most ``self_max_tokens`` queries, the target chunk attends with the
  source chunk's queries and keys and its own values, so its attention probabilities are the source's
  (``softmax(Q_s K_sᵀ/√d)·V_t``) while the fused kernel still runs.
* Cross-attention refine + reweight: target probabilities ``P'_t = (A·P_s[:, mapper] + (1-A)·P_t)·w`` with ``A`` 1 on
  target tokens aligned to a source token, ``w`` the reweight (the concept's tokens ×0.5). The patch adds
  ``(P'_t - P_t)·V_t`` to the layer's output (the displaced patch plus collected contributions), so another pack's
  additive contribution (IP-Adapter) is kept and the order in which the packs were applied does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..stylestudio.attention import sdpa_attention
from ..stylestudio.hooks import ChainedPatch
from ..stylestudio.patches import AttentionFn, CollectingPatch, ReplacePatch, attend_or_chain

FUSION_KEY = "vct_fusion"


@dataclass(frozen=True)
class CrossEdit:
    """Prompt-to-prompt refine + reweight over the target prompt's tokens (all ``(tokens,)``)."""

    mapper: Tensor  # target token -> source token it takes its attention from
    alphas: Tensor  # 1 where the target token is aligned to a source token, 0 for new tokens
    weights: Tensor  # reweight per target token (1 except the concept's tokens)

    def edit(self, p_source: Tensor, p_target: Tensor) -> Tensor:
        """``(A·P_s[..., mapper] + (1-A)·P_t)·w`` on probabilities ``(..., queries, tokens)``."""
        alphas, weights = (t.to(p_target) for t in (self.alphas, self.weights))
        return (p_source[..., self.mapper.to(p_source.device)] * alphas + p_target * (1 - alphas)) * weights


@dataclass(frozen=True)
class AttentionControl:
    """When and where the target stream's attention is edited, in steps of the fusion's chain (paper: 50 steps,
    self-attention for [0, 45) in layers of at most 32² queries, cross-attention for the first 20 %)."""

    self_steps: tuple[int, int]
    cross_steps: tuple[int, int]
    self_max_tokens: int = 32 * 32
    cross: CrossEdit | None = None


@dataclass(frozen=True)
class FusionCall:
    """One model call of the fusion: the step, the batch's chunk count and its (source, target) conditional pairs."""

    step: int
    chunks: int
    pairs: tuple[tuple[int, int], ...]
    control: AttentionControl

    def injects_self(self, queries: int) -> bool:
        start, end = self.control.self_steps
        return start <= self.step < end and queries <= self.control.self_max_tokens

    def edits_cross(self) -> bool:
        start, end = self.control.cross_steps
        return self.control.cross is not None and start <= self.step < end

    def with_source(self, t: Tensor) -> Tensor:
        """``t`` with each target chunk replaced by its source chunk."""
        chunks = list(t.chunk(self.chunks))
        for source, target in self.pairs:
            chunks[target] = chunks[source]
        return torch.cat(chunks)


def _probabilities(q: Tensor, k: Tensor, heads: int) -> Tensor:
    """``softmax(QKᵀ/√d)`` per head in fp32: ``(batch, heads, queries, keys)``."""
    split = lambda t: t.float().unflatten(-1, (heads, -1)).transpose(1, 2)
    q, k = split(q), split(k)
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)


class SelfInjectionPatch(ChainedPatch):
    """attn1 replace patch: the target's conditional chunk attends with the source's queries and keys."""

    def __init__(self, previous: ReplacePatch | None = None, attention: AttentionFn = sdpa_attention) -> None:
        self.previous, self.attention = previous, attention

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        call = extra_options.get(FUSION_KEY)
        if call is not None and call.injects_self(q.shape[1]):
            q, k = call.with_source(q), call.with_source(k)
        return attend_or_chain(self.previous, self.attention, q, k, v, extra_options)


class CrossRefinePatch(CollectingPatch):
    """attn2 replace patch: the layer's own output plus the refine/reweight correction of the target's chunk."""

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict[str, Any]) -> Tensor:
        out = self.text_attention(q, k, v, extra_options)
        call = extra_options.get(FUSION_KEY)
        if call is None or not call.edits_cross():
            return out
        return out + cross_correction(call, q, k, v, extra_options["n_heads"]).to(out.dtype)


def cross_correction(call: FusionCall, q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """``(P'_t - P_t)·V_t`` on each target chunk, zero on every other chunk."""
    correction = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    qs, ks, vs = q.chunk(call.chunks), k.chunk(call.chunks), v.chunk(call.chunks)
    corrections = list(correction.chunk(call.chunks))
    for source, target in call.pairs:
        p_source, p_target = _probabilities(qs[source], ks[source], heads), _probabilities(qs[target], ks[target], heads)
        values = vs[target].float().unflatten(-1, (heads, -1)).transpose(1, 2)
        delta = (call.control.cross.edit(p_source, p_target) - p_target) @ values
        corrections[target] = delta.transpose(1, 2).flatten(2)
    return torch.cat(corrections)
