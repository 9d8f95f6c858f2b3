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

``temporal_scan`` runs the scan along time at every position of a (batch, dim, T, H, W) video grid:
    u: (batch, dim, T, H, W); delta: (batch, K, dim, T, H, W); A: (K, dim, d_state);
    B, C: (batch, K, d_state, T, H, W); D, delta_bias: (K, dim);
    initial_state: (batch, K, dim, H, W, d_state) or None (zeros)
and returns (y summed over directions (batch, dim, T, H, W), last states (batch, K, dim, H, W, d_state)).
K is 1 (forward in time) or 2 (forward and backward); see ``temporal`` for how chunks carry the state.
``selective_scan`` likewise takes an ``initial_state`` (batch, dim, d_state). Gradients reach the
initial state on every backend; the last state carries none.

Backends (every one differentiable):
    reference  sequential loop, the truth the others are tested against;
    torch      chunk-parallel fp32 scan for CPU/MPS (``chunked``);
    triton     fused forward/backward kernels, fp32 state, fp16/bf16 inputs (``triton_scan``): 1D, 2D
               and temporal scans each read their inputs in place, initial state included;
    mamba_ssm  mamba-ssm's compiled CUDA ``selective_scan_fn`` (``pip install .[cuda]``);
    auto       the first of ``auto_order(device)`` that passes its self-check.

The compiled backends (triton, mamba_ssm) are trusted per (device, dtype) only after a small forward
and backward problem matched the ``torch`` backend (``self_check``): ``auto`` warns once and falls back,
an explicitly named one raises ``SelfCheckError``.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Callable

import torch

from . import self_check
from .layout import DIRECTIONS
from .reference import selective_scan_reference
from .self_check import ScanBackendWarning, ScanFunctions, SelfCheckError, by_copies
from .temporal import with_initial_state
from .torch_backend import selective_scan_torch

BACKENDS = ("auto", "reference", "torch", "triton", "mamba_ssm")
#: Backends trusted only after their self-check passed for the (device, dtype) at hand (``self_check``).
COMPILED = ("triton", "mamba_ssm")
MAMBA_MODULE = "mamba_ssm.ops.selective_scan_interface"


@functools.cache
def _importable(name: str) -> bool:
    """Whether a GPU dependency imports; mamba-ssm fails here when its compiled extension is missing."""
    try:
        importlib.import_module(name)
    except (ImportError, OSError):
        return False
    return True


def _triton_functions() -> ScanFunctions:
    from .triton_backend import cross_scan_2d_triton, selective_scan_triton, temporal_scan_triton

    return selective_scan_triton, cross_scan_2d_triton, temporal_scan_triton


def _mamba_functions() -> ScanFunctions:
    from .mamba_backend import selective_scan_mamba

    # mamba-ssm's scan starts from zeros: the initial state is added by linearity around it.
    return by_copies(functools.partial(with_initial_state, selective_scan_mamba))


#: Each backend's loader of its (1D, 2D, temporal) functions; GPU modules import only when a loader runs.
#: Only Triton has fused 2D and temporal kernels. Tests swap entries for fake compiled backends.
IMPLEMENTATIONS: dict[str, Callable[[], ScanFunctions]] = {
    "reference": lambda: by_copies(selective_scan_reference),
    "torch": lambda: by_copies(selective_scan_torch),
    "triton": _triton_functions,
    "mamba_ssm": _mamba_functions,
}


def auto_order(device: torch.device) -> list[str]:
    """The backends ``auto`` tries on ``device``, best first: the compiled ones that import, then ``torch``.

    CPU and MPS → ``torch``: Triton and mamba-ssm need CUDA, and the chunked scan measured 4–7× the
    plain sequential loop and 12–90× ``reference`` on a 2-core CPU at the model's shapes
    (benchmarks/results/scan-cpu.md). CUDA → ``mamba_ssm`` when its compiled extension imports (a
    kernel proven on real GPUs), then ``triton`` (our fused kernels; no GPU figures exist yet), then
    ``torch``. Re-order once benchmarks/scan.py has run on a GPU and shows the fused 2D kernel ahead.
    """
    if device.type != "cuda":
        return ["torch"]
    compiled = [name for name, module in (("mamba_ssm", MAMBA_MODULE), ("triton", "triton")) if _importable(module)]
    return [*compiled, "torch"]


def _require_runnable(backend: str, device: torch.device) -> None:
    """Raise with the fix when a named backend cannot run on ``device`` at all."""
    if backend == "triton":
        if not _importable("triton"):
            raise RuntimeError("scan backend 'triton' needs Triton: pip install triton (or pip install .[cuda])")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"scan backend 'triton' needs a CUDA device, got {device.type} tensors "
                "(or TRITON_INTERPRET=1 for testing); use backend='torch' or 'auto'"
            )
    if backend == "mamba_ssm":
        if device.type != "cuda":
            raise RuntimeError(
                f"scan backend 'mamba_ssm' needs CUDA tensors, got {device.type}; use backend='torch' or 'auto'"
            )
        if not _importable(MAMBA_MODULE):
            from .mamba_backend import load_selective_scan_fn

            load_selective_scan_fn()  # raises with the import error and how to install


def check_verdict(backend: str, device: torch.device, dtype: torch.dtype) -> self_check.Verdict:
    """The self-check verdict of a compiled backend for (device, dtype), run on first use and cached."""
    return self_check.verdict(backend, IMPLEMENTATIONS[backend], device, dtype)


def _first_trusted(device: torch.device, dtype: torch.dtype | None) -> str:
    """``auto``: the first backend of ``auto_order`` whose check passes; one warning per skipped one."""
    failed = []
    for name in auto_order(device):
        if dtype is not None and name in COMPILED:
            verdict = check_verdict(name, device, dtype)
            if not verdict.passed:
                failed.append(verdict)
                continue
        for verdict in failed:
            self_check.warn_once(verdict, instead=name)
        return name
    raise RuntimeError(f"no scan backend passed its self-check on {device}: " + "; ".join(v.summary() for v in failed))


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Turn ``auto`` into a concrete backend for ``device`` and check a named one can run there.

    With ``dtype`` (every scan call passes its inputs' dtype) a compiled backend must also pass its
    self-check for (backend, device, dtype): ``auto`` warns once and moves down ``auto_order``; a
    backend named explicitly raises ``SelfCheckError`` with the check's numbers, never falling back.
    Without ``dtype`` only availability decides (tools that list what could run).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return _first_trusted(device, dtype)
    _require_runnable(backend, device)
    if dtype is not None and backend in COMPILED:
        verdict = check_verdict(backend, device, dtype)
        if not verdict.passed:
            raise SelfCheckError(verdict)
    return backend


def _implementation(backend: str, u: torch.Tensor, kind: str) -> Callable:
    """The ``kind`` (one of ``self_check.KINDS``) function of the backend resolved (and self-checked) for ``u``."""
    resolved = resolve_backend(backend, u.device, u.dtype)
    return IMPLEMENTATIONS[resolved]()[self_check.KINDS.index(kind)]


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
    initial_state: torch.Tensor | None = None,
):
    """Run the 1D selective scan on the chosen backend (see module docstring for shapes)."""
    scan = _implementation(backend, u, "1d")
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state=initial_state)


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
    scan = _implementation(backend, u, "2d")
    return scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


def temporal_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan every position of a video grid along time (forward, and backward when K = 2); returns y and last states."""
    if u.dim() != 5:
        raise ValueError(f"temporal_scan takes u as (batch, dim, frames, height, width), got shape {tuple(u.shape)}")
    directions = delta.shape[1]
    if directions not in (1, 2):
        raise ValueError(f"temporal_scan takes 1 (forward) or 2 (forward and backward) directions, got {directions}")
    expected_state = (u.shape[0], directions, u.shape[1], *u.shape[-2:], A.shape[-1])
    if initial_state is not None and tuple(initial_state.shape) != expected_state:
        raise ValueError(f"initial_state must be {expected_state} for this grid, got {tuple(initial_state.shape)}")
    scan = _implementation(backend, u, "temporal")
    return scan(u, delta, A, B, C, D, delta_bias, delta_softplus, initial_state)


__all__ = [
    "BACKENDS", "COMPILED", "DIRECTIONS", "ScanBackendWarning", "SelfCheckError", "auto_order", "check_verdict",
    "cross_scan_2d", "resolve_backend", "selective_scan", "temporal_scan",
]
