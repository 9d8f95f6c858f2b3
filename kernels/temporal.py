"""The selective scan along the time axis of a (batch, dim, T, H, W) video grid, on any backend's 1D scan.

Every spatial position is its own sequence of T frames. Direction 0 runs forward in time, direction 1
(when K = 2) backward; each direction's state starts at ``initial_state`` and its last state (after
frame T-1 going forward, after frame 0 going backward) comes back, so a long video can run in chunks of
frames with the state handed from chunk to chunk (backward direction: chunks taken last to first).

The sequences are short (T frames) and many (batch·H·W), so for the backends without a fused temporal
kernel (all but Triton's, ``triton_backend.temporal_scan_triton``) one grouped 1D call over a re-laid-out
copy is the whole cost: channel block k of the (batch·H·W, K·dim, T) copy reads B/C group k, as in the 2D
cross scan. mamba-ssm's 1D scan takes no initial state, so it gets one added by linearity
(``with_initial_state``): h_t = h⁰_t + exp(A·Σ_{s≤t} Δ_s)·h_{-1}, so y gains C_t·exp(A·Σ_{s≤t} Δ_s)·h_{-1}.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .layout import expand_groups
from .reference import prepare_delta


def with_initial_state(
    scan_1d: Callable,
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
    initial_state: torch.Tensor | None = None,
):
    """``scan_1d`` (no initial state of its own) started from ``initial_state`` (b, dim, d_state).

    Serves mamba-ssm, whose compiled scan starts from zeros. The correction materialises one
    (b, dim, d_state, L) fp32 tensor: fine for the short temporal sequences it serves on a GPU; the
    other backends carry the state natively.
    """
    if initial_state is None:
        return scan_1d(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    out, last = scan_1d(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)
    dim = u.shape[1]
    decay = torch.exp(A.float()[None, :, :, None] * prepare_delta(delta, delta_bias, delta_softplus).cumsum(-1)[:, :, None])
    carried = decay * initial_state.float()[..., None]
    correction = (carried * expand_groups(C, dim).float()).sum(-2)
    if z is not None:
        correction = correction * F.silu(z.float())
    out = (out.float() + correction).to(u.dtype)
    # The last state carries no gradient, as every backend's does.
    last = (last + carried[..., -1]).detach()
    return (out, last) if return_last_state else out


def _sequences(grid: torch.Tensor) -> torch.Tensor:
    """(b, K, c, T, H, W) → (b·H·W, K, c, T): direction 1 in reversed time."""
    batch, directions, channels, frames, height, width = grid.shape
    seq = grid.permute(0, 4, 5, 1, 2, 3).reshape(batch * height * width, directions, channels, frames)
    return torch.stack([seq[:, 0], seq[:, 1].flip(-1)], dim=1) if directions == 2 else seq


def temporal_scan_by_copies(
    scan_1d: Callable,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One grouped ``scan_1d`` call (``selective_scan`` signature plus ``initial_state``) over all positions.

    Shapes as ``kernels.temporal_scan``; returns y summed over directions (b, dim, T, H, W) and the
    fp32 last states (b, K, dim, H, W, d_state).
    """
    batch, dim, frames, height, width = u.shape
    directions = delta.shape[1]
    positions = batch * height * width
    init = None
    if initial_state is not None:
        init = initial_state.permute(0, 3, 4, 1, 2, 5).reshape(positions, directions * dim, -1)
    y, last = scan_1d(
        _sequences(u.unsqueeze(1).expand(-1, directions, -1, -1, -1, -1)).reshape(positions, directions * dim, frames),
        _sequences(delta).reshape(positions, directions * dim, frames),
        A.reshape(directions * dim, -1),
        _sequences(B),
        _sequences(C),
        D=None if D is None else D.reshape(-1),
        delta_bias=None if delta_bias is None else delta_bias.reshape(-1),
        delta_softplus=delta_softplus,
        return_last_state=True,
        initial_state=init,
    )
    y = y.reshape(positions, directions, dim, frames)
    y = y[:, 0] + y[:, 1].flip(-1) if directions == 2 else y[:, 0]
    y = y.reshape(batch, height, width, dim, frames).permute(0, 3, 4, 1, 2)
    last = last.reshape(batch, height, width, directions, dim, -1).permute(0, 3, 4, 1, 2, 5)
    return y, last
