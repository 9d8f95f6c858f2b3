"""VCT's dual-stream fusion: the source stream retraces the content's inversion, the target stream samples the concept
prompt from the same inverted noise, and the attention control hands the source's structure to the target."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .attention import FUSION_KEY, AttentionControl, FusionCall
from .ddim import DDIMSchedule, EpsFn, StepCallback, ddim_move, guided, sigma_batch

POSITIVE, NEGATIVE = 0, 1  # ComfyUI's cond_or_uncond indices


@dataclass(frozen=True)
class Cond:
    """What an ``EpsFn`` conditions a batch of equal chunks on: the cross-attention context ``(chunks·n, tokens, dim)``,
    SDXL's ADM vector (or None), each chunk's cond_or_uncond index, and extra transformer options."""

    context: Tensor
    adm: Tensor | None = None
    kinds: tuple[int, ...] = (POSITIVE,)
    options: dict[str, Any] = field(default_factory=dict)

    def as_kind(self, kind: int) -> "Cond":
        return Cond(self.context, self.adm, (kind,) * len(self.kinds), self.options)


def batch(conds: Sequence[Cond], options: dict[str, Any] | None = None) -> Cond:
    """Chunks side by side, in order."""
    adms = [c.adm for c in conds]
    adm = None if any(a is None for a in adms) else torch.cat(adms)
    return Cond(torch.cat([c.context for c in conds]), adm, tuple(k for c in conds for k in c.kinds), options or {})


def fuse(eps_fn: EpsFn, x_t: Tensor, nulls: Sequence[Cond], source: Cond, target: Cond, schedule: DDIMSchedule,
         cfg: float, control: AttentionControl, on_step: StepCallback | None = None) -> tuple[Tensor, Tensor]:
    """Sample both streams from ``x_t`` in one batch ``[null_s, null_t, source, target]``; returns (source, target).

    ``nulls[i]`` is step i's unconditional conditioning (null-text inversion's), shared by both streams.
    """
    if len(nulls) != schedule.steps:
        raise ValueError(f"{len(nulls)} null-text embeddings for a {schedule.steps}-step chain")
    x_source, x_target = x_t, x_t
    for step in range(schedule.steps):
        call = FusionCall(step, chunks=4, pairs=((2, 3),), control=control)
        null = nulls[step].as_kind(NEGATIVE)
        cond = batch([null, null, source.as_kind(POSITIVE), target.as_kind(POSITIVE)], {FUSION_KEY: call})
        x = torch.cat([x_source, x_target, x_source, x_target])
        eps = eps_fn(x, sigma_batch(schedule, step, x), cond).chunk(4)
        alpha_from, alpha_to = schedule.alpha(step), schedule.alpha(step + 1)
        x_source = ddim_move(x_source, guided(eps[0], eps[2], cfg), alpha_from, alpha_to)
        x_target = ddim_move(x_target, guided(eps[1], eps[3], cfg), alpha_from, alpha_to)
        if on_step is not None and on_step(step + 1, schedule.steps):
            raise InterruptedError("fusion cancelled")
    return x_source, x_target


def paper_control(steps: int, self_fraction: float = 0.9, cross_fraction: float = 0.2, self_max_tokens: int = 32 * 32,
                  cross: Any = None) -> AttentionControl:
    """The reference's windows scaled to ``steps``: self-attention for [0, 45) of 50, cross-attention for the first 20 %."""
    return AttentionControl(self_steps=(0, round(self_fraction * steps)), cross_steps=(0, round(cross_fraction * steps)),
                            self_max_tokens=self_max_tokens, cross=cross)
