"""The ``triton`` backend: mamba-ssm semantics around the fused kernels of ``triton_scan``."""

from __future__ import annotations

import torch

from .layout import group_size
from .reference import finish_output, prepare_delta
from .triton_scan import GRID, SEQUENCE, TIME, TritonScan


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
    initial_state: torch.Tensor | None = None,
):
    """1D scan: B/C group g drives channel block g, so the kernel treats groups like directions."""
    batch, dim, length = u.shape
    B, C = (x if x.dim() == 4 else x.unsqueeze(1) for x in (B, C))
    groups = B.shape[1]
    per_group = group_size(dim, groups)
    dt = prepare_delta(delta, delta_bias, delta_softplus).reshape(batch, groups, per_group, length, 1)
    init = None if initial_state is None else initial_state.reshape(batch, groups, per_group, 1, -1)
    y, last = TritonScan.apply(
        u[..., None], dt, A.reshape(groups, per_group, -1), B[..., None], C[..., None], init, SEQUENCE, 1, length
    )
    out = finish_output(y[..., 0], u, D, z)
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
    flat = u.reshape(batch, dim, height * width, 1)
    dt = prepare_delta(delta.reshape(batch, directions, dim, -1), delta_bias, delta_softplus)[..., None]
    y, _ = TritonScan.apply(flat, dt, A, B.flatten(-2)[..., None], C.flatten(-2)[..., None], None, GRID, height, width)
    # Every direction adds D_k·u at the same grid position, so the skip terms merge into one.
    out = finish_output(y[..., 0], flat[..., 0], None if D is None else D.sum(0), None)
    return out.reshape(batch, dim, height, width)


def temporal_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temporal scan: one sequence per (sample, position), read in place from the (b, dim, T, H, W) video.

    Shapes as ``kernels.temporal_scan``; the initial and last states (b, K, dim, H, W, d_state) are
    already the kernel's (b, K, dim, P, d_state) layout with P = H·W, so they pass through as views.
    """
    batch, dim, frames, height, width = u.shape
    directions = delta.shape[1]
    positions = height * width
    flat = u.reshape(batch, dim, frames, positions)
    dt = prepare_delta(delta.reshape(batch, directions, dim, -1), delta_bias, delta_softplus)
    dt = dt.reshape(batch, directions, dim, frames, positions)
    init = None if initial_state is None else initial_state.reshape(batch, directions, dim, positions, -1)
    y, last = TritonScan.apply(
        flat, dt, A, B.reshape(*B.shape[:4], positions), C.reshape(*C.shape[:4], positions), init, TIME, height, width
    )
    # Both directions add D_k·u at the same position, so the skip terms merge into one.
    out = finish_output(y.reshape(batch, dim, -1), u.reshape(batch, dim, -1), None if D is None else D.sum(0), None)
    return out.reshape(u.shape), last.reshape(batch, directions, dim, height, width, -1)
