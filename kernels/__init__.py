"""Selective scan behind one API.

Shapes follow mamba-ssm's ``selective_scan_fn``:
    u, delta, z: (batch, dim, L); A: (dim, d_state);
    B, C: (batch, d_state, L) or (batch, groups, d_state, L) (channel block g uses group g);
    D, delta_bias: (dim,).
    y = C·h with h_t = exp(Δ_t A)·h_{t-1} + Δ_t u_t B_t, Δ = softplus(delta + delta_bias) (softplus optional),
    then y + D·u, then y·SiLU(z); returned in u's dtype, plus the fp32 last state (batch, dim, d_state)
    when ``return_last_state`` (the last state carries no gradient, as in mamba-ssm).

``cross_scan_2d`` runs the K-direction scan of a (batch, dim, H, W) grid with all
per-direction inputs given in grid (row-major) order:
    u: (batch, dim, H, W); delta: (batch, K, dim, H, W); A: (K, dim, d_state);
    B, C: (batch, K, d_state, H, W); D, delta_bias: (K, dim)
and returns the sum over directions of each scan put back on the grid, (batch, dim, H, W).
Direction k follows ``layout.DIRECTIONS[k]``; K is 1, 2 or 4.

Backends (every one differentiable):
    reference  sequential loop, the truth the others are tested against;
    torch      chunk-parallel fp32 scan for CPU/MPS (``chunked``);
    triton     fused forward/backward kernels, fp32 state, fp16/bf16 inputs (``triton_scan``);
    mamba_ssm  mamba-ssm's compiled CUDA ``selective_scan_fn`` (``pip install .[cuda]``);
    auto       chosen per device by ``resolve_backend``.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Callable

import torch

from .layout import DIRECTIONS
from .layout import cross_scan_by_copies
from .reference import selective_scan_reference
from .torch_backend import selective_scan_torch

BACKENDS = ("auto", "reference", "torch", "triton", "mamba_ssm")


@functools.cache
def _importable(name: str) -> bool:
    """Whether a GPU dependency imports; mamba-ssm fails here when its compiled extension is missing."""
    try:
        importlib.import_module(name)
    except (ImportError, OSError):
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``auto`` into a concrete backend for ``device`` and check a named one can run there.

    ``auto``: CPU and MPS → ``torch``: Triton and mamba-ssm need CUDA, and the chunked scan measured
    4–7× the plain sequential loop and 12–90× ``reference`` on a 2-core CPU at the model's shapes
    (benchmarks/results/scan-cpu.md). CUDA → ``mamba_ssm`` when its compiled extension imports (a
    kernel proven on real GPUs), else ``triton`` (our fused kernels, checked so far only under
    TRITON_INTERPRET: no GPU figures exist yet), else ``torch``. Re-order once benchmarks/scan.py has
    run on a GPU and shows the fused 2D kernel ahead.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        if _importable("mamba_ssm.ops.selective_scan_interface"):
            return "mamba_ssm"
        return "triton" if _importable("triton") else "torch"
    if backend == "triton":
        if not _importable("triton"):
            raise RuntimeError("scan backend 'triton' needs Triton: pip install triton (or pip install .[cuda])")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"scan backend 'triton' needs a CUDA device, got {device.type} tensors "
                "(or TRITON_INTERPRET=1 for testing); use backend='torch' or 'auto'"
            )
    if backend == "mamba_ssm" and device.type != "cuda":
        raise RuntimeError(
            f"scan backend 'mamba_ssm' needs CUDA tensors, got {device.type}; use backend='torch' or 'auto'"
        )
    return backend


def _implementation(backend: str, device: torch.device, kind: str) -> Callable:
    """The ``kind`` ('1d' or '2d') function of a resolved backend; GPU modules import only when chosen.

    Only Triton has a fused 2D kernel; every other backend runs the 2D scan as one grouped 1D call
    over K re-ordered copies (``cross_scan_by_copies``).
    """
    name = resolve_backend(backend, device)
    if name == "triton":
        from .triton_backend import cross_scan_2d_triton, selective_scan_triton

        return selective_scan_triton if kind == "1d" else cross_scan_2d_triton
    if name == "reference":
        scan_1d = selective_scan_reference
    elif name == "torch":
        scan_1d = selective_scan_torch
    else:
        from .mamba_backend import selective_scan_mamba

        scan_1d = selective_scan_mamba
    return scan_1d if kind == "1d" else functools.partial(cross_scan_by_copies, scan_1d)


def selective_scan(
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
    backend: str = "auto",
):
    """Run the 1D selective scan on the chosen backend (see module docstring for shapes)."""
    scan = _implementation(backend, u.device, "1d")
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def cross_scan_2d(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Run the multi-direction 2D scan with merge on the chosen backend."""
    directions = delta.shape[1]
    if directions not in (1, 2, 4):
        raise ValueError(f"cross_scan_2d takes 1, 2 or 4 directions, got {directions}")
    scan = _implementation(backend, u.device, "2d")
    return scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


__all__ = ["BACKENDS", "DIRECTIONS", "cross_scan_2d", "resolve_backend", "selective_scan"]
