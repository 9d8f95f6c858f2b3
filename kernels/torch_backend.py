"""The ``torch`` backend: mamba-ssm semantics around the chunked fp32 scan, for CPU and MPS."""

from __future__ import annotations

import torch

from .chunked import chunked_scan
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
    initial_state: torch.Tensor | None = None,
):
    """``selective_scan_fn`` on the chunked scan; D, z and Δ preprocessing stay plain autograd ops."""
    dt = prepare_delta(delta, delta_bias, delta_softplus)
    B, C = (x if x.dim() == 4 else x.unsqueeze(1) for x in (B, C))
    y, last = chunked_scan(dt, u, A, B, C, initial_state)
    out = finish_output(y, u, D, z)
    return (out, last) if return_last_state else out
