"""Flow-free temporal terms for video latents (b, C, T, H, W): consistency, second order, and the flicker figure.

Without optical flow, the content video itself says how much each position should change between
frames: a styled video is temporally consistent when its frame-to-frame change follows the content's.
``temporal_consistency_loss`` compares first differences (the flow-free consistency term),
``temporal_second_order_loss`` compares second differences (StyleMamba-video's temporal second-order
loss penalises abrupt changes between consecutive frames; here relative to the content's own, so a
real cut in the footage costs nothing). Both are normalised by the content's change, so they read
the same on every VAE's latent scale. ``flicker`` is the figure ``benchmarks/video.py`` reports.
"""

from __future__ import annotations

import torch

from ..video_latents import VideoInputError


def _differences(video: torch.Tensor, order: int, name: str) -> torch.Tensor:
    """``order``-th difference along time of a (b, C, T, H, W) video."""
    if video.dim() != 5:
        raise VideoInputError(f"{name} must be a video latent (batch, channels, frames, height, width), got {tuple(video.shape)}")
    if video.shape[2] <= order:
        raise VideoInputError(f"{name} has {video.shape[2]} frame(s); a temporal term of order {order} needs at least {order + 1}")
    return torch.diff(video.float(), n=order, dim=2)


def _relative_gap(styled: torch.Tensor, content: torch.Tensor, order: int) -> torch.Tensor:
    styled_change, content_change = _differences(styled, order, "styled"), _differences(content, order, "content")
    return (styled_change - content_change).square().mean() / content_change.square().mean().clamp_min(1e-8)


def temporal_consistency_loss(styled: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """mean ‖Δs − Δc‖² / mean ‖Δc‖² over consecutive frames: 0 when the styled video moves as the content does."""
    return _relative_gap(styled, content, 1)


def temporal_second_order_loss(styled: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """mean ‖Δ²s − Δ²c‖² / mean ‖Δ²c‖²: abrupt changes the content does not have."""
    return _relative_gap(styled, content, 2)


@torch.no_grad()
def flicker(styled: torch.Tensor, content: torch.Tensor) -> float:
    """mean |Δs − Δc| / mean |Δc|: how far the styled frame-to-frame change strays from the content's (0 = none)."""
    styled_change, content_change = _differences(styled, 1, "styled"), _differences(content, 1, "content")
    return ((styled_change - content_change).abs().mean() / content_change.abs().mean().clamp_min(1e-8)).item()
