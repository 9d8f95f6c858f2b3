"""The ``triton`` backend: one fused scan kernel pair (forward, hand-written backward) for 1D, 2D and temporal scans.

A program owns (sequence, a block of channels, one direction) and walks the sequence step by step with
its (channels, d_state) state in fp32 registers; fp16/bf16 inputs are upcast on load. Every tensor is
laid out (..., L, P): P sequences interleaved innermost, so step t of sequence p sits at t·P + p. The
1D and 2D scans have P = 1; the temporal scan reads a (b, dim, T, H, W) video in place with P = H·W
(one sequence per spatial position, step stride H·W). ``ORDER`` says how a direction walks its
sequence: ``SEQUENCE`` as stored (1D; directions are B/C groups), ``GRID`` the 2D cross scan's
row/column, forward/reversed orders over an H×W grid, ``TIME`` forward (k = 0) or backward (k = 1) in
time. In the GRID and TIME orders all K directions read the same u and their outputs are added
atomically into one y (and u's gradient likewise): nothing is re-ordered or copied K times.

The state starts from ``initial_state`` (fp32, (b, K, dg, P, n)) when one is given, and the last state
comes back in the same layout, so a long video runs chunk by chunk with no correction outside the kernel.

Backward: the forward stores the state every ``CHUNK`` steps; the backward walks chunks last to first,
recomputes a chunk's states into a per-program scratch, then runs the adjoint
λ_t = C_t·gy_t + exp(Δ_{t+1}A)·λ_{t+1} backwards through it. B/C gradients are shared by the channel blocks, so they are accumulated atomically.
What is left of the adjoint after step 0 is the gradient of the initial state.

Compiled speed of the temporal order is unmeasured (no GPU yet): its channel-block loads stride T·H·W
apart, so neighbouring programs (positions), not one program's lanes, share cache lines.

Import this module only after ``triton`` is known to import (see ``kernels.__init__``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Steps between stored states: trades checkpoint memory (1/CHUNK of the states) for recompute scratch.
CHUNK = 32
#: Channels per program; dims that are not a multiple are masked.
BLOCK_D = 32
#: How a direction walks its sequence (the kernels' ``ORDER``): 1D as stored, 2D cross-scan grid orders, time.
SEQUENCE, GRID, TIME = 0, 1, 2


@triton.jit
def _offset(t, L, H, W, P, k, ORDER: tl.constexpr):
    """Memory offset of scan step t in direction k, relative to the sequence's first element.

    GRID: 0 row, 1 column, 2 row reversed, 3 column reversed over the H×W grid; TIME: 0 forward,
    1 backward over L frames P apart; SEQUENCE: step t itself.
    """
    if ORDER == 1:  # GRID
        p = tl.where(k >= 2, L - 1 - t, t)
        off = tl.where(k % 2 == 1, (p % H) * W + p // H, p)
    elif ORDER == 2:  # TIME
        off = tl.where(k == 1, L - 1 - t, t) * P
    else:
        off = t
    return off


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, init_ptr, y_ptr, ckpt_ptr, last_ptr,
    L, H, W, P, DG, N, NC, K, u_stride_k, u_stride_b,
    ORDER: tl.constexpr, HAS_INIT: tl.constexpr, CH: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # int64 sequence index: offsets like ((b·K + k)·dim + d)·L·P pass 2**31 on large batches.
    pid, pid_d, k = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    pid_b, pos = pid // P, pid % P
    d = pid_d * BLOCK + tl.arange(0, BLOCK)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < DG, n < N
    dn_ok = d_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + (k * DG + d[:, None]) * N + n[None, :], mask=dn_ok, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * u_stride_b + k * u_stride_k + d * L * P + pos
    y_base = y_ptr + pid_b * u_stride_b + k * u_stride_k + d * L * P + pos
    dt_base = dt_ptr + ((pid_b * K + k) * DG + d) * L * P + pos
    bc_off = ((pid_b * K + k) * N + n) * L * P + pos
    ck_base = ckpt_ptr + ((((pid * K + k) * NC) * DG + d[:, None]) * N + n[None, :])
    state_off = (((pid_b * K + k) * DG + d[:, None]) * P + pos) * N + n[None, :]
    if HAS_INIT:
        h = tl.load(init_ptr + state_off, mask=dn_ok, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK, BLOCK_N), dtype=tl.float32)
    for c in range(NC):
        tl.store(ck_base + c * DG * N, h, mask=dn_ok)
        for s in range(CH):
            t = c * CH + s
            in_d = d_ok & (d * 0 + t < L)  # vector masks: t may be a plain int (interpreter)
            in_n = n_ok & (n * 0 + t < L)
            off = _offset(t, L, H, W, P, k, ORDER)
            dt = tl.load(dt_base + off, mask=in_d, other=0.0).to(tl.float32)
            u = tl.load(u_base + off, mask=in_d, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + bc_off + off, mask=in_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc_off + off, mask=in_n, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)
            if ORDER != 0:  # the K directions of a position meet in one merged output
                tl.atomic_add(y_base + off, y, mask=in_d)
            else:
                tl.store(y_base + off, y, mask=in_d)
    tl.store(last_ptr + state_off, h, mask=dn_ok)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, gy_ptr, ckpt_ptr, scratch_ptr,
    gu_ptr, gdt_ptr, gA_ptr, gB_ptr, gC_ptr, ginit_ptr,
    L, H, W, P, DG, N, NC, K, u_stride_k, u_stride_b,
    ORDER: tl.constexpr, HAS_INIT: tl.constexpr, CH: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # int64 sequence index: offsets like ((b·K + k)·dim + d)·L·P pass 2**31 on large batches.
    pid, pid_d, k = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    pid_b, pos = pid // P, pid % P
    d = pid_d * BLOCK + tl.arange(0, BLOCK)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < DG, n < N
    dn_ok = d_ok[:, None] & n_ok[None, :]
    program = (pid * tl.num_programs(1) + pid_d) * tl.num_programs(2) + k
    tile = tl.arange(0, BLOCK)[:, None] * BLOCK_N + n[None, :]
    scratch = scratch_ptr + program * (CH + 1) * BLOCK * BLOCK_N + tile
    A = tl.load(A_ptr + (k * DG + d[:, None]) * N + n[None, :], mask=dn_ok, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * u_stride_b + k * u_stride_k + d * L * P + pos
    gu_base = gu_ptr + pid_b * u_stride_b + k * u_stride_k + d * L * P + pos
    gy_base = gy_ptr + pid_b * u_stride_b + k * u_stride_k + d * L * P + pos
    dt_base = ((pid_b * K + k) * DG + d) * L * P + pos
    bc_off = ((pid_b * K + k) * N + n) * L * P + pos
    ck_base = ckpt_ptr + ((((pid * K + k) * NC) * DG + d[:, None]) * N + n[None, :])
    m = tl.zeros((BLOCK, BLOCK_N), dtype=tl.float32)
    g_A = tl.zeros((BLOCK, BLOCK_N), dtype=tl.float32)
    for ci in range(NC):
        c = NC - 1 - ci
        # Recompute this chunk's states: scratch[s] is the state before step s.
        h = tl.load(ck_base + c * DG * N, mask=dn_ok, other=0.0)
        tl.store(scratch, h)
        for s in range(CH):
            t = c * CH + s
            in_d = d_ok & (d * 0 + t < L)  # vector masks: t may be a plain int (interpreter)
            in_n = n_ok & (n * 0 + t < L)
            off = _offset(t, L, H, W, P, k, ORDER)
            dt = tl.load(dt_ptr + dt_base + off, mask=in_d, other=0.0).to(tl.float32)
            u = tl.load(u_base + off, mask=in_d, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + bc_off + off, mask=in_n, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scratch + (s + 1) * BLOCK * BLOCK_N, h)
        tl.debug_barrier()
        for si in range(CH):
            s = CH - 1 - si
            t = c * CH + s
            in_d = d_ok & (d * 0 + t < L)  # vector masks: t may be a plain int (interpreter)
            in_n = n_ok & (n * 0 + t < L)
            off = _offset(t, L, H, W, P, k, ORDER)
            dt = tl.load(dt_ptr + dt_base + off, mask=in_d, other=0.0).to(tl.float32)
            u = tl.load(u_base + off, mask=in_d, other=0.0).to(tl.float32)
            gy = tl.load(gy_base + off, mask=in_d, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + bc_off + off, mask=in_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc_off + off, mask=in_n, other=0.0).to(tl.float32)
            h_prev = tl.load(scratch + s * BLOCK * BLOCK_N)
            h_t = tl.load(scratch + (s + 1) * BLOCK * BLOCK_N)
            a = tl.exp(dt[:, None] * A)
            lam = m + gy[:, None] * Ct[None, :]
            g_x = tl.sum(lam * Bt[None, :], axis=1)
            w = lam * a * h_prev  # gradient w.r.t. Δ_t·A
            tl.store(gdt_ptr + dt_base + off, g_x * u + tl.sum(w * A, axis=1), mask=in_d)
            if ORDER != 0:  # every direction reads the same u
                tl.atomic_add(gu_base + off, g_x * dt, mask=in_d)
            else:
                tl.store(gu_base + off, g_x * dt, mask=in_d)
            tl.atomic_add(gB_ptr + bc_off + off, tl.sum(lam * (dt * u)[:, None], axis=0), mask=in_n)
            tl.atomic_add(gC_ptr + bc_off + off, tl.sum(h_t * gy[:, None], axis=0), mask=in_n)
            g_A += w * dt[:, None]
            m = a * lam
        tl.debug_barrier()
    tl.store(gA_ptr + (((pid * K + k) * DG + d[:, None]) * N + n[None, :]), g_A, mask=dn_ok)
    if HAS_INIT:  # m is now the adjoint of the state before step 0
        tl.store(ginit_ptr + (((pid_b * K + k) * DG + d[:, None]) * P + pos) * N + n[None, :], m, mask=dn_ok)


class _Geometry:
    """Shapes, strides and launch grid shared by the forward and backward launches."""

    def __init__(self, u: torch.Tensor, dt: torch.Tensor, B: torch.Tensor, order: int, height: int, width: int):
        self.batch, self.K, self.DG, self.L, self.P = dt.shape
        self.N = B.shape[2]
        self.H, self.W = height, width
        self.order = order
        # Short sequences (a chunk of video frames) get short chunks: no masked steps, a small scratch.
        self.chunk = min(CHUNK, triton.next_power_of_2(self.L))
        self.NC = -(-self.L // self.chunk)
        self.block_n = triton.next_power_of_2(self.N)
        # One program per (sequence, channel block, direction): the sequential walk needs many programs.
        self.grid = (self.batch * self.P, triton.cdiv(self.DG, BLOCK_D), self.K)
        stride_k = 0 if order != SEQUENCE else self.DG * self.L * self.P
        self.strides = (stride_k, u.shape[1] * self.L * self.P)

    def args(self) -> tuple:
        return (self.L, self.H, self.W, self.P, self.DG, self.N, self.NC, self.K, *self.strides)

    def meta(self, has_init: bool) -> dict:
        return dict(ORDER=self.order, HAS_INIT=has_init, CH=self.chunk, BLOCK=BLOCK_D, BLOCK_N=self.block_n)


class TritonScan(torch.autograd.Function):
    """Core scan on the fused kernels; every tensor (..., L, P) with P sequences interleaved innermost.

    dt: (b, K, dg, L, P); A: (K, dg, n); B, C: (b, K, n, L, P); initial_state: (b, K, dg, P, n) or None.
    SEQUENCE order: u is (b, K·dg, L, 1) and y (b, K·dg, L, 1), channel block k using group k.
    GRID and TIME orders: u is (b, dg, L, P) shared by all K directions and y their sum (summed
    atomically, so the fp32 rounding order of the K terms may vary run to run on a GPU).
    Returns y (fp32) and the last states (b, K, dg, P, n), which carry no gradient.
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C, initial_state, order: int, height: int, width: int):
        u, dt, A, B, C = (x.contiguous() for x in (u, dt, A, B, C))
        geo = _Geometry(u, dt, B, order, height, width)
        y = torch.zeros(u.shape, device=u.device, dtype=torch.float32)
        ckpt = u.new_empty((geo.batch * geo.P, geo.K, geo.NC, geo.DG, geo.N), dtype=torch.float32)
        last = u.new_empty((geo.batch, geo.K, geo.DG, geo.P, geo.N), dtype=torch.float32)
        has_init = initial_state is not None
        init = initial_state.float().contiguous() if has_init else last  # never read without HAS_INIT
        _scan_fwd_kernel[geo.grid](u, dt, A, B, C, init, y, ckpt, last, *geo.args(), **geo.meta(has_init))
        ctx.save_for_backward(u, dt, A, B, C, ckpt)
        ctx.geo, ctx.has_init = geo, has_init
        ctx.init_dtype = initial_state.dtype if has_init else None
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, g_y, _g_last):
        u, dt, A, B, C, ckpt = ctx.saved_tensors
        geo = ctx.geo
        programs = geo.grid[0] * geo.grid[1] * geo.grid[2]
        f32 = dict(device=u.device, dtype=torch.float32)
        scratch = torch.empty(programs * (geo.chunk + 1) * BLOCK_D * geo.block_n, **f32)
        g_u = torch.zeros(u.shape, **f32)
        g_dt = torch.empty(dt.shape, **f32)
        g_A = torch.empty((geo.batch * geo.P, *A.shape), **f32)
        g_B = torch.zeros(B.shape, **f32)
        g_C = torch.zeros(C.shape, **f32)
        g_init = torch.empty((geo.batch, geo.K, geo.DG, geo.P, geo.N), **f32) if ctx.has_init else g_A
        _scan_bwd_kernel[geo.grid](
            u, dt, A, B, C, g_y.float().contiguous(), ckpt, scratch, g_u, g_dt, g_A, g_B, g_C, g_init,
            *geo.args(), **geo.meta(ctx.has_init),
        )
        g_init = g_init.to(ctx.init_dtype) if ctx.has_init else None
        return g_u, g_dt, g_A.sum(0), g_B, g_C, g_init, None, None, None
