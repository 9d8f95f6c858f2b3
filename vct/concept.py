"""Concept inversion (VCT's multi-concept textual inversion): a few new token vectors learned from one picture.

Loss (reference): MSE between predicted and true ε plus ``x0_weight``·L1 between the predicted and true clean latent,
at a uniformly drawn timestep; AdamW (lr 5e-4 ×4 gradient accumulation = 2e-3, weight decay 1e-2, constant); the
reference latent is flipped horizontally at random. The vectors kept are the best on a fixed validation set of
(timestep, noise, flip) draws, measured every ``eval_every`` steps, so Cancel and the end keep the best so far.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .ddim import EpsFn

Vectors = dict[str, Tensor]  # per text encoder ("l", "g"): (vectors, width)
#: Called after each step with (done, total, that step's training loss); returns True to stop early (Cancel).
LossStepCallback = Callable[[int, int, float], bool]


@dataclass(frozen=True)
class ConceptSettings:
    steps: int = 500
    lr: float = 2e-3
    weight_decay: float = 1e-2
    x0_weight: float = 1.0
    seed: int = 0
    eval_every: int = 25
    eval_draws: int = 4


@dataclass
class ConceptResult:
    vectors: Vectors
    best_loss: float
    first_loss: float
    steps_done: int
    stopped_early: bool
    history: list[float] = field(default_factory=list)  # validation loss at each evaluation


def _loss(eps_fn: EpsFn, encode: Callable[[Vectors], object], vectors: Vectors, x0: Tensor, sigmas: Tensor,
          t: Tensor, noise: Tensor, flip: Tensor, x0_weight: float) -> Tensor:
    x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
    sigma = sigmas[t].to(x0.device, torch.float32)
    alpha = (1.0 / (1.0 + sigma ** 2)).view(-1, 1, 1, 1)
    x_t = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    eps = eps_fn(x_t, sigma, encode(vectors))
    predicted_x0 = (x_t - (1 - alpha).sqrt() * eps) / alpha.sqrt()
    return torch.nn.functional.mse_loss(eps, noise) + x0_weight * torch.nn.functional.l1_loss(predicted_x0, x0)


def _draws(generator: torch.Generator, count: int, x0: Tensor, timesteps: int) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.randint(0, timesteps, (count,), generator=generator)
    noise = torch.randn((count, *x0.shape[1:]), generator=generator).to(x0)
    flip = torch.rand(count, generator=generator) < 0.5
    return t, noise, flip.to(x0.device)


def learn_concept(eps_fn: EpsFn, encode: Callable[[Vectors], object], initial: Vectors, x0: Tensor, sigmas: Tensor,
                  settings: ConceptSettings = ConceptSettings(), on_step: LossStepCallback | None = None) -> ConceptResult:
    """Optimise ``initial`` so that ``encode(vectors)`` (the prompt's conditioning with the vectors in place) lets the
    model denoise ``x0`` (one latent, ``(1, C, H, W)``) at every noise level of the table ``sigmas``."""
    if x0.shape[0] != 1:
        raise ValueError(f"concept inversion learns from one picture, got a batch of {x0.shape[0]}")
    generator = torch.Generator().manual_seed(settings.seed)
    validation = _draws(generator, settings.eval_draws, x0, len(sigmas))
    with torch.inference_mode(False), torch.enable_grad():
        x0 = x0.clone()
        vectors = {name: v.detach().clone().float().requires_grad_(True) for name, v in initial.items()}
        optimiser = torch.optim.AdamW(list(vectors.values()), lr=settings.lr, weight_decay=settings.weight_decay)

        def validate() -> float:
            with torch.no_grad():
                return float(_loss(eps_fn, encode, vectors, x0.expand(settings.eval_draws, -1, -1, -1), sigmas,
                                   *validation, settings.x0_weight))

        first = validate()
        best, best_vectors, history = first, {n: v.detach().clone() for n, v in vectors.items()}, [first]
        done, stopped = 0, False
        for done in range(1, settings.steps + 1):
            loss = _loss(eps_fn, encode, vectors, x0, sigmas, *_draws(generator, 1, x0, len(sigmas)), settings.x0_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if done % settings.eval_every == 0 or done == settings.steps:
                history.append(validate())
                if history[-1] < best:
                    best, best_vectors = history[-1], {n: v.detach().clone() for n, v in vectors.items()}
            if on_step is not None and on_step(done, settings.steps, float(loss.detach())):
                stopped = True
                break
    return ConceptResult(best_vectors, best, first, done, stopped, history)
