"""Triton kernels (forward and hand-written backward) against the reference, under TRITON_INTERPRET=1 on CPU.

Triton decides at kernel definition whether to interpret, so the cases run in a child process that sets
the flag before importing anything: it never reaches the other tests of this pytest process. The child
prints the largest errors as JSON; the tests here assert on them. The interpreter is slow, so shapes are
tiny and ``CHUNK``/``BLOCK_D`` are shrunk so that they still span several chunks and channel blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch

CASES = {
    # name: tolerance on the largest error relative to the reference's largest magnitude
    "1d_grouped_all_options": 1e-5,
    "1d_plain_two_channel_blocks": 1e-5,
    "1d_bf16": 3e-2,
    "1d_extreme_delta": 1e-5,
    "2d_four_directions": 1e-5,
    "2d_two_directions": 1e-5,
    "2d_one_direction": 1e-5,
}


def _relative_errors(out, ref, inputs) -> dict[str, float]:
    cotangent = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref.dtype)
    got = torch.autograd.grad(out, inputs, cotangent)
    want = torch.autograd.grad(ref, inputs, cotangent)
    finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in got)

    def rel(a, b):
        return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()

    return dict(values=rel(out, ref), grads=max(rel(g, w) for g, w in zip(got, want)), finite=finite)


def run_cases() -> dict[str, dict[str, float]]:
    """Every case on backend='triton' and 'reference' (child process only)."""
    from comfyui_stylemamba.kernels import cross_scan_2d, selective_scan, triton_scan
    from test_kernels import make_1d, make_2d

    triton_scan.CHUNK, triton_scan.BLOCK_D = 4, 4
    results = {}

    def one_d(name, x, inputs, **options):
        out = selective_scan(**x, **options, backend="triton")
        ref = selective_scan(**x, **options, backend="reference")
        results[name] = _relative_errors(out, ref, inputs)

    x = make_1d(2, 6, 3, 9, groups=2)
    out, last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="triton")
    ref, ref_last = selective_scan(**x, delta_softplus=True, return_last_state=True, backend="reference")
    results["1d_grouped_all_options"] = _relative_errors(out, ref, list(x.values()))
    results["1d_grouped_all_options"]["last_state"] = (last - ref_last).abs().max().item()

    x = make_1d(1, 5, 4, 7)
    core = {k: x[k] for k in ("u", "delta", "A", "B", "C")}
    one_d("1d_plain_two_channel_blocks", core, list(core.values()))

    x = make_1d(1, 4, 4, 6, groups=2, dtype=torch.bfloat16)
    one_d("1d_bf16", x, [x[k] for k in ("u", "delta", "B", "C", "z")], delta_softplus=True)

    x = make_1d(1, 4, 4, 6)
    extreme = {k: x[k] for k in ("u", "B", "C")}
    extreme["delta"] = (torch.rand(1, 4, 6, generator=torch.Generator().manual_seed(3)) * 1e4).requires_grad_()
    extreme["A"] = torch.full((4, 4), -50.0, requires_grad=True)
    one_d("1d_extreme_delta", extreme, list(extreme.values()), delta_softplus=True)

    for name, shape in [("2d_four_directions", (1, 5, 3, 3, 2, 4)), ("2d_two_directions", (2, 3, 2, 2, 3, 2)),
                        ("2d_one_direction", (1, 3, 2, 1, 5, 1))]:
        x = make_2d(*shape)
        out = cross_scan_2d(**x, backend="triton")
        ref = cross_scan_2d(**x, backend="reference")
        results[name] = _relative_errors(out, ref, list(x.values()))
    return results


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict[str, float]]:
    pytest.importorskip("triton", reason="triton is not installed: pip install .[test]")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
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


def test_triton_returns_the_last_state(interpreted):
    assert interpreted["1d_grouped_all_options"]["last_state"] < 1e-5


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    print(json.dumps(run_cases()))
