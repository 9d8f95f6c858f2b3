"""Attention arithmetic every StyleStudio variant shares: heads split and merged, attention calls, RMSNorm.

Two layouts meet here: ComfyUI's replace patches see ``(batch, tokens, heads * dim_head)`` and the DiT code works
heads-first, ``(batch, heads, tokens, dim_head)``; ``split_heads``/``merge_heads`` are the one way between them.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]  # (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D) -> (B, H, Lq, D)


def split_heads(x: Tensor, heads: int = -1, head_dim: int = -1) -> Tensor:
    """``(B, L, H·D)`` -> ``(B, H, L, D)``, given the number of heads or their width (the other is inferred)."""
    return x.unflatten(-1, (heads, head_dim)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, L, D)`` -> ``(B, L, H·D)``."""
    return x.transpose(1, 2).flatten(2)


def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``Attend`` with PyTorch's fused kernel: the default wherever no ComfyUI attention function is handed in."""
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, attn_precision: torch.dtype | None = None) -> Tensor:
    """Multi-head attention in ComfyUI's ``(batch, tokens, heads * dim_head)`` layout, as its ``optimized_attention`` is called."""
    dtype = q.dtype
    if attn_precision == torch.float32:
        q, k, v = q.float(), k.float(), v.float()
    return merge_heads(sdpa(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads))).to(dtype)


def rms_norm(x: Tensor, eps: float, weight: Tensor | None = None) -> Tensor:
    """RMSNorm over the last dim (per head, where the DiT adapters normalise keys/values), with an optional weight."""
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return normed if weight is None else normed * weight
