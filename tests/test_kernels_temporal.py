"""The scan along time: initial states, the temporal layout, carried state across chunks, and the compiled-backend path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba import kernels
from comfyui_stylemamba.kernels import mamba_backend, selective_scan, temporal_scan
from comfyui_stylemamba.kernels.reference import selective_scan_reference
from comfyui_stylemamba.kernels.temporal import with_initial_state
from comfyui_stylemamba.kernels.torch_backend import selective_scan_torch

from test_kernels import make_1d


def make_video(batch=2, dim=3, frames=7, height=2, width=3, d_state=4, directions=2, seed=0):
    """Random temporal-scan inputs, including an initial state per direction and position."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    per_direction = (batch, directions, d_state, frames, height, width)
    return dict(
        u=rand(batch, dim, frames, height, width),
        delta=rand(batch, directions, dim, frames, height, width, scale=0.5),
        A=(-torch.rand(directions, dim, d_state, generator=gen) * 2 - 0.1).requires_grad_(),
        B=rand(*per_direction),
        C=rand(*per_direction),
        D=rand(directions, dim),
        delta_bias=rand(directions, dim, scale=0.3),
        initial_state=rand(batch, directions, dim, height, width, d_state),
    )


def temporal_truth(u, delta, A, B, C, D, delta_bias, initial_state):
    """Frame by frame on the 5-D grid itself: direction 0 visits t = 0..T-1, direction 1 visits T-1..0."""
    frames, directions = u.shape[2], delta.shape[1]
    y = torch.zeros_like(u)
    last = []
    for k in range(directions):
        h = initial_state[:, k]  # (b, d, H, W, n)
        order = range(frames) if k == 0 else reversed(range(frames))
        ys = {}
        for t in order:
            dt = F.softplus(delta[:, k, :, t] + delta_bias[k][:, None, None])  # (b, d, H, W)
            decay = torch.exp(dt[..., None] * A[k][:, None, None, :])
            h = decay * h + (dt * u[:, :, t])[..., None] * B[:, k, :, t].permute(0, 2, 3, 1)[:, None]
            ys[t] = (h * C[:, k, :, t].permute(0, 2, 3, 1)[:, None]).sum(-1) + D[k][:, None, None] * u[:, :, t]
        y = y + torch.stack([ys[t] for t in range(frames)], dim=2)
        last.append(h)
    return y, torch.stack(last, dim=1)


def grads(outputs, inputs, seed=1):
    """Gradients of a fixed random cotangent of ``outputs`` w.r.t. ``inputs``."""
    gen = torch.Generator().manual_seed(seed)
    total = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outputs)
    return torch.autograd.grad(total, inputs)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("groups", [None, 2])
def test_selective_scan_starts_from_initial_state(backend, groups):
    inputs = make_1d(2, 6, 4, 23, groups=groups)
    init = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(3)).requires_grad_()
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, initial_state=init, backend=backend)
    # Truth: the zero-start reference run on a sequence whose first step lands exactly on ``init``.
    ref, ref_last = selective_scan_reference(**inputs, delta_softplus=True, return_last_state=True, initial_state=init)
    zero_start = selective_scan_reference(**inputs, delta_softplus=True)
    assert (ref - zero_start).abs().max() > 1e-2  # the initial state matters in this problem
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-5)
    leaves = [*inputs.values(), init]
    for got, want in zip(grads([out], leaves), grads([ref], leaves)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))


def test_initial_state_splits_a_sequence_exactly():
    """Scanning [0, 30) then [30, 57) from the first half's last state equals one scan of all 57 steps."""
    inputs = make_1d(2, 5, 3, 57, groups=None)
    whole, whole_last = selective_scan_torch(**inputs, delta_softplus=True, return_last_state=True)
    first = {k: (v[..., :30] if v.dim() == 3 and v.shape[-1] == 57 else v) for k, v in inputs.items()}
    second = {k: (v[..., 30:] if v.dim() == 3 and v.shape[-1] == 57 else v) for k, v in inputs.items()}
    y1, state = selective_scan_torch(**first, delta_softplus=True, return_last_state=True)
    y2, last = selective_scan_torch(**second, delta_softplus=True, return_last_state=True, initial_state=state)
    torch.testing.assert_close(torch.cat([y1, y2], -1), whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(last, whole_last, rtol=1e-5, atol=1e-6)


def test_compiled_backends_get_the_initial_state_by_linearity():
    """``with_initial_state`` around a scan without one (as mamba-ssm's is) equals the native path."""
    inputs = make_1d(3, 6, 4, 19, groups=2)
    init = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(5)).requires_grad_()
    out, last = with_initial_state(
        selective_scan_torch, **inputs, delta_softplus=True, return_last_state=True, initial_state=init
    )
    ref, ref_last = selective_scan_reference(**inputs, delta_softplus=True, return_last_state=True, initial_state=init)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, ref_last, rtol=1e-4, atol=1e-5)
    assert not last.requires_grad
    leaves = [*inputs.values(), init]
    for got, want in zip(grads([out], leaves), grads([ref], leaves)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("directions", [1, 2])
def test_temporal_scan_matches_frame_loop(backend, directions):
    inputs = make_video(directions=directions)
    y, last = temporal_scan(**inputs, backend=backend)
    want_y, want_last = temporal_truth(**inputs)
    assert y.shape == (2, 3, 7, 2, 3) and last.shape == (2, directions, 3, 2, 3, 4)
    torch.testing.assert_close(y, want_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, want_last, rtol=1e-4, atol=1e-5)
    leaves = list(inputs.values())
    for got, want in zip(grads([y], leaves), grads([want_y], leaves)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))


def test_temporal_scan_in_chunks_carries_the_state():
    """Forward direction: chunks of 3, 2 and 2 frames, each starting from the previous last state, equal one pass."""
    inputs = make_video(frames=7, directions=1)
    whole, whole_last = temporal_scan(**inputs, backend="torch")
    state, pieces = inputs["initial_state"], []
    for start, stop in ((0, 3), (3, 5), (5, 7)):
        chunk = dict(inputs, initial_state=state)
        for name in ("u",):
            chunk[name] = inputs[name][:, :, start:stop]
        for name in ("delta", "B", "C"):
            chunk[name] = inputs[name][:, :, :, start:stop]
        y, state = temporal_scan(**chunk, backend="torch")
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, dim=2), whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, whole_last, rtol=1e-5, atol=1e-6)


def test_temporal_scan_runs_compiled_backends_through_the_self_check(monkeypatch):
    """mamba-ssm's loader, on a fake scan without an initial state, is self-checked before the temporal scan
    uses it, and gets the state by linearity."""
    calls = []

    def fake_mamba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        calls.append("1d")
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    monkeypatch.setattr(mamba_backend, "selective_scan_mamba", fake_mamba)
    monkeypatch.setattr(kernels, "_require_runnable", lambda backend, device: None)
    kernels.self_check.forget()
    try:
        inputs = make_video(directions=2)
        y, last = temporal_scan(**inputs, backend="mamba_ssm")
        verdicts = [v for v in kernels.self_check.cached_verdicts() if v.backend == "mamba_ssm"]
    finally:
        kernels.self_check.forget()
    assert len(verdicts) == 1 and verdicts[0].passed
    want_y, want_last = temporal_truth(**inputs)
    torch.testing.assert_close(y, want_y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last, want_last, rtol=1e-4, atol=1e-5)
    assert calls


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(u=torch.zeros(2, 3, 7, 2)), "temporal_scan takes u as (batch, dim, frames, height, width), got shape (2, 3, 7, 2)"),
        (dict(delta=torch.zeros(2, 4, 3, 7, 2, 3)), "1 (forward) or 2 (forward and backward) directions, got 4"),
        (dict(initial_state=torch.zeros(2, 2, 3, 3, 2, 4)), "initial_state must be (2, 2, 3, 2, 3, 4) for this grid, got (2, 2, 3, 3, 2, 4)"),
    ],
)
def test_temporal_scan_rejects_bad_shapes(change, message):
    inputs = {**make_video(directions=2), **change}
    with pytest.raises(ValueError) as error:
        temporal_scan(**inputs, backend="torch")
    assert message in str(error.value)
