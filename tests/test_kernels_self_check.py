"""The self-check that gates compiled scan backends, with fake compiled backends on CPU.

``kernels.IMPLEMENTATIONS`` is the seam: each test installs fakes for ``mamba_ssm``/``triton`` (the torch
scans, made wrong or raising on purpose) and makes ``auto`` try them on CPU through ``kernels.auto_order``.
The real Triton kernels go through the same check under the interpreter in test_kernels_triton.py.
"""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch

from comfyui_stylemamba import kernels
from comfyui_stylemamba.kernels import ScanBackendWarning, SelfCheckError, cross_scan_2d, selective_scan, self_check
from test_kernels import make_1d, make_2d

TORCH_1D, TORCH_2D, TORCH_TEMPORAL = kernels.IMPLEMENTATIONS["torch"]()
CPU = torch.device("cpu")


class CompilationError(Exception):
    """Stands in for triton.compiler.errors.CompilationError."""


class FakeBackend:
    """The torch scans behind a compiled backend's name: right, 2D (or temporal) output scaled, or raising."""

    def __init__(self, scale_2d: float = 1.0, error: Exception | None = None, delay: float = 0.0, scale_temporal: float = 1.0):
        self.scale_2d, self.error, self.delay, self.scale_temporal = scale_2d, error, delay, scale_temporal
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def load(self) -> self_check.ScanFunctions:
        time.sleep(self.delay)

        def scan_1d(u, *args, **kwargs):
            self.calls.append(("1d", tuple(u.shape)))
            if self.error is not None:
                raise self.error
            return TORCH_1D(u, *args, **kwargs)

        def scan_2d(u, *args, **kwargs):
            self.calls.append(("2d", tuple(u.shape)))
            if self.error is not None:
                raise self.error
            return TORCH_2D(u, *args, **kwargs) * self.scale_2d

        def scan_temporal(u, *args, **kwargs):
            self.calls.append(("temporal", tuple(u.shape)))
            y, last = TORCH_TEMPORAL(u, *args, **kwargs)
            return y * self.scale_temporal, last

        return scan_1d, scan_2d, scan_temporal


@pytest.fixture(autouse=True)
def fresh_verdicts():
    self_check.forget()
    yield
    self_check.forget()


def install(monkeypatch, **loaders) -> list[tuple[str, str, torch.dtype]]:
    """``auto`` tries the given fakes in order on CPU, then ``torch``; returns the log of checks run."""
    monkeypatch.setattr(kernels, "auto_order", lambda device: [*loaders, "torch"])
    for name, load in loaders.items():
        monkeypatch.setitem(kernels.IMPLEMENTATIONS, name, load)
    checks = []
    real = self_check.run_check

    def logged(backend, load, device, dtype):
        checks.append((backend, str(device), dtype))
        return real(backend, load, device, dtype)

    monkeypatch.setattr(self_check, "run_check", logged)
    return checks


def allow_named_triton_on_cpu(monkeypatch) -> None:
    """Let ``backend='triton'`` pass its availability test on CPU, as under the Triton interpreter."""
    monkeypatch.setattr(kernels, "_importable", lambda name: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_auto_skips_a_wrong_backend_with_one_warning_and_uses_the_right_one(monkeypatch):
    wrong, right = FakeBackend(scale_2d=1.05), FakeBackend()
    checks = install(monkeypatch, mamba_ssm=wrong.load, triton=right.load)
    x = make_2d(1, 4, 3, 4, 5, 4)
    with pytest.warns(ScanBackendWarning) as record:
        out = cross_scan_2d(**x)
    assert len(record) == 1
    message = str(record[0].message)
    assert "scan backend 'mamba_ssm' failed its self-check on cpu with float32 inputs in " in message
    assert "largest difference 5.0e-02 (2d " in message and "against the torch backend, > tolerance 1e-04" in message
    assert "auto uses 'triton' instead" in message
    torch.testing.assert_close(out, cross_scan_2d(**x, backend="torch"))
    assert ("2d", (1, 4, 4, 5)) in right.calls and ("2d", (1, 4, 4, 5)) not in wrong.calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failed verdict is cached and was already reported
        cross_scan_2d(**x)
    assert checks == [("mamba_ssm", "cpu", torch.float32), ("triton", "cpu", torch.float32)]


def test_auto_skips_raising_backends_naming_the_error(monkeypatch):
    broken = FakeBackend(error=CompilationError("at 12:4: invalid PTX for sm_90"))

    def missing_driver():
        raise ImportError("libcuda.so.1: cannot open shared object file")

    install(monkeypatch, mamba_ssm=missing_driver, triton=broken.load)
    x = make_1d(2, 6, 4, 9, groups=2)
    with pytest.warns(ScanBackendWarning) as record:
        out = selective_scan(**x, delta_softplus=True)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "'mamba_ssm' failed its self-check" in messages[0]
    assert "raised ImportError: libcuda.so.1: cannot open shared object file; auto uses 'torch' instead" in messages[0]
    assert "'triton' failed its self-check" in messages[1]
    assert "raised CompilationError: at 12:4: invalid PTX for sm_90; auto uses 'torch' instead" in messages[1]
    torch.testing.assert_close(out, selective_scan(**x, delta_softplus=True, backend="torch"))
    assert broken.calls == [("1d", (self_check.BATCH_1D, self_check.DIM, self_check.LENGTH))]


def test_a_backend_returning_nan_fails(monkeypatch):
    install(monkeypatch, triton=FakeBackend(scale_2d=float("nan")).load)
    verdict = kernels.check_verdict("triton", CPU, torch.float32)
    assert not verdict.passed and verdict.difference == float("inf") and verdict.worst.startswith("2d ")


def test_check_runs_once_per_key_per_process(monkeypatch):
    right = FakeBackend(delay=0.05)  # a slow first load widens any race between threads
    checks = install(monkeypatch, triton=right.load)
    x = make_2d(1, 4, 3, 4, 5, 4)
    threads = [threading.Thread(target=lambda: kernels.resolve_backend("auto", CPU, torch.float32)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cross_scan_2d(**x)
    selective_scan(**make_1d(1, 4, 2, 5))
    half = {k: v.detach().bfloat16() if k in ("u", "delta", "B", "C") else v.detach() for k, v in x.items()}
    cross_scan_2d(**half)
    cross_scan_2d(**half)
    assert checks == [("triton", "cpu", torch.float32), ("triton", "cpu", torch.bfloat16)]
    assert [(v.dtype, v.passed) for v in self_check.cached_verdicts()] == [("float32", True), ("bfloat16", True)]
    assert right.calls.count(("2d", (1, 4, 4, 5))) == 3  # every user call ran on the trusted backend


def test_explicit_backend_raises_with_the_numbers_and_never_falls_back(monkeypatch):
    allow_named_triton_on_cpu(monkeypatch)
    wrong = FakeBackend(scale_2d=1.05)
    install(monkeypatch, triton=wrong.load)
    x = make_2d(1, 4, 3, 4, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SelfCheckError) as info:
            cross_scan_2d(**x, backend="triton")
    assert str(info.value).startswith("scan backend 'triton' failed its self-check on cpu with float32 inputs in ")
    assert "largest difference 5.0e-02 (2d " in str(info.value)
    assert "against the torch backend, > tolerance 1e-04. Use backend='auto' (it falls back) or 'torch'" in str(info.value)
    assert info.value.verdict.difference == pytest.approx(0.05, rel=1e-3)
    assert ("2d", (1, 4, 4, 5)) not in wrong.calls


def test_explicit_backend_raises_the_checks_error(monkeypatch):
    allow_named_triton_on_cpu(monkeypatch)
    install(monkeypatch, triton=FakeBackend(error=RuntimeError("CUDA error: an illegal memory access")).load)
    with pytest.raises(SelfCheckError, match=r"bfloat16 inputs in .*raised RuntimeError: CUDA error: an illegal memory"):
        selective_scan(**make_1d(1, 4, 2, 5, dtype=torch.bfloat16), backend="triton")


def test_explicit_backend_that_passes_runs_without_a_warning(monkeypatch):
    allow_named_triton_on_cpu(monkeypatch)
    right = FakeBackend()
    install(monkeypatch, triton=right.load)
    x = make_2d(1, 4, 3, 4, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cross_scan_2d(**x, backend="triton")
    torch.testing.assert_close(out, cross_scan_2d(**x, backend="torch"))
    assert right.calls[-1] == ("2d", (1, 4, 4, 5))


def test_check_runs_under_inference_mode_and_leaves_the_global_rng_alone(monkeypatch):
    """ComfyUI calls the model under inference_mode: the check must still take gradients."""
    install(monkeypatch, triton=FakeBackend().load)
    x = {k: v.detach() for k, v in make_2d(1, 4, 3, 4, 5, 4).items()}
    rng = torch.get_rng_state()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")
        cross_scan_2d(**x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert self_check.cached_verdicts()[0].passed


@pytest.mark.parametrize("dtype,largest", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_real_check_compares_the_sequential_reference(dtype, largest):
    """The check on a real, independent implementation: small non-zero differences, named and timed."""
    verdict = self_check.run_check("reference", kernels.IMPLEMENTATIONS["reference"], CPU, dtype)
    assert verdict.passed and verdict.error is None and verdict.seconds > 0
    assert 0 < verdict.difference < largest
    assert verdict.worst.split()[0] in ("1d", "2d", "temporal")
    assert verdict.summary().startswith(f"scan backend 'reference' passed its self-check on cpu with {verdict.dtype} inputs")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_check_catches_a_state_lost_at_a_chunk_boundary(dtype):
    """The problem is longer than one 32-step chunk of the Triton kernels, and the state carries far enough
    across it, that a kernel restarting from zero there fails clearly, in bf16 too."""

    def restarts_at_32(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        halves = [TORCH_1D(u[..., part], delta[..., part], A, B[..., part], C[..., part], D,
                           None if z is None else z[..., part], delta_bias, delta_softplus, True)
                  for part in (slice(0, 32), slice(32, None))]
        y = torch.cat([y for y, _ in halves], dim=-1)
        return (y, halves[-1][1]) if return_last_state else y

    verdict = self_check.run_check("chunked wrong", lambda: (restarts_at_32, TORCH_2D, TORCH_TEMPORAL), CPU, dtype)
    assert not verdict.passed and verdict.worst.startswith("1d ") and verdict.difference > 0.3


def test_check_covers_the_temporal_scan(monkeypatch):
    """A backend right in 1D and 2D but off by 1 % in its temporal scan is not trusted for video either."""
    install(monkeypatch, triton=FakeBackend(scale_temporal=1.01).load)
    verdict = kernels.check_verdict("triton", CPU, torch.float32)
    assert not verdict.passed and verdict.worst.startswith("temporal ")  # output and every gradient are 1 % off
    assert verdict.difference == pytest.approx(0.01, rel=1e-3)


def test_check_catches_a_temporal_scan_ignoring_the_initial_state():
    """The temporal problem starts from a random state whose effect and gradient are compared."""

    def zero_start(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, initial_state=None):
        return TORCH_TEMPORAL(u, delta, A, B, C, D, delta_bias, delta_softplus, None)

    verdict = self_check.run_check("zero start", lambda: (TORCH_1D, TORCH_2D, zero_start), CPU, torch.float32)
    assert not verdict.passed and verdict.worst.startswith("temporal ") and verdict.difference > 0.1


def test_check_refuses_non_float_inputs():
    with pytest.raises(ValueError, match=r"scan inputs must be floating point .*got torch.int64"):
        self_check.run_check("triton", kernels.IMPLEMENTATIONS["torch"], CPU, torch.int64)
