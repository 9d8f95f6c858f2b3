"""Triton kernels (forward and hand-written backward) against the reference, under TRITON_INTERPRET=1 on CPU.

Triton decides at kernel definition whether to interpret, so the cases run in a child process that sets
the flag before importing anything: it never reaches the other tests of this pytest process. The child
prints the largest errors as JSON; the tests here assert on them. The interpreter is slow, so shapes are
tiny and ``CHUNK``/``BLOCK_D`` are shrunk so that they still span several chunks and channel blocks.

``STYLEMAMBA_TRITON_DEVICE=cuda`` runs the same cases compiled on the GPU instead (benchmarks/gpu_suite.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch

#: Where the child runs the kernels: "cpu" under the interpreter, or "cuda" compiled.
DEVICE = os.environ.get("STYLEMAMBA_TRITON_DEVICE", "cpu")

CASES = {
    # name: tolerance on the largest error relative to the reference's largest magnitude
    "1d_grouped_all_options": 1e-5,
    "1d_plain_two_channel_blocks": 1e-5,
    "1d_bf16": 3e-2,
    "1d_extreme_delta": 1e-5,
    "2d_four_directions": 1e-5,
    "2d_two_directions": 1e-5,
    "2d_one_direction": 1e-5,
    "1d_initial_state": 1e-5,
    "temporal_two_directions": 1e-5,
    "temporal_forward_zero_start": 1e-5,
    "temporal_bf16": 3e-2,
}


def _rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


def _relative_errors(out, ref, inputs) -> dict[str, float]:
    cotangent = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref)
    got = torch.autograd.grad(out, inputs, cotangent)
    want = torch.autograd.grad(ref, inputs, cotangent)
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in got)
    return dict(values=_rel(out, ref), grads=max(_rel(g, w) for g, w in zip(got, want)), finite=finite)


def run_self_checks() -> dict[str, dict]:
    """The self-check ``backend='triton'`` runs before first use, on the real kernels at their real block
    sizes, per dtype; explicit use must then pass without checking again (child process only)."""
    import dataclasses

    from comfyui_stylemamba.kernels import resolve_backend, self_check

    device = torch.device(DEVICE)
    verdicts = {}
    for dtype in (torch.float32, torch.bfloat16):
        assert resolve_backend("triton", device, dtype) == "triton"
        verdicts[str(dtype)] = dataclasses.asdict(self_check.cached_verdicts()[-1])
    assert len(self_check.cached_verdicts()) == 2
    return verdicts


def run_cases() -> dict[str, dict[str, float]]:
    """Every case on backend='triton' and 'reference' (child process only); checks first, at real sizes."""
    from comfyui_stylemamba.kernels import cross_scan_2d, selective_scan, temporal_scan, triton_scan
    from test_kernels import make_1d, make_2d
    from test_kernels_temporal import make_video

    results: dict = {"self_check": run_self_checks()}
    triton_scan.CHUNK, triton_scan.BLOCK_D = 4, 4

    def on_device(x: dict) -> dict:
        return {k: v.detach().to(DEVICE).requires_grad_(v.requires_grad) for k, v in x.items()}

    def one_d(name, x, inputs, **options):
        out = selective_scan(**x, **options, backend="triton")
        ref = selective_scan(**x, **options, backend="reference")
        results[name] = _relative_errors(out, ref, inputs)

    x = on_device(make_1d(2, 6, 3, 9, groups=2))
    out, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="triton")
    ref, ref_last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="reference")
    results["1d_grouped_all_options"] = _relative_errors(out, ref, list(x.values()))
    results["1d_grouped_all_options"]["last_state"] = (last - ref_last).abs().max().item()

    x = on_device(make_1d(1, 5, 4, 7))
    core = {k: x[k] for k in ("u", "delta", "A", "B", "C")}
    one_d("1d_plain_two_channel_blocks", core, list(core.values()))

    x = on_device(make_1d(1, 4, 4, 6, groups=2, dtype=torch.bfloat16))
    one_d("1d_bf16", x, [x[k] for k in ("u", "delta", "B", "C", "z")], delta_softplus=True)

    x = make_1d(1, 4, 4, 6)
    extreme = {k: x[k] for k in ("u", "B", "C")}
    extreme["delta"] = (torch.rand(1, 4, 6, generator=torch.Generator().manual_seed(3)) * 1e4).requires_grad_()
    extreme["A"] = torch.full((4, 4), -50.0, requires_grad=True)
    extreme = on_device(extreme)
    one_d("1d_extreme_delta", extreme, list(extreme.values()), delta_softplus=True)

    for name, shape in [("2d_four_directions", (1, 5, 3, 3, 2, 4)), ("2d_two_directions", (2, 3, 2, 2, 3, 2)),
                        ("2d_one_direction", (1, 3, 2, 1, 5, 1))]:
        x = on_device(make_2d(*shape))
        out = cross_scan_2d(**x, backend="triton")
        ref = cross_scan_2d(**x, backend="reference")
        results[name] = _relative_errors(out, ref, list(x.values()))

    x = on_device(make_1d(2, 6, 3, 9, groups=2))
    init = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(4), device=DEVICE).requires_grad_()
    out, last = selective_scan(**x, delta_softplus=True, return_last_state=True, initial_state=init, backend="triton")
    ref, ref_last = selective_scan(**x, delta_softplus=True, return_last_state=True, initial_state=init, backend="reference")
    results["1d_initial_state"] = _relative_errors(out, ref, [*x.values(), init])
    results["1d_initial_state"]["last_state"] = _rel(last, ref_last)

    def temporal(name, x):
        out, last = temporal_scan(**x, backend="triton")
        ref, ref_last = temporal_scan(**x, backend="reference")
        results[name] = _relative_errors(out, ref, [v for v in x.values() if v is not None])
        results[name]["last_state"] = _rel(last, ref_last)

    # 7 frames over chunks of 4 steps, 5 channels over blocks of 4, H ≠ W: every offset path of the TIME order.
    temporal("temporal_two_directions", on_device(make_video(batch=2, dim=5, frames=7, height=2, width=3, d_state=3)))
    temporal("temporal_forward_zero_start", {**on_device(make_video(dim=5, frames=6, directions=1)), "initial_state": None})
    half = {k: (v.detach().bfloat16().requires_grad_() if k in ("u", "delta", "B", "C") else v)
            for k, v in make_video(dim=4, frames=5, height=1, width=2).items()}
    temporal("temporal_bf16", on_device(half))

    # Chunks of 3, 2 and 2 frames, each from the previous chunk's last state, against one pass.
    x = {k: v.detach() for k, v in on_device(make_video(dim=5, frames=7, directions=1)).items()}
    whole, whole_last = temporal_scan(**x, backend="triton")
    state, pieces = x["initial_state"], []
    for start, stop in ((0, 3), (3, 5), (5, 7)):
        chunk = {**x, "initial_state": state, "u": x["u"][:, :, start:stop]}
        chunk.update({k: x[k][:, :, :, start:stop] for k in ("delta", "B", "C")})
        y, state = temporal_scan(**chunk, backend="triton")
        pieces.append(y)
    results["temporal_chunked"] = dict(values=_rel(torch.cat(pieces, dim=2), whole), last_state=_rel(state, whole_last))
    return results


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict[str, float]]:
    pytest.importorskip("triton", reason="triton is not installed: pip install .[test]")
    if DEVICE == "cpu":
        env = {**os.environ, "TRITON_INTERPRET": "1"}
    else:
        if not torch.cuda.is_available():
            pytest.skip(f"STYLEMAMBA_TRITON_DEVICE={DEVICE} but no CUDA device is available")
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run(
        [sys.executable, __file__], env=env, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(interpreted, case):
    errors = interpreted[case]
    assert errors["finite"], f"{case}: non-finite output or gradient"
    assert errors["values"] < CASES[case], f"{case}: values off by {errors['values']:.2e}"
    assert errors["grads"] < CASES[case], f"{case}: gradients off by {errors['grads']:.2e}"


@pytest.mark.parametrize(
    "case", ["1d_grouped_all_options", "1d_initial_state", "temporal_two_directions", "temporal_forward_zero_start"]
)
def test_triton_returns_the_last_state(interpreted, case):
    assert interpreted[case]["last_state"] < 1e-5


def test_triton_temporal_scan_in_chunks_equals_one_pass(interpreted):
    """The fused kernel's own last state, handed on as the next chunk's initial state, loses nothing."""
    assert interpreted["temporal_chunked"]["values"] < 1e-6
    assert interpreted["temporal_chunked"]["last_state"] < 1e-6


@pytest.mark.parametrize("dtype,tolerance", [("torch.float32", 1e-4), ("torch.bfloat16", 3e-2)])
def test_self_check_passes_on_the_interpreted_kernels(interpreted, dtype, tolerance):
    """The check itself on real kernels: it compares, finds them within its tolerance, and says so."""
    verdict = interpreted["self_check"][dtype]
    assert verdict["backend"] == "triton" and verdict["device"].startswith(DEVICE) and verdict["error"] is None
    assert verdict["passed"] and verdict["tolerance"] == tolerance
    # well inside the tolerance: fp32 noise, or bf16 rounding of outputs and gradients (1 unit is 2**-8)
    assert verdict["difference"] < tolerance / 3


if __name__ == "__main__":  # run as a script, this file's folder (tests/) is sys.path[0]: its helpers import from there
    print(json.dumps(run_cases()))
