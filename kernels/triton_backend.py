"""The ``triton`` backend: mamba-ssm semantics around the fused kernels of ``triton_scan``."""

from __future__ import annotations

import torch

from .layout import group_size
from .reference import finish_output, prepare_delta
from .triton_scan import TritonScan


def selective_scan_triton(
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
    """1D scan: B/C group g drives channel block g, so the kernel treats groups like directions."""
    batch, dim, length = u.shape
    B, C = (x if x.dim() == 4 else x.unsqueeze(1) for x in (B, C))
    groups = B.shape[1]
    per_group = group_size(dim, groups)
    dt = prepare_delta(delta, delta_bias, delta_softplus).reshape(batch, groups, per_group, length)
    y, last = TritonScan.apply(u, dt, A.reshape(groups, per_group, -1), B, C, 1, length, False)
    out = finish_output(y, u, D, z)
    return (out, last.reshape(batch, dim, -1)) if return_last_state else out


def cross_scan_2d_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """2D scan: the kernel reads the grid in each direction's order and sums the K outputs in place."""
    batch, dim, height, width = u.shape
    directions = delta.shape[1]
    flat = u.reshape(batch, dim, height * width)
    dt = prepare_delta(delta.reshape(batch, directions, dim, -1), delta_bias, delta_softplus)
    y, _ = TritonScan.apply(flat, dt, A, B.flatten(-2), C.flatten(-2), height, width, True)
    # Every direction adds D_k·u at the same grid position, so the skip terms merge into one.
    out = finish_output(y, flat, None if D is None else D.sum(0), None)
    return out.reshape(batch, dim, height, width)
