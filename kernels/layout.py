"""Token orders of the 2D cross scan and mamba-ssm's grouped B/C rule, shared by all backends."""

from __future__ import annotations

from typing import Callable

import torch

#: Scan orders over an (H, W) grid, in the order the direction axis of every tensor uses.
DIRECTIONS = ("row", "column", "row_reversed", "column_reversed")


def group_size(dim: int, groups: int) -> int:
    """Channels per B/C group; mamba-ssm's rule needs equal blocks."""
    if dim % groups:
        raise ValueError(f"dim {dim} is not a multiple of the {groups} B/C groups")
    return dim // groups


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, n, L) or (b, g, n, L) → (b, dim, n, L): channel c reads group c // (dim // g)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, dim, -1, -1)
    return BC.repeat_interleave(group_size(dim, BC.shape[1]), dim=1)


def flatten_directions(grid: torch.Tensor) -> torch.Tensor:
    """(b, K, c, H, W) → (b, K, c, H·W): direction k's tokens in its own scan order."""
    height, width = grid.shape[-2:]
    orders = []
    for k in range(grid.shape[1]):
        plane = grid[:, k]
        if DIRECTIONS[k].startswith("column"):
            plane = plane.transpose(-1, -2)
        seq = plane.reshape(*plane.shape[:-2], height * width)
        orders.append(seq.flip(-1) if DIRECTIONS[k].endswith("reversed") else seq)
    return torch.stack(orders, dim=1)


def merge_directions(seq: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(b, K, c, H·W) in scan orders → (b, c, H, W): each direction put back on the grid, summed."""
    total = None
    for k in range(seq.shape[1]):
        s = seq[:, k]
        if DIRECTIONS[k].endswith("reversed"):
            s = s.flip(-1)
        if DIRECTIONS[k].startswith("column"):
            plane = s.reshape(*s.shape[:-1], width, height).transpose(-1, -2)
        else:
            plane = s.reshape(*s.shape[:-1], height, width)
        total = plane if total is None else total + plane
    return total


def cross_scan_by_copies(
    scan_1d: Callable[..., torch.Tensor],
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The K-direction 2D scan as one grouped 1D scan over K re-ordered copies, merged back.

    Channel block k of the (b, K·dim, L) copy reads B/C group k (mamba-ssm's grouped B/C rule), so one
    ``scan_1d`` call (``selective_scan`` signature) does all directions. Copies cost K·(b, dim, L): cheap
    next to the scan's (b, dim, d_state, L) work on CPU; the fused Triton kernel avoids them on GPU.
    """
    batch, dim, height, width = u.shape
    directions = delta.shape[1]
    u_seq = flatten_directions(u.unsqueeze(1).expand(-1, directions, -1, -1, -1))
    y = scan_1d(
        u_seq.reshape(batch, directions * dim, -1),
        flatten_directions(delta).reshape(batch, directions * dim, -1),
        A.reshape(directions * dim, -1),
        flatten_directions(B),
        flatten_directions(C),
        D=None if D is None else D.reshape(-1),
        delta_bias=None if delta_bias is None else delta_bias.reshape(-1),
        delta_softplus=delta_softplus,
    )
    return merge_directions(y.reshape(batch, directions, dim, -1), height, width)
