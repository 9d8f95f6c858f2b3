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
):
    """``selective_scan_fn`` on the chunked scan; D, z and Δ preprocessing stay plain autograd ops."""
    dt = prepare_delta(delta, delta_bias, delta_softplus)
    y, last = chunked_scan(dt, u, A, B if B.dim() == 4 else B.unsqueeze(1), C if C.dim() == 4 else C.unsqueeze(1))
    out = finish_output(y, u, D, z)
    return (out, last) if return_last_state else out
