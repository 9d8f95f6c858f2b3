"""Spatio-temporal fusion: a selective scan along time after every fusion block, run over video in chunks.

Each FusionBlock mixes the tokens of one frame (2D cross scan); the ``TemporalMixer`` after it lets
every token position see the same position in earlier frames through a selective scan along time.
Its output projection starts at zero, so a model trained on images (or loaded from a checkpoint
without temporal weights) styles video exactly as frame by frame until a video fit trains it.

The scan runs forward in time only. A causal model makes chunking exact: a chunk of frames needs
nothing from later frames, only each block's scan state after the previous chunk, so any length
runs with memory bounded by the chunk, and chunked equals unchunked up to float summation order.
A backward-in-time direction would make every layer's input depend on all frames, which no
bounded-memory chunking reproduces. Measured on one clip (benchmarks/results/video-cpu.md), forward+backward
mixers fitted the same way flickered a third less on held-out footage at the same style strength and
warping error: not enough to give up exact chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import temporal_scan
from .config import StyleMambaConfig


class TemporalMixer(nn.Module):
    """Mamba (S6) mixer along time at every token position, added to the tokens through a zero-initialised projection."""

    def __init__(self, config: StyleMambaConfig):
        super().__init__()
        inner, n, rank = config.inner_width, config.d_state, config.dt_rank
        self.norm = nn.LayerNorm(config.width, elementwise_affine=False, eps=1e-6)
        self.in_proj = nn.Linear(config.width, 2 * inner, bias=False)
        self.x_proj = nn.Parameter(torch.randn(1, rank + 2 * n, inner) / math.sqrt(inner))
        self.dt_proj = nn.Parameter(torch.randn(1, inner, rank) / math.sqrt(rank))
        # Slow steps (Δ ≈ 0.01–0.1 after softplus): a state that remembers several frames.
        dt = torch.exp(torch.rand(1, inner) * (math.log(0.1) - math.log(0.01)) + math.log(0.01))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(1, inner, 1))
        self.D = nn.Parameter(torch.ones(1, inner))
        self.out_proj = nn.Linear(inner, config.width, bias=False)
        nn.init.zeros_(self.out_proj.weight)
        self.dt_rank, self.d_state = rank, n
        self.scan_backend = "auto"

    def forward(
        self, tokens: torch.Tensor, frames: int, height: int, width: int, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (b·frames, height·width, width) sample-major → (tokens + temporal change, last scan state)."""
        u, z = self.in_proj(self.norm(tokens)).chunk(2, dim=-1)
        batch = tokens.shape[0] // frames
        u = u.reshape(batch, frames, height, width, -1).permute(0, 4, 1, 2, 3)
        projected = torch.einsum("bdthw,kcd->bkcthw", u, self.x_proj)
        dt, B, C = projected.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum("bkrthw,kdr->bkdthw", dt, self.dt_proj)
        y, last = temporal_scan(
            u, delta, -torch.exp(self.A_log.float()), B, C, D=self.D, delta_bias=self.dt_bias,
            delta_softplus=True, initial_state=state, backend=self.scan_backend,
        )
        y = y.permute(0, 2, 3, 4, 1).reshape(tokens.shape[0], height * width, -1).to(z.dtype)
        return tokens + self.out_proj(y * F.silu(z)), last


@dataclass
class TemporalContext:
    """What one chunk of a video needs from the previous ones: frames per sample and every block's scan state.

    ``StyleFusionModel.forward(..., temporal=context)`` reads the latent as ``frames`` consecutive frames
    per sample and replaces each block's state with the one after this chunk.
    """

    frames: int
    states: dict[int, torch.Tensor] = field(default_factory=dict)

    def mix(self, index: int, mixer: TemporalMixer, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        tokens, self.states[index] = mixer(tokens, self.frames, height, width, self.states.get(index))
        return tokens
