"""The ``triton`` backend: one fused scan kernel pair (forward, hand-written backward) for 1D and 2D scans.

A program owns (sample, a block of channels, one direction) and walks the sequence step by step with
its (channels, d_state) state in fp32 registers; fp16/bf16 inputs are upcast on load. For the 2D cross
scan it computes its direction's grid offset from the scan position itself (row/column order,
forward/reversed), so u, Δ, B, C are read in place on the grid and the K outputs are added atomically
into one grid-ordered y (and u's gradient likewise): nothing is re-ordered or copied K times.

Backward: the forward stores the state every ``CHUNK`` steps; the backward walks chunks last to first,
recomputes a chunk's states into a per-program scratch, then runs the adjoint
λ_t = C_t·gy_t + exp(Δ_{t+1}A)·λ_{t+1} backwards through it. B/C gradients are shared by the channel blocks, so they are accumulated atomically.

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


@triton.jit
def _offset(t, L, H, W, k, DIRECTED: tl.constexpr):
    """Grid offset of scan position t in direction k (0 row, 1 column, 2 row reversed, 3 column reversed)."""
    if DIRECTED:
        p = tl.where(k >= 2, L - 1 - t, t)
        return tl.where(k % 2 == 1, (p % H) * W + p // H, p)
    return t


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, y_ptr, ckpt_ptr, last_ptr,
    L, H, W, DG, N, NC, K, u_stride_k, y_stride_k, u_stride_b, y_stride_b,
    DIRECTED: tl.constexpr, CH: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # int64 batch index: offsets like ((b·K + k)·dim + d)·L pass 2**31 on large batches.
    pid_b, pid_d, k = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    d = pid_d * BLOCK + tl.arange(0, BLOCK)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < DG, n < N
    dn_ok = d_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + (k * DG + d[:, None]) * N + n[None, :], mask=dn_ok, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * u_stride_b + k * u_stride_k + d * L
    y_base = y_ptr + pid_b * y_stride_b + k * y_stride_k + d * L
    dt_base = dt_ptr + ((pid_b * K + k) * DG + d) * L
    bc_off = ((pid_b * K + k) * N + n) * L
    ck_base = ckpt_ptr + ((((pid_b * K + k) * NC) * DG + d[:, None]) * N + n[None, :])
    h = tl.zeros((BLOCK, BLOCK_N), dtype=tl.float32)
    for c in range(NC):
        tl.store(ck_base + c * DG * N, h, mask=dn_ok)
        for s in range(CH):
            t = c * CH + s
            in_d = d_ok & (d * 0 + t < L)  # vector masks: t may be a plain int (interpreter)
            in_n = n_ok & (n * 0 + t < L)
            off = _offset(t, L, H, W, k, DIRECTED)
            dt = tl.load(dt_base + off, mask=in_d, other=0.0).to(tl.float32)
            u = tl.load(u_base + off, mask=in_d, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptr + bc_off + off, mask=in_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + bc_off + off, mask=in_n, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1)
            if DIRECTED:  # the K directions of a grid position meet in one merged output
                tl.atomic_add(y_base + off, y, mask=in_d)
            else:
                tl.store(y_base + off, y, mask=in_d)
    tl.store(last_ptr + (((pid_b * K + k) * DG + d[:, None]) * N + n[None, :]), h, mask=dn_ok)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, gy_ptr, ckpt_ptr, scratch_ptr,
    gu_ptr, gdt_ptr, gA_ptr, gB_ptr, gC_ptr,
    L, H, W, DG, N, NC, K, u_stride_k, y_stride_k, u_stride_b, y_stride_b,
    DIRECTED: tl.constexpr, CH: tl.constexpr, BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # int64 batch index: offsets like ((b·K + k)·dim + d)·L pass 2**31 on large batches.
    pid_b, pid_d, k = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    d = pid_d * BLOCK + tl.arange(0, BLOCK)
    n = tl.arange(0, BLOCK_N)
    d_ok, n_ok = d < DG, n < N
    dn_ok = d_ok[:, None] & n_ok[None, :]
    program = (pid_b * tl.num_programs(1) + pid_d) * tl.num_programs(2) + k
    tile = tl.arange(0, BLOCK)[:, None] * BLOCK_N + n[None, :]
    scratch = scratch_ptr + program * (CH + 1) * BLOCK * BLOCK_N + tile
    A = tl.load(A_ptr + (k * DG + d[:, None]) * N + n[None, :], mask=dn_ok, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * u_stride_b + k * u_stride_k + d * L
    gu_base = gu_ptr + pid_b * u_stride_b + k * u_stride_k + d * L
    gy_base = gy_ptr + pid_b * y_stride_b + k * y_stride_k + d * L
    dt_base = ((pid_b * K + k) * DG + d) * L
    bc_off = ((pid_b * K + k) * N + n) * L
    ck_base = ckpt_ptr + ((((pid_b * K + k) * NC) * DG + d[:, None]) * N + n[None, :])
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
            off = _offset(t, L, H, W, k, DIRECTED)
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
            off = _offset(t, L, H, W, k, DIRECTED)
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
            if DIRECTED:  # every direction reads the same grid u
                tl.atomic_add(gu_base + off, g_x * dt, mask=in_d)
            else:
                tl.store(gu_base + off, g_x * dt, mask=in_d)
            tl.atomic_add(gB_ptr + bc_off + off, tl.sum(lam * (dt * u)[:, None], axis=0), mask=in_n)
            tl.atomic_add(gC_ptr + bc_off + off, tl.sum(h_t * gy[:, None], axis=0), mask=in_n)
            g_A += w * dt[:, None]
            m = a * lam
        tl.debug_barrier()
    tl.store(gA_ptr + (((pid_b * K + k) * DG + d[:, None]) * N + n[None, :]), g_A, mask=dn_ok)


class _Geometry:
    """Shapes, strides and launch grid shared by the forward and backward launches."""

    def __init__(self, u: torch.Tensor, dt: torch.Tensor, B: torch.Tensor, height: int, width: int, directed: bool):
        self.batch, self.K, self.DG, self.L = dt.shape
        self.N = B.shape[2]
        self.H, self.W = height, width
        self.directed = directed
        self.NC = -(-self.L // CHUNK)
        self.block_n = triton.next_power_of_2(self.N)
        # One program per (sample, channel block, direction): the sequential walk needs many programs.
        self.grid = (self.batch, triton.cdiv(self.DG, BLOCK_D), self.K)
        stride_k = 0 if directed else self.DG * self.L
        self.strides = (stride_k, stride_k, u.shape[1] * self.L, u.shape[1] * self.L)

    def args(self) -> tuple:
        return (self.L, self.H, self.W, self.DG, self.N, self.NC, self.K, *self.strides)

    def meta(self) -> dict:
        return dict(DIRECTED=self.directed, CH=CHUNK, BLOCK=BLOCK_D, BLOCK_N=self.block_n)


class TritonScan(torch.autograd.Function):
    """Core scan on the fused kernels. dt: (b, K, dg, L); A: (K, dg, n); B, C: (b, K, n, L).

    1D (``directed=False``): u is (b, K·dg, L) and y (b, K·dg, L), channel block k using group k.
    2D (``directed=True``): u is the grid (b, dg, H·W) shared by all K directions and y their sum
    (summed atomically, so the fp32 rounding order of the K terms may vary run to run on a GPU).
    """

    @staticmethod
    def forward(ctx, u, dt, A, B, C, height: int, width: int, directed: bool):
        u, dt, A, B, C = (x.contiguous() for x in (u, dt, A, B, C))
        geo = _Geometry(u, dt, B, height, width, directed)
        y = torch.zeros(u.shape, device=u.device, dtype=torch.float32)
        ckpt = u.new_empty((geo.batch, geo.K, geo.NC, geo.DG, geo.N), dtype=torch.float32)
        last = u.new_empty((geo.batch, geo.K, geo.DG, geo.N), dtype=torch.float32)
        _scan_fwd_kernel[geo.grid](u, dt, A, B, C, y, ckpt, last, *geo.args(), **geo.meta())
        ctx.save_for_backward(u, dt, A, B, C, ckpt)
        ctx.geo = geo
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, g_y, _g_last):
        u, dt, A, B, C, ckpt = ctx.saved_tensors
        geo = ctx.geo
        programs = geo.grid[0] * geo.grid[1] * geo.grid[2]
        f32 = dict(device=u.device, dtype=torch.float32)
        scratch = torch.empty(programs * (CHUNK + 1) * BLOCK_D * geo.block_n, **f32)
        g_u = torch.zeros(u.shape, **f32)
        g_dt = torch.empty(dt.shape, **f32)
        g_A = torch.empty((geo.batch, *A.shape), **f32)
        g_B = torch.zeros(B.shape, **f32)
        g_C = torch.zeros(C.shape, **f32)
        _scan_bwd_kernel[geo.grid](
            u, dt, A, B, C, g_y.float().contiguous(), ckpt, scratch, g_u, g_dt, g_A, g_B, g_C,
            *geo.args(), **geo.meta(),
        )
        return g_u, g_dt, g_A.sum(0), g_B, g_C, None, None, None
