"""Flow-free temporal terms for video latents (b, C, T, H, W): consistency, second order, and the flicker figure.

Without optical flow, the content video itself says how much each position should change between
frames: a styled video is temporally consistent when its frame-to-frame change follows the content's.
``temporal_consistency_loss`` compares first differences (the flow-free consistency term),
``temporal_second_order_loss`` compares second differences (StyleMamba-video's temporal second-order
loss penalises abrupt changes between consecutive frames; here relative to the content's own, so a
real cut in the footage costs nothing). Both are normalised by the content's change, so they read
the same on every VAE's latent scale. ``flicker`` is the figure ``benchmarks/video.py`` reports.

Where the optical flow is known (a synthetic camera move), ``warping_error`` is the usual flow-based
figure instead: how far each styled frame is from the previous styled frame carried along the flow,
over the pixels visible in both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..latent_families import VideoInputError


def _check_video(video: torch.Tensor, order: int, name: str) -> None:
    """A (b, C, T, H, W) video with frames enough for a temporal term of ``order``, or a clear error."""
    if video.dim() != 5:
        raise VideoInputError(f"{name} must be a video latent (batch, channels, frames, height, width), got {tuple(video.shape)}")
    if video.shape[2] <= order:
        raise VideoInputError(f"{name} has {video.shape[2]} frame(s); a temporal term of order {order} needs at least {order + 1}")


def _differences(video: torch.Tensor, order: int, name: str) -> torch.Tensor:
    """``order``-th difference along time of a (b, C, T, H, W) video."""
    _check_video(video, order, name)
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


def warp(previous: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry frames (n, C, H, W) along a backward flow (n, 2, H, W): out[y, x] = previous[y + flow_y, x + flow_x].

    ``flow`` is in pixels, (x, y) order, pointing from each pixel of the new frame to where its content
    sat in the previous one; sampling is bilinear between pixel centres. Also returns where the sample
    fell inside the previous frame (n, 1, H, W, bool): only there is the warped value real content.
    """
    if previous.dim() != 4 or flow.shape != (previous.shape[0], 2, *previous.shape[-2:]):
        raise ValueError(
            f"warp takes frames (n, C, H, W) and a flow (n, 2, H, W) of the same n, H, W; "
            f"got {tuple(previous.shape)} and {tuple(flow.shape)}"
        )
    height, width = previous.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype), torch.arange(width, dtype=flow.dtype), indexing="ij")
    x, y = xs.to(flow.device) + flow[:, 0], ys.to(flow.device) + flow[:, 1]
    visible = ((x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)).unsqueeze(1)
    # align_corners=True: -1 and 1 are the centres of the first and last pixel.
    grid = torch.stack([2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(previous.float(), grid.float(), mode="bilinear", padding_mode="border", align_corners=True)
    return warped, visible


@torch.no_grad()
def warping_error(styled: torch.Tensor, flow: torch.Tensor) -> float:
    """mean |s_t − warp(s_{t−1}, flow_t)| over channels and the pixels visible in both frames.

    ``styled`` (b, C, T, H, W); ``flow`` (b, T−1, 2, H, W), entry t−1 taking frame t back to frame t−1.
    """
    _check_video(styled, 1, "styled")
    batch, channels, frames, height, width = styled.shape
    if flow.shape != (batch, frames - 1, 2, height, width):
        raise VideoInputError(
            f"flow must be (batch, frames - 1, 2, height, width) = {(batch, frames - 1, 2, height, width)} "
            f"for styled {tuple(styled.shape)}, got {tuple(flow.shape)}"
        )
    previous = styled[:, :, :-1].movedim(2, 1).flatten(0, 1).float()
    current = styled[:, :, 1:].movedim(2, 1).flatten(0, 1).float()
    warped, visible = warp(previous, flow.flatten(0, 1).float())
    error = (current - warped).abs() * visible
    return (error.sum() / (visible.sum() * channels).clamp_min(1)).item()
