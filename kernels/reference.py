"""Sequential selective scan: the slow, obviously-correct truth every backend is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import expand_groups


def prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """Apply the per-channel bias and optional softplus to Δ in fp32 (mamba-ssm semantics)."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[..., None]
    return F.softplus(delta) if delta_softplus else delta


def finish_output(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    """Add the skip term D·u and the SiLU(z) gate, then cast back to u's dtype."""
    if D is not None:
        y = y + u.float() * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def selective_scan_reference(
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
    """One time step at a time: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t · h_t, h_{-1} = ``initial_state``."""
    dim = u.shape[1]
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    A = A.float()
    B = expand_groups(B, dim).float()
    C = expand_groups(C, dim).float()
    uf = u.float()
    zeros = u.new_zeros((u.shape[0], dim, A.shape[1]), dtype=torch.float32)
    state = zeros if initial_state is None else initial_state.float()
    ys = []
    # unbind once: indexing [..., t] in the loop would make autograd build a full-size zero gradient per step.
    for dt, ut, Bt, Ct in zip(delta.unbind(-1), uf.unbind(-1), B.unbind(-1), C.unbind(-1)):
        decay = torch.exp(dt[..., None] * A)
        state = decay * state + (dt * ut)[..., None] * Bt
        ys.append((state * Ct).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(uf.shape)
    out = finish_output(y, u, D, z)
    return (out, state) if return_last_state else out
