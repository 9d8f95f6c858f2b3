"""Pure-torch selective scan for CPU/MPS: a chunk-parallel recurrence in fp32 with a hand-written backward.

Why not the usual chunked ``cumsum`` of log-decays (VMamba's torch path): it divides by ``exp(cumsum(Δ·A))``,
which overflows once a chunk's summed decay passes ~88 in fp32, and it makes five or six passes over
(batch, dim, d_state, L)-sized tensors, which is what bounds a CPU scan.

Here the L steps are cut into ``nc`` chunks of ``T`` steps and the T steps of all chunks advance together:

1. each chunk runs from a zero state, giving its end state;
2. a short loop over chunks carries true start states across (a whole chunk decays by ``exp(A·ΣΔ)``);
3. each chunk reruns from its true start state and emits ``y``.

Every op works on one (batch, dim, d_state, nc) slab that stays in cache, nothing (b, d, n, L)-sized is
materialised in the forward, and every decay is a product of factors ``exp(Δ·A) ≤ 1`` (Δ ≥ 0, A < 0),
so no Δ can overflow. The backward runs the same scheme in reverse time for the adjoint state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layout import group_size

#: Slabs are (batch, groups, dim per group, d_state, chunks); per-step tensors stack T of them.


def chunk_length(length: int) -> int:
    """⌈√L⌉ balances the 2·T in-chunk steps against the nc-step carry loop (measured best at L = 1024–4096)."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def _to_steps(x: torch.Tensor, steps: int, chunks: int) -> torch.Tensor:
    """(..., L) → (T, ..., nc), zero-padded: padded steps have Δ = 0, i.e. decay 1 and no input."""
    x = F.pad(x, (0, steps * chunks - x.shape[-1]))
    return x.reshape(*x.shape[:-1], chunks, steps).movedim(-1, 0).contiguous()


def _from_steps(x: torch.Tensor, length: int) -> torch.Tensor:
    """(T, ..., nc) → (..., L)."""
    x = x.movedim(0, -1)
    return x.reshape(*x.shape[:-2], -1)[..., :length]


def _carry(ends: torch.Tensor, totals: torch.Tensor, init: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Start state of every chunk from its predecessors: s_c = total_{c-1}·s_{c-1} + end_{c-1}.

    ``ends``/``totals`` are (..., nc); returns the (..., nc) start states and the state after the last chunk.
    """
    ends, totals = ends.movedim(-1, 0), totals.movedim(-1, 0)
    starts = torch.empty_like(ends)
    state = init
    for c in range(ends.shape[0]):
        starts[c] = state
        state = torch.addcmul(ends[c], totals[c], state)
    return starts.movedim(0, -1).contiguous(), state


def _sweep(
    slabs: "_Slabs",
    h: torch.Tensor,
    decays: torch.Tensor | None = None,
    C: torch.Tensor | None = None,
    states: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Advance every chunk T steps in place: h ← exp(Δ_t A)·h + (Δu)_t·B_t.

    ``decays`` (T slabs) receives exp(Δ_t A) for the backward's reverse sweeps; the forward does not keep
    them for its second sweep, as redoing the exp in cache measured faster than a (b, dim, d_state, L)
    round trip through memory. With ``C`` returns y_t = Σ_n C_t·h_t as (T, b, g, dg, nc). ``states``
    (T+1 slabs) keeps every state for the backward, states[0] being the start.
    """
    steps = slabs.dt.shape[0]
    scratch = torch.empty_like(h)
    y = h.new_empty((steps, *h.shape[:3], h.shape[-1])) if C is not None else None
    if states is not None:
        states[0].copy_(h)
    for t in range(steps):
        a = decays[t] if decays is not None else scratch
        torch.mul(slabs.dt[t], slabs.A, out=a).exp_()
        h.mul_(a).addcmul_(slabs.x[t], slabs.B[t])
        if states is not None:
            states[t + 1].copy_(h)
        if y is not None:
            torch.sum(torch.mul(h, C[t], out=scratch), dim=-2, out=y[t])
    return y


class _Slabs:
    """The scan inputs cut into chunks and laid out step-major for ``_sweep``."""

    def __init__(self, dt: torch.Tensor, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor):
        batch, dim, length = u.shape
        groups, d_state = B.shape[1], B.shape[2]
        per_group = group_size(dim, groups)
        self.length = length
        self.steps = chunk_length(length)
        self.chunks = -(-length // self.steps)
        self.slab = (batch, groups, per_group, d_state, self.chunks)
        grouped = (batch, groups, per_group, length)
        self.dt = _to_steps(dt.reshape(grouped), self.steps, self.chunks).unsqueeze(-2)
        self.x = _to_steps((dt * u).reshape(grouped), self.steps, self.chunks).unsqueeze(-2)
        self.B = _to_steps(B, self.steps, self.chunks).unsqueeze(3)
        self.C = _to_steps(C, self.steps, self.chunks).unsqueeze(3)
        self.A = A.reshape(groups, per_group, d_state, 1)
        # A whole chunk decays by exp(A·ΣΔ): the sum is over ≤ T steps of a (b, d, nc) tensor.
        self.totals = torch.exp(self.dt.sum(0) * self.A)

    def new_slabs(self, count: int) -> torch.Tensor:
        return self.dt.new_empty((count, *self.slab))


def _reverse_sweep(
    slabs: _Slabs, gy: torch.Tensor, m: torch.Tensor, decays: torch.Tensor, states: torch.Tensor | None = None
) -> dict[str, torch.Tensor] | None:
    """Adjoint recurrence backwards through every chunk in place: λ_t = C_t·gy_t + m, m ← exp(Δ_t A)·λ_t.

    Without ``states`` it only leaves the chunk's outgoing adjoint in ``m`` (pass 1). With the forward
    ``states`` it also accumulates the parameter gradients step by step while λ_t is in cache.
    """
    steps = slabs.dt.shape[0]
    lam, scratch = torch.empty_like(m), torch.empty_like(m)
    if states is None:
        for t in reversed(range(steps)):
            torch.addcmul(m, slabs.C[t], gy[t], out=lam)
            torch.mul(lam, decays[t], out=m)
        return None
    batch, groups, per_group, d_state, chunks = m.shape
    g_x = m.new_empty((steps, batch, groups, per_group, chunks))
    g_B = m.new_empty((steps, batch, groups, d_state, chunks))
    g_C = m.new_empty((steps, batch, groups, d_state, chunks))
    g_decay = m.new_empty((steps, batch, groups, per_group, chunks))
    g_A = torch.zeros_like(m)
    for t in reversed(range(steps)):
        torch.addcmul(m, slabs.C[t], gy[t], out=lam)
        torch.sum(torch.mul(lam, slabs.B[t], out=scratch), dim=-2, out=g_x[t])
        torch.sum(torch.mul(lam, slabs.x[t], out=scratch), dim=2, out=g_B[t])
        torch.sum(torch.mul(states[t + 1], gy[t], out=scratch), dim=2, out=g_C[t])
        # W = λ_t · exp(Δ_t A) · h_{t-1} is the gradient w.r.t. Δ_t·A.
        torch.mul(lam, decays[t], out=scratch).mul_(states[t])
        g_A.addcmul_(scratch, slabs.dt[t])
        torch.sum(scratch.mul_(slabs.A), dim=-2, out=g_decay[t])
        torch.mul(lam, decays[t], out=m)
    return {"x": g_x, "B": g_B, "C": g_C, "decay": g_decay, "A": g_A}


class ChunkedScan(torch.autograd.Function):
    """y = C·h with h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, h_{-1} = init, on fp32 inputs; B/C grouped (b, g, n, L)."""

    @staticmethod
    def forward(ctx, dt, u, A, B, C, init):
        slabs = _Slabs(dt, u, A, B, C)
        ends = dt.new_zeros(slabs.slab)
        _sweep(slabs, ends)
        starts, last = _carry(ends, slabs.totals, init.reshape(slabs.slab[:-1]))
        y = _sweep(slabs, starts.clone(), C=slabs.C)
        ctx.save_for_backward(dt, u, A, B, C, starts)
        ctx.mark_non_differentiable(last)
        batch, dim, _ = u.shape
        return _from_steps(y, slabs.length).reshape(batch, dim, -1), last.reshape(batch, dim, -1)

    @staticmethod
    def backward(ctx, g_y, _g_last):
        """Recompute all states from the saved chunk starts (2 (b, dim, d_state, L) fp32 buffers), then λ.

        The adjoint carried out through the first chunk's start is the gradient of the initial state.
        """
        dt, u, A, B, C, starts = ctx.saved_tensors
        slabs = _Slabs(dt, u, A, B, C)
        batch, groups, per_group, _, _ = slabs.slab
        gy = _to_steps(g_y.float().reshape(batch, groups, per_group, -1), slabs.steps, slabs.chunks).unsqueeze(-2)
        states, decays = slabs.new_slabs(slabs.steps + 1), slabs.new_slabs(slabs.steps)
        _sweep(slabs, starts.clone(), decays, states=states)
        # Adjoint carried into each chunk from the future: ν_{c-1} = total_c·ν_c + (outgoing adjoint of chunk c).
        outgoing = gy.new_zeros(slabs.slab)
        _reverse_sweep(slabs, gy, outgoing, decays)
        carried, g_init = _carry(outgoing.flip(-1), slabs.totals.flip(-1), gy.new_zeros(slabs.slab[:-1]))
        grads = _reverse_sweep(slabs, gy, carried.flip(-1).contiguous(), decays, states)
        dim, length = u.shape[1], slabs.length
        g_x = _from_steps(grads["x"], length).reshape(batch, dim, length)
        g_dt = g_x * u + _from_steps(grads["decay"], length).reshape(batch, dim, length)
        g_A = grads["A"].sum(dim=(0, -1)).reshape(A.shape)
        g_B, g_C = _from_steps(grads["B"], length), _from_steps(grads["C"], length)
        return g_dt, g_x * dt, g_A, g_B, g_C, g_init.reshape(batch, dim, -1)


def chunked_scan(
    dt: torch.Tensor,
    u: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Core scan (no D, z or Δ preprocessing) in fp32; B/C as (b, g, n, L); the state starts at
    ``initial_state`` (b, dim, d_state), zero when None. Returns y and the last state."""
    init = dt.new_zeros((u.shape[0], u.shape[1], A.shape[-1])) if initial_state is None else initial_state
    return ChunkedScan.apply(dt.float(), u.float(), A.float(), B.float(), C.float(), init.float())
