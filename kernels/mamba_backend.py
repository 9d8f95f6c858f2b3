"""The ``mamba_ssm`` backend: mamba-ssm's compiled CUDA ``selective_scan_fn`` behind our API."""

from __future__ import annotations

import inspect
from typing import Callable

import torch


#: mamba-ssm indexes with int32 offsets; a call whose tensors reach 2**31 elements corrupts results
#: (reported upstream), so larger batches are split into calls that stay below it.
INT32_ELEMENTS = 2**31 - 1

INSTALL_HINT = "pip install .[cuda] (mamba-ssm; building it needs a CUDA toolchain)"


def load_selective_scan_fn() -> Callable[..., torch.Tensor]:
    """Import mamba-ssm's scan; its module hard-imports the compiled extension, so any failure means absent."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except (ImportError, OSError) as error:  # OSError: extension present but built for another torch/CUDA
        raise RuntimeError(
            f"scan backend 'mamba_ssm' is not available ({error}); install it with {INSTALL_HINT}"
        ) from error
    return selective_scan_fn


def _keyword_call(fn: Callable[..., torch.Tensor], u, delta, A, B, C, **options):
    """Call with options by keyword, dropping those this release lacks.

    Releases differ in their trailing parameters (newer ones insert ``cu_seqlens`` for packed sequences,
    which we never use): keywords keep us independent of their positions.
    """
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options = {name: value for name, value in options.items() if name in params}
    return fn(u, delta, A, B, C, **options)


def _batch_pieces(u: torch.Tensor, B: torch.Tensor) -> int:
    """How many batch pieces keep every per-call tensor below the int32 offset limit."""
    per_sample = max(u[0].numel(), B[0].numel())
    if per_sample > INT32_ELEMENTS:
        raise ValueError(
            f"one sample of {per_sample} scan elements exceeds mamba-ssm's int32 offsets; "
            "use backend='triton' or 'torch'"
        )
    fits = INT32_ELEMENTS // per_sample
    return -(-u.shape[0] // fits)


def selective_scan_mamba(
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
):
    """``selective_scan_fn`` itself, split over the batch where its int32 offsets would overflow."""
    fn = load_selective_scan_fn()
    pieces = _batch_pieces(u, B)
    options = dict(
        D=None if D is None else D.float(),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )
    outs = []
    for index in torch.arange(u.shape[0]).chunk(pieces):
        lo, hi = int(index[0]), int(index[-1]) + 1
        outs.append(
            _keyword_call(
                fn, u[lo:hi], delta[lo:hi], A, B[lo:hi], C[lo:hi], z=None if z is None else z[lo:hi], **options
            )
        )
    if not return_last_state:
        return torch.cat(outs)
    return torch.cat([o for o, _ in outs]), torch.cat([s for _, s in outs])
