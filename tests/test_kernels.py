"""Scan backends against the sequential reference: values, gradients, 2D layout, dispatch and errors.

The Triton kernels run under the interpreter in their own process: see test_kernels_triton.py.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba import kernels
from comfyui_stylemamba.kernels import cross_scan_2d, resolve_backend, selective_scan
from comfyui_stylemamba.kernels import mamba_backend
from comfyui_stylemamba.kernels.layout import cross_scan_by_copies
from comfyui_stylemamba.kernels.reference import selective_scan_reference


def make_1d(batch, dim, d_state, length, groups=None, dtype=torch.float32, seed=0):
    """Random scan inputs in mamba-ssm layout; B/C 3-D when ``groups`` is None."""
    gen = torch.Generator().manual_seed(seed)
    bc = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).requires_grad_()

    return dict(
        u=rand(batch, dim, length),
        # Positive Δ (decaying state) also without softplus, as in real models.
        delta=(torch.rand(batch, dim, length, generator=gen) * 0.8 + 0.05).to(dtype).requires_grad_(),
        A=(-torch.rand(dim, d_state, generator=gen) * 2 - 0.1).requires_grad_(),
        B=rand(*bc),
        C=rand(*bc),
        D=torch.randn(dim, generator=gen).requires_grad_(),
        z=rand(batch, dim, length),
        delta_bias=(torch.rand(dim, generator=gen) * 0.3).requires_grad_(),
    )


def assert_close_with_grads(out, ref, inputs, rtol, atol):
    """Values equal, and the gradients of a random cotangent equal for every input that takes one."""
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=atol)
    cotangent = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)).to(ref.dtype)
    got = torch.autograd.grad(out, inputs, cotangent)
    want = torch.autograd.grad(ref, inputs, cotangent)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=atol * max(1.0, w.abs().max().item()))


CASES_1D = [
    # batch, dim, d_state, L, groups, use D/z/bias, softplus
    (1, 5, 4, 1, None, False, False),
    (2, 7, 3, 37, None, True, True),
    (3, 6, 4, 17, 2, True, False),
    (2, 8, 16, 100, 4, False, True),
    (1, 3, 2, 64, 1, True, True),
]


@pytest.mark.parametrize("batch,dim,d_state,length,groups,extras,softplus", CASES_1D)
def test_torch_selective_scan_matches_reference_fp32(batch, dim, d_state, length, groups, extras, softplus):
    x = make_1d(batch, dim, d_state, length, groups)
    opts = {k: x[k] for k in ("D", "z", "delta_bias")} if extras else {}
    inputs = [x[k] for k in ("u", "delta", "A", "B", "C")] + list(opts.values())
    out, last = selective_scan(**{k: x[k] for k in "u delta A B C".split()}, **opts, delta_softplus=softplus,
                               return_last_state=True, backend="torch")
    ref, ref_last = selective_scan(**{k: x[k] for k in "u delta A B C".split()}, **opts, delta_softplus=softplus,
                                   return_last_state=True, backend="reference")
    assert out.shape == (batch, dim, length) and last.shape == (batch, dim, d_state)
    torch.testing.assert_close(last, ref_last.detach(), rtol=1e-5, atol=1e-5)
    assert_close_with_grads(out, ref, inputs, rtol=1e-4, atol=1e-5)


def test_torch_selective_scan_matches_reference_bf16():
    x = make_1d(2, 6, 4, 29, groups=2, dtype=torch.bfloat16)
    inputs = [x[k] for k in ("u", "delta", "B", "C", "z")]
    kwargs = dict(x, delta_softplus=True)
    out = selective_scan(**kwargs, backend="torch")
    ref = selective_scan(**kwargs, backend="reference")
    assert out.dtype == torch.bfloat16
    assert_close_with_grads(out, ref, inputs, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("scale", [1e4, 1e-6])
def test_torch_scan_survives_extreme_delta(scale):
    """Huge Δ (state reset every step) and vanishing Δ stay finite and equal to the reference."""
    x = make_1d(1, 4, 16, 300)
    delta = (torch.rand(1, 4, 300, generator=torch.Generator().manual_seed(3)) * scale).requires_grad_()
    A = torch.full((4, 16), -50.0).requires_grad_()
    inputs = [x["u"], delta, A, x["B"], x["C"]]
    out = selective_scan(x["u"], delta, A, x["B"], x["C"], delta_softplus=True, backend="torch")
    ref = selective_scan(x["u"], delta, A, x["B"], x["C"], delta_softplus=True, backend="reference")
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out.sum(), inputs, retain_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    assert_close_with_grads(out, ref, inputs, rtol=1e-4, atol=1e-5)


def grid_orders(height: int, width: int) -> list[list[int]]:
    """Row-major, column-major and both reversed, written out independently of kernels.layout."""
    row = [i * width + j for i in range(height) for j in range(width)]
    column = [i * width + j for j in range(width) for i in range(height)]
    return [row, column, row[::-1], column[::-1]]


def make_2d(batch, dim, d_state, height, width, directions, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    return dict(
        u=rand(batch, dim, height, width),
        delta=rand(batch, directions, dim, height, width, scale=0.5),
        A=(-torch.rand(directions, dim, d_state, generator=gen) * 2 - 0.1).requires_grad_(),
        B=rand(batch, directions, d_state, height, width),
        C=rand(batch, directions, d_state, height, width),
        D=rand(directions, dim),
        delta_bias=rand(directions, dim, scale=0.5),
    )


def explicit_cross_scan(x: dict) -> torch.Tensor:
    """Each direction gathered by hand, scanned alone with the reference, scattered back, summed."""
    batch, dim, height, width = x["u"].shape
    total = torch.zeros(batch, dim, height * width)
    for k in range(x["delta"].shape[1]):
        order = torch.tensor(grid_orders(height, width)[k])
        y = selective_scan_reference(
            x["u"].flatten(2)[..., order], x["delta"][:, k].flatten(2)[..., order], x["A"][k],
            x["B"][:, k].flatten(2)[..., order], x["C"][:, k].flatten(2)[..., order],
            D=x["D"][k], delta_bias=x["delta_bias"][k], delta_softplus=True,
        )
        total = total.index_add(-1, order, y)
    return total.reshape(batch, dim, height, width)


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("batch,dim,height,width,directions", [(2, 5, 3, 7, 4), (1, 4, 6, 4, 2), (2, 3, 5, 1, 1)])
def test_cross_scan_equals_explicit_directions(backend, batch, dim, height, width, directions):
    x = make_2d(batch, dim, 4, height, width, directions)
    out = cross_scan_2d(**x, backend=backend)
    assert out.shape == (batch, dim, height, width)
    assert_close_with_grads(out, explicit_cross_scan(x), list(x.values()), rtol=1e-4, atol=1e-5)


def test_torch_cross_scan_under_inference_mode():
    """ComfyUI runs nodes under torch.inference_mode(): the autograd Function must still just work."""
    x = make_2d(1, 4, 3, 5, 3, 4)
    want = explicit_cross_scan(x).detach()
    with torch.inference_mode():
        got = cross_scan_2d(**{k: v.detach().clone() for k, v in x.items()}, backend="auto")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cross_scan_without_optional_terms():
    x = make_2d(1, 4, 3, 4, 5, 4)
    args = [x[k] for k in ("u", "delta", "A", "B", "C")]
    out = cross_scan_2d(*args, delta_softplus=False, backend="torch")
    ref = cross_scan_2d(*args, delta_softplus=False, backend="reference")
    assert_close_with_grads(out, ref, args, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "device,importable,expected",
    [
        ("cpu", {"triton", "mamba_ssm.ops.selective_scan_interface"}, "torch"),
        ("mps", {"triton"}, "torch"),
        ("cuda", {"triton", "mamba_ssm.ops.selective_scan_interface"}, "mamba_ssm"),
        ("cuda", {"triton"}, "triton"),
        ("cuda", {"mamba_ssm.ops.selective_scan_interface"}, "mamba_ssm"),
        ("cuda", set(), "torch"),
    ],
)
def test_auto_picks_backend_per_device(monkeypatch, device, importable, expected):
    monkeypatch.setattr(kernels, "_importable", lambda name: name in importable)
    assert resolve_backend("auto", torch.device(device)) == expected


def test_unknown_backend_is_named():
    x = make_1d(1, 2, 2, 3)
    with pytest.raises(ValueError, match=r"unknown scan backend 'cuda'.*reference, torch, triton, mamba_ssm"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="cuda")


def test_cross_scan_rejects_three_directions():
    x = make_2d(1, 2, 2, 3, 3, 4)
    with pytest.raises(ValueError, match="1, 2 or 4 directions, got 3"):
        cross_scan_2d(x["u"], x["delta"][:, :3], x["A"][:3], x["B"][:, :3], x["C"][:, :3])


def test_unavailable_backends_say_how_to_get_them(monkeypatch):
    x = make_1d(1, 2, 2, 3)
    args = [x[k] for k in ("u", "delta", "A", "B", "C")]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(kernels, "_importable", lambda name: name == "triton")
    with pytest.raises(RuntimeError, match=r"needs a CUDA device.*TRITON_INTERPRET=1"):
        selective_scan(*args, backend="triton")
    monkeypatch.setattr(kernels, "_importable", lambda name: False)
    with pytest.raises(RuntimeError, match=r"pip install triton"):
        selective_scan(*args, backend="triton")
    with pytest.raises(RuntimeError, match=r"'mamba_ssm' needs CUDA tensors, got cpu"):
        selective_scan(*args, backend="mamba_ssm")
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # what a missing package looks like to import
    with pytest.raises(RuntimeError, match=r"pip install \.\[cuda\]"):
        mamba_backend.load_selective_scan_fn()


def _fake_mamba(monkeypatch, with_cu_seqlens: bool) -> list[dict]:
    """Install a stand-in mamba_ssm whose selective_scan_fn is the reference and records its calls."""
    calls: list[dict] = []

    def record(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        calls.append(dict(u=tuple(u.shape), B=tuple(B.shape), D=D))
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    if with_cu_seqlens:  # newer releases insert a parameter before the trailing flags
        def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              cu_seqlens=None, return_last_state=False):
            assert cu_seqlens is None
            return record(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    else:
        def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                              return_last_state=False):
            return record(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = selective_scan_fn
    modules = [("mamba_ssm", types.ModuleType("mamba_ssm")), ("mamba_ssm.ops", types.ModuleType("mamba_ssm.ops")),
               ("mamba_ssm.ops.selective_scan_interface", interface)]
    for name, module in modules:
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["mamba_ssm"].ops = sys.modules["mamba_ssm.ops"]
    sys.modules["mamba_ssm.ops"].selective_scan_interface = interface
    return calls


@pytest.mark.parametrize("with_cu_seqlens", [False, True])
def test_mamba_backend_forwards_every_option(monkeypatch, with_cu_seqlens):
    calls = _fake_mamba(monkeypatch, with_cu_seqlens)
    x = make_1d(2, 6, 3, 11, groups=3)
    out, last = mamba_backend.selective_scan_mamba(**x, delta_softplus=True, return_last_state=True)
    ref, ref_last = selective_scan_reference(**x, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(last, ref_last)
    assert calls[0]["u"] == (2, 6, 11) and calls[0]["D"].dtype == torch.float32


def test_mamba_cross_scan_uses_grouped_copies(monkeypatch):
    calls = _fake_mamba(monkeypatch, with_cu_seqlens=False)
    x = make_2d(2, 3, 4, 3, 5, 4)
    out = cross_scan_by_copies(mamba_backend.selective_scan_mamba, **x)
    torch.testing.assert_close(out, explicit_cross_scan(x), rtol=1e-5, atol=1e-5)
    assert calls == [dict(u=(2, 4 * 3, 15), B=(2, 4, 4, 15), D=calls[0]["D"])]
    assert calls[0]["D"].shape == (4 * 3,)


def test_mamba_backend_splits_batches_past_int32_offsets(monkeypatch):
    calls = _fake_mamba(monkeypatch, with_cu_seqlens=False)
    x = make_1d(5, 4, 2, 6)
    monkeypatch.setattr(mamba_backend, "INT32_ELEMENTS", 2 * 4 * 6)  # room for two samples per call
    out = mamba_backend.selective_scan_mamba(**x)
    torch.testing.assert_close(out, selective_scan_reference(**x))
    assert [c["u"][0] for c in calls] == [2, 2, 1]
    monkeypatch.setattr(mamba_backend, "INT32_ELEMENTS", 4 * 6 - 1)
    with pytest.raises(ValueError, match="exceeds mamba-ssm's int32 offsets"):
        mamba_backend.selective_scan_mamba(**x)


def test_prepare_delta_matches_mamba_semantics():
    """Δ = softplus(delta + bias) in fp32, the convention every backend shares."""
    delta, bias = torch.randn(2, 3, 4, dtype=torch.bfloat16), torch.randn(3)
    from comfyui_stylemamba.kernels.reference import prepare_delta

    torch.testing.assert_close(prepare_delta(delta, bias, True), F.softplus(delta.float() + bias[:, None]))
