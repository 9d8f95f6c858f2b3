"""The ``torch`` backend: mamba-ssm semantics around the chunked fp32 scan, for CPU and MPS."""

from __future__ import annotations

import torch

from .chunked import chunked_scan
from .layout import cross_scan_by_copies
from .reference import finish_output, prepare_delta


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """``selective_scan_fn`` on the chunked scan; D, z and Δ preprocessing stay plain autograd ops."""
    dt = prepare_delta(delta, delta_bias, delta_softplus)
    y, last = chunked_scan(dt, u, A, B if B.dim() == 4 else B.unsqueeze(1), C if C.dim() == 4 else C.unsqueeze(1))
    out = finish_output(y, u, D, z)
    return (out, last) if return_last_state else out


def cross_scan_2d_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """All K directions in one batched chunked scan (on CPU the K small re-ordered copies are cheap)."""
    return cross_scan_by_copies(selective_scan_torch, u, delta, A, B, C, D, delta_bias, delta_softplus)
