"""Trust a compiled scan backend only after it matched the ``torch`` backend on this machine.

The Triton kernels are compiled on the user's GPU by the user's Triton, and mamba-ssm's extension is
built against the user's torch and CUDA: a wrong build or an untested GPU would otherwise give silently
wrong images. So before ``auto`` first uses a compiled backend in a process for a (backend, device,
dtype), it runs a small forward + backward problem through it and through the chunked ``torch`` scan
and compares outputs and every gradient. The verdict is cached per key for the process.

The problem is sized against the Triton kernels' blocks (``triton_scan``: 32 steps per stored chunk,
32 channels per program): 45 steps (over one chunk and not a multiple of it), 40 channels (a second,
masked channel block), d_state 16, grouped B/C in 1D and K = 4 directions on a 5×9 grid in 2D (H ≠ W,
so the column orders differ from the row orders). The temporal scan runs 9 frames (a chunk of video
frames; the kernel pads it to 16 steps, so the tail is masked) at every position of a 1×3 grid,
forward and backward in time, from a random initial state whose gradient is compared too.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .layout import cross_scan_by_copies
from .temporal import temporal_scan_by_copies
from .torch_backend import selective_scan_torch

#: A backend's (1D ``selective_scan``, 2D ``cross_scan_2d``, ``temporal_scan``) functions, as
#: ``kernels.IMPLEMENTATIONS`` loads them, in the order of ``KINDS``.
ScanFunctions = tuple[Callable[..., object], Callable[..., torch.Tensor], Callable[..., tuple[torch.Tensor, torch.Tensor]]]
KINDS = ("1d", "2d", "temporal")


def by_copies(scan_1d: Callable[..., object]) -> ScanFunctions:
    """A 1D scan (taking ``initial_state``) and the 2D and temporal scans made of it: grouped calls over re-ordered copies."""
    return scan_1d, functools.partial(cross_scan_by_copies, scan_1d), functools.partial(temporal_scan_by_copies, scan_1d)


#: Largest difference allowed, relative to the ``torch`` backend's largest magnitude of each compared
#: tensor. Both sides compute in fp32 from the same inputs, so fp32 leaves only summation-order and
#: fast-exp noise (~1e-6 measured under the interpreter); half types add the rounding of the outputs and
#: gradients to 8 (bf16) or 11 (fp16) mantissa bits, a few units of 2^-8 or 2^-11 of the largest value.
TOLERANCES = {torch.float64: 1e-4, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}

#: 1D runs two samples (the batch offsets) of two B/C groups; 2D one sample, as every direction already
#: gives it 8 programs and the interpreter that tests it on CPU pays per program; the temporal scan one
#: sample too (a program per position, channel block and direction: 12 programs).
BATCH_1D, BATCH_2D, DIM, D_STATE, GROUPS, LENGTH, GRID, DIRECTIONS = 2, 1, 40, 16, 2, 45, (5, 9), 4
BATCH_T, FRAMES, GRID_T, DIRECTIONS_T = 1, 9, (1, 3), 2
SEED = 0


class ScanBackendWarning(RuntimeWarning):
    """``auto`` skipped a compiled backend that failed its self-check."""


class SelfCheckError(RuntimeError):
    """A backend named explicitly failed its self-check: it is never replaced silently."""

    def __init__(self, verdict: "Verdict"):
        super().__init__(
            f"{verdict.summary()}. Use backend='auto' (it falls back) or 'torch', and include "
            "the output of `stylemamba doctor` in a bug report"
        )
        self.verdict = verdict


# Shown in ComfyUI's error dialog as "SelfCheckError: …", as errors.PackError does for the rest of the pack:
# kernels import nothing above them (transformers may import this folder as a top-level ``kernels``).
SelfCheckError.__module__ = "builtins"


@dataclass(frozen=True)
class Verdict:
    """Outcome of one self-check: the largest difference found (and where), or the error raised."""

    backend: str
    device: str
    dtype: str
    passed: bool
    tolerance: float
    seconds: float
    difference: float | None = None
    worst: str | None = None
    error: str | None = None

    def finding(self) -> str:
        """The numbers: what was compared and how far apart, or what was raised."""
        if self.error is not None:
            first_line = self.error.strip().splitlines()[0] if self.error.strip() else self.error
            return f"raised {first_line[:300]}"
        relation = "≤" if self.passed else ">"
        return (
            f"largest difference {self.difference:.1e} ({self.worst}) against the torch backend, "
            f"{relation} tolerance {self.tolerance:.0e}"
        )

    def summary(self) -> str:
        """One sentence for warnings, errors and ``stylemamba doctor``."""
        outcome = "passed" if self.passed else "failed"
        return (
            f"scan backend {self.backend!r} {outcome} its self-check on {self.device} with {self.dtype} "
            f"inputs in {self.seconds:.2f} s: {self.finding()}"
        )


def device_key(device: torch.device) -> str:
    """``cuda`` and ``cuda:0`` are one GPU: name the index so both share a verdict."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def _problem(kind: str, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The fixed inputs (leaves needing gradients); drawn from a private generator, never the global RNG."""
    gen = torch.Generator().manual_seed(SEED)

    def leaf(*shape: int, scale: float = 1.0, shift: float = 0.0, as_dtype: torch.dtype = dtype) -> torch.Tensor:
        x = torch.randn(*shape, generator=gen) * scale + shift
        return x.to(device=device, dtype=as_dtype).requires_grad_()

    f32 = torch.float32  # A, D and Δ's bias stay fp32, as the model passes them and mamba-ssm requires for A
    if kind == "1d":
        seq = (BATCH_1D, DIM, LENGTH)
        return dict(
            u=leaf(*seq), delta=leaf(*seq, scale=0.5, shift=-2.0), A=leaf(DIM, D_STATE, scale=0.5, shift=-2.0, as_dtype=f32),
            B=leaf(BATCH_1D, GROUPS, D_STATE, LENGTH), C=leaf(BATCH_1D, GROUPS, D_STATE, LENGTH),
            D=leaf(DIM, as_dtype=f32), z=leaf(*seq), delta_bias=leaf(DIM, scale=0.3, as_dtype=f32),
        )
    if kind == "2d":
        height, width = GRID
        per_direction = (BATCH_2D, DIRECTIONS, D_STATE, height, width)
        return dict(
            u=leaf(BATCH_2D, DIM, height, width), delta=leaf(BATCH_2D, DIRECTIONS, DIM, height, width, scale=0.5, shift=-2.0),
            A=leaf(DIRECTIONS, DIM, D_STATE, scale=0.5, shift=-2.0, as_dtype=f32), B=leaf(*per_direction),
            C=leaf(*per_direction), D=leaf(DIRECTIONS, DIM, as_dtype=f32), delta_bias=leaf(DIRECTIONS, DIM, scale=0.3, as_dtype=f32),
        )
    height, width = GRID_T
    video = (BATCH_T, DIRECTIONS_T, DIM, FRAMES, height, width)
    per_direction = (BATCH_T, DIRECTIONS_T, D_STATE, FRAMES, height, width)
    return dict(
        u=leaf(BATCH_T, DIM, FRAMES, height, width), delta=leaf(*video, scale=0.5, shift=-2.0),
        A=leaf(DIRECTIONS_T, DIM, D_STATE, scale=0.5, shift=-2.0, as_dtype=f32), B=leaf(*per_direction),
        C=leaf(*per_direction), D=leaf(DIRECTIONS_T, DIM, as_dtype=f32),
        delta_bias=leaf(DIRECTIONS_T, DIM, scale=0.3, as_dtype=f32),
        # fp32, as the states a previous chunk hands over are
        initial_state=leaf(BATCH_T, DIRECTIONS_T, DIM, height, width, D_STATE, as_dtype=f32),
    )


def _relative_difference(got: torch.Tensor | None, want: torch.Tensor) -> float:
    """max |got − want| / max |want|; a missing gradient counts as zeros, NaN or inf as infinitely far."""
    got = torch.zeros_like(want) if got is None else got
    if got.shape != want.shape:
        return math.inf
    value = ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-6)).item()
    return value if math.isfinite(value) else math.inf


def _compare(kind: str, candidate: Callable, truth: Callable, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Differences of the output (and the 1D and temporal last states) and of each input's gradient, by name."""
    options = dict(delta_softplus=True, return_last_state=True) if kind == "1d" else dict(delta_softplus=True)
    got, want = candidate(**inputs, **options), truth(**inputs, **options)
    differences = {}
    if kind != "2d":
        (got, got_last), (want, want_last) = got, want
        differences[f"{kind} last state"] = _relative_difference(got_last, want_last)
    differences[f"{kind} output"] = _relative_difference(got, want)
    cotangent = torch.randn(want.shape, generator=torch.Generator().manual_seed(SEED + 1)).to(want)
    leaves = list(inputs.values())
    got_grads = torch.autograd.grad(got, leaves, cotangent, allow_unused=True)
    want_grads = torch.autograd.grad(want, leaves, cotangent, allow_unused=True)
    for name, g, w in zip(inputs, got_grads, want_grads):
        differences[f"{kind} gradient of {name}"] = _relative_difference(g, w)
    return differences


def run_check(backend: str, load: Callable[[], ScanFunctions], device: torch.device, dtype: torch.dtype) -> Verdict:
    """Run the problem through ``load()``'s functions and the torch backend; any exception fails the check.

    Runs with gradients on even under ComfyUI's ``inference_mode``. On CUDA it synchronises, so an
    asynchronous kernel fault surfaces here rather than in the user's first real call.
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"scan inputs must be floating point ({', '.join(map(str, TOLERANCES))}), got {dtype}")
    tolerance = TOLERANCES[dtype]
    key = dict(backend=backend, device=device_key(device), dtype=str(dtype).removeprefix("torch."), tolerance=tolerance)
    truth = by_copies(selective_scan_torch)
    start = time.perf_counter()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            functions = load()
            differences = {}
            for index, kind in enumerate(KINDS):
                differences.update(_compare(kind, functions[index], truth[index], _problem(kind, device, dtype)))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 - any failure (compile, launch, import) means "do not trust"
        return Verdict(**key, passed=False, seconds=time.perf_counter() - start, error=f"{type(error).__name__}: {error}")
    worst = max(differences, key=differences.__getitem__)
    return Verdict(
        **key, passed=differences[worst] <= tolerance, seconds=time.perf_counter() - start,
        difference=differences[worst], worst=worst,
    )


_verdicts: dict[tuple[str, str, torch.dtype], Verdict] = {}
_warned: set[tuple[str, str, str]] = set()
_lock = threading.Lock()


def verdict(backend: str, load: Callable[[], ScanFunctions], device: torch.device, dtype: torch.dtype) -> Verdict:
    """The cached verdict for (backend, device, dtype), checking on first use (once, even across threads)."""
    key = (backend, device_key(device), dtype)
    with _lock:
        if key not in _verdicts:
            _verdicts[key] = run_check(backend, load, device, dtype)
        return _verdicts[key]


def warn_once(failed: Verdict, instead: str) -> None:
    """One warning per failed key and process, naming the backend ``auto`` uses in its place."""
    key = (failed.backend, failed.device, failed.dtype)
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(
        f"{failed.summary()}; auto uses {instead!r} instead. `stylemamba doctor` prints a report for a bug report.",
        ScanBackendWarning,
        stacklevel=2,
    )


def cached_verdicts() -> list[Verdict]:
    """Every verdict reached in this process, in the order the checks ran."""
    with _lock:
        return list(_verdicts.values())


def forget() -> None:
    """Drop every cached verdict and warning, so the next use checks again (tests, benchmarks)."""
    with _lock:
        _verdicts.clear()
        _warned.clear()
