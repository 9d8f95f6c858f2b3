"""Deterministic DDIM on a discrete-time diffusion schedule, plus inversion and null-text optimisation.

Written in the ε/ᾱ form of the reference code (diffusers' DDIM with ``steps_offset=1`` and ``set_alpha_to_one=False``):
a sampling chain of ``steps`` moves through the timesteps ``T-stride+1, ..., 1`` and ends at ``ᾱ[0]``. A schedule is
taken from the model's own table of sigmas (ComfyUI's ``model_sampling.sigmas``, ``σ = √((1-ᾱ)/ᾱ)``), so the
chain is the model's, whatever its β schedule.

``EpsFn(x, sigma, cond)`` predicts ε for a batch ``x`` in DDIM scaling (``x = √ᾱ·x0 + √(1-ᾱ)·ε``) at the timestep of
``sigma``; ``cond`` is whatever the adapter needs to condition the model (opaque here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

EpsFn = Callable[[Tensor, Tensor, Any], Tensor]
#: Called after each outer step with (done, total); returns True to stop early (Cancel).
StepCallback = Callable[[int, int], bool]


@dataclass(frozen=True)
class DDIMSchedule:
    """The sigmas of a DDIM chain in sampling order: ``sigmas[0]`` is the noisiest, ``sigmas[-1]`` the ``ᾱ[0]`` end."""

    sigmas: Tensor  # (steps + 1,), float64

    @classmethod
    def from_table(cls, table: Tensor, steps: int) -> "DDIMSchedule":
        """DDIM timesteps ``t_i = i·stride + 1`` (``stride = len(table) // steps``) and the final ``t = 0`` end."""
        if not 1 <= steps <= len(table) - 1:
            raise ValueError(f"steps must be between 1 and {len(table) - 1}, got {steps}")
        stride = len(table) // steps
        timesteps = torch.arange(steps) * stride + 1
        chain = torch.cat([timesteps.flip(0), torch.zeros(1, dtype=torch.long)])
        return cls(table.double()[chain])

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def alpha(self, index: int) -> float:
        """``ᾱ`` at chain position ``index`` (``1 / (1 + σ²)``)."""
        return float(1.0 / (1.0 + self.sigmas[index] ** 2))

    def identity(self) -> tuple[int, ...]:
        """A hashable fingerprint (sigmas rounded to 1e-6) to tell whether two schedules are the same chain."""
        return tuple(round(float(s), 6) for s in self.sigmas)


def ddim_move(x: Tensor, eps: Tensor, alpha_from: float, alpha_to: float) -> Tensor:
    """Move ``x`` from ``ᾱ_from`` to ``ᾱ_to`` along the DDIM ODE with the noise estimate ``eps`` (either direction)."""
    x0 = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from ** 0.5
    return alpha_to ** 0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


def guided(eps_uncond: Tensor, eps_cond: Tensor, cfg: float) -> Tensor:
    return eps_uncond + cfg * (eps_cond - eps_uncond)


def sigma_batch(schedule: DDIMSchedule, index: int, x: Tensor) -> Tensor:
    return schedule.sigmas[index].to(x.device, torch.float32).expand(x.shape[0])


def invert(eps_fn: EpsFn, x0: Tensor, cond: Any, schedule: DDIMSchedule,
           on_step: StepCallback | None = None) -> list[Tensor]:
    """DDIM inversion without guidance: the latents from the ``ᾱ[0]`` end (``x0``) up to the noisiest, in that order.

    As in the reference, the move up from position ``i`` uses the model's ε at the *next* timestep on the current latent.
    """
    path = [x0]
    x = x0
    for done, index in enumerate(range(schedule.steps, 0, -1), 1):
        eps = eps_fn(x, sigma_batch(schedule, index - 1, x), cond)
        x = ddim_move(x, eps, schedule.alpha(index), schedule.alpha(index - 1))
        path.append(x)
        if on_step is not None and on_step(done, schedule.steps):
            raise InterruptedError("inversion cancelled")
    return path


def sample(eps_fn: EpsFn, x_t: Tensor, cond: Any, uncond: Sequence[Any] | Any | None, schedule: DDIMSchedule,
           cfg: float, first_step: int = 0) -> Tensor:
    """DDIM sampling from ``x_t`` (at chain position ``first_step``) to the end; ``uncond`` may differ per step
    (null-text inversion) and is unused at ``cfg == 1``."""
    x = x_t
    for index in range(first_step, schedule.steps):
        x = sample_step(eps_fn, x, cond, _at(uncond, index), schedule, index, cfg)
    return x


def sample_step(eps_fn: EpsFn, x: Tensor, cond: Any, uncond: Any, schedule: DDIMSchedule, index: int, cfg: float) -> Tensor:
    sigma = sigma_batch(schedule, index, x)
    eps = eps_fn(x, sigma, cond) if cfg == 1.0 else guided(eps_fn(x, sigma, uncond), eps_fn(x, sigma, cond), cfg)
    return ddim_move(x, eps, schedule.alpha(index), schedule.alpha(index + 1))


def _at(per_step: Sequence[Any] | Any, index: int) -> Any:
    return per_step[index] if isinstance(per_step, list) else per_step


@dataclass(frozen=True)
class NullTextSettings:
    """The reference's null-text schedule: Adam with ``lr·(1 - i/100)`` at step i, stop below ``1e-5 + i·2e-5``."""

    inner_steps: int = 50
    lr: float = 1e-2
    epsilon: float = 1e-5
    epsilon_per_step: float = 2e-5


def null_text_optimise(eps_fn: EpsFn, path: Sequence[Tensor], cond: Any, null: Tensor, make_uncond: Callable[[Tensor], Any],
                       schedule: DDIMSchedule, cfg: float, settings: NullTextSettings = NullTextSettings(),
                       on_step: StepCallback | None = None) -> tuple[list[Tensor], list[float]]:
    """Null-text inversion (Mokady et al.): per sampling step, optimise the unconditional embedding so that the guided
    step from the current latent lands on the inverted ``path``; returns one embedding per step and each step's loss.

    ``path`` is ``invert``'s output; ``make_uncond(embedding)`` builds the ``cond`` for ``eps_fn`` from the embedding.
    ``on_step`` is called after every inner step too (with the outer steps done so far), so Cancel stops within one.
    Runs with gradients whatever the caller's mode (ComfyUI runs nodes under inference mode).
    """
    nulls: list[Tensor] = []
    losses: list[float] = []
    embedding = null.detach().clone()
    with torch.inference_mode(False), torch.enable_grad():
        x = path[-1].clone()
        for index in range(schedule.steps):
            target = path[schedule.steps - index - 1].clone()
            sigma = sigma_batch(schedule, index, x)
            with torch.no_grad():
                eps_cond = eps_fn(x, sigma, cond)
            embedding = embedding.detach().clone().requires_grad_(True)
            optimiser = torch.optim.Adam([embedding], lr=settings.lr * (1.0 - index / 100.0))
            loss_value = float("inf")
            for _ in range(settings.inner_steps):
                eps = guided(eps_fn(x, sigma, make_uncond(embedding)), eps_cond, cfg)
                loss = torch.nn.functional.mse_loss(ddim_move(x, eps, schedule.alpha(index), schedule.alpha(index + 1)), target)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                loss_value = float(loss.detach())
                if on_step is not None and on_step(index, schedule.steps):  # Cancel within a step: inner steps are slow
                    raise InterruptedError("null-text optimisation cancelled")
                if loss_value < settings.epsilon + index * settings.epsilon_per_step:
                    break
            embedding = embedding.detach()
            nulls.append(embedding)
            losses.append(loss_value)
            with torch.no_grad():
                eps = guided(eps_fn(x, sigma, make_uncond(embedding)), eps_cond, cfg)
                x = ddim_move(x, eps, schedule.alpha(index), schedule.alpha(index + 1))
            if on_step is not None and on_step(index + 1, schedule.steps):
                raise InterruptedError("null-text optimisation cancelled")
    return nulls, losses
