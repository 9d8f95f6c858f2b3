"""Apply a StyleMamba model to latents: batching, video frames, masks and strength in one place.

Both the StyleFuse node and the ``stylize`` command call this, so they give identical results.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable

import torch

from .checkpoint import StyleMamba
from .encoders import encoder_identity
from .tower_identity import describe_encoder
from .masks import latent_mask
from .mixing import StyleMix, fusion_inputs
from .model import ModelInputError
from .style import StyleEmbedding
from .temporal import TemporalContext
from .latent_families import VideoInputError, latent_channel_mismatch
from .video_latents import video_mask

#: How a 5-D video LATENT is fused: ``auto`` = across frames for video (images are always single frames).
TEMPORAL_MODES = ("auto", "across frames", "frame by frame")


def check_finite(name: str, values: torch.Tensor | float) -> None:
    """Refuse NaN/inf before it silently turns the whole latent into NaN; ComfyUI's min/max let NaN through."""
    if isinstance(values, torch.Tensor):
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            raise ValueError(
                f"{name} holds {bad} NaN/inf values (of {values.numel()}): the node or file that made it produced "
                "invalid numbers (e.g. a VAE overflowing in fp16); fix that input first"
            )
    elif not math.isfinite(values):
        raise ValueError(f"{name} must be a finite number, got {values}")


def temporal_fusion(temporal: str, samples: torch.Tensor) -> bool:
    """Whether to scan across frames; ``across frames`` on a 4-D (image) LATENT is refused, not ignored."""
    if temporal not in TEMPORAL_MODES:
        raise ValueError(f"temporal must be one of {', '.join(map(repr, TEMPORAL_MODES))}, got {temporal!r}")
    if temporal == "across frames" and samples.dim() != 5:
        raise VideoInputError(
            f"temporal='across frames' needs a video LATENT (batch, channels, frames, height, width); this one is "
            f"{samples.dim()}-D {tuple(samples.shape)} (images): use 'auto' or encode the frames with a video VAE"
        )
    return samples.dim() == 5 and temporal != "frame by frame"


def per_frame(weights: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """Per-video style weights (b, …) → one row per frame, sample-major as the frames are flattened."""
    if weights is None or weights.shape[0] == 1:
        return weights
    return weights.repeat_interleave(frames, dim=0)


def check_style_encoder(style_mamba: StyleMamba, style: StyleEmbedding | StyleMix) -> None:
    """Refuse a style from another SigLIP than the model's: the model would misread it without any error.

    Ids compare by ``encoder_identity`` (folder name or hub id's last part, plus width), so a model
    trained with ``google/siglip-base-patch16-224`` takes styles encoded from models/siglip/siglip-base-patch16-224.
    """
    width, expected = style.target.shape[-1], style_mamba.config.style_dim
    if encoder_identity(style.encoder, width) != encoder_identity(style_mamba.text_encoder, expected):
        raise ModelInputError(
            f"the style was encoded with {describe_encoder(style.encoder)} ({width}-d) but this StyleMamba model reads "
            f"styles from {describe_encoder(style_mamba.text_encoder)} ({expected}-d): encode the style with the model's "
            "own encoder (Text/ImageStyleEncode fed by this STYLE_MAMBA and, for a CLIP_VISION model, its CLIP_VISION; "
            "or the command's --text-encoder)"
        )


@torch.no_grad()
def stylize_latents(
    style_mamba: StyleMamba,
    samples: torch.Tensor,
    style: StyleEmbedding | StyleMix,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
    temporal: str = "auto",
) -> torch.Tensor:
    """Restyle (b, C, H, W) image latents or (b, C, T, H, W) video latents.

    Video runs in chunks of ``batch_size`` frames of every sample; across frames (``temporal``, see
    ``TEMPORAL_MODES``) each chunk starts from the temporal scans' states after the previous one, so
    any length runs in the memory of one chunk and the result does not depend on the chunk size
    (up to float rounding). A 1-frame video is styled as that single frame.
    ``progress(done, total)`` is called after each chunk (latents, or frames for video). The result
    is on ``samples``'s device and dtype; masked-out regions keep their exact input values.
    ``autocast_dtype`` (e.g. bf16 on a GPU) runs the math in low precision while the weights stay
    fp32, so a model used for inference can still be saved or trained without loss. A ``StyleMix``
    is applied in the same single pass; its masks limit the change as ``mask`` does. The model runs
    on ``device``, moved there here and nowhere else in this path; None runs it where it already is
    (e.g. where ComfyUI's model management put it).
    """
    if samples.dim() not in (4, 5):
        raise ValueError(f"LATENT samples must be 4-D (image) or 5-D (video), got shape {tuple(samples.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    across_frames = temporal_fusion(temporal, samples)
    if samples.dim() == 5 and samples.shape[1] != style_mamba.config.latent_channels:
        raise ModelInputError(latent_channel_mismatch(style_mamba.config.latent_channels, samples.shape[1], video=True))
    style_mamba.model.check_latent_channels(samples.shape[1])
    check_finite("strength", strength)
    check_finite("LATENT samples", samples)
    if mask is not None:
        check_finite("mask", mask)
    check_style_encoder(style_mamba, style)
    batch, height, width = samples.shape[0], *samples.shape[-2:]
    condition, style_weights, coverage = fusion_inputs(style, batch, height, width)
    device = torch.device(device) if device is not None else next(style_mamba.model.parameters()).device
    model = style_mamba.model.to(device)
    condition = condition.to(device)
    style_weights = style_weights.to(device) if style_weights is not None else None
    per_latent = style_weights is not None and style_weights.dim() == 4  # regional maps are sliced with the chunks
    precision = functools.partial(torch.autocast, device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext

    def fuse(chunk: torch.Tensor, chunk_weights: torch.Tensor | None, context: TemporalContext | None) -> torch.Tensor:
        with precision():
            styled_chunk = model(chunk.to(device=device, dtype=torch.float32), condition, strength, chunk_weights, context)
        return styled_chunk.to(samples.device, samples.dtype)

    outputs = []
    if samples.dim() == 5:
        total = samples.shape[2]
        context = TemporalContext(frames=0) if across_frames else None
        for start in range(0, total, batch_size):
            frames = min(batch_size, total - start)
            chunk = samples[:, :, start : start + frames].movedim(1, 2).flatten(0, 1)
            if context is not None:
                context.frames = frames
            outputs.append(fuse(chunk, per_frame(style_weights, frames), context).unflatten(0, (batch, frames)).movedim(1, 2))
            if progress is not None:
                progress(start + frames, total)
        styled = torch.cat(outputs, dim=2)
    else:
        for start in range(0, batch, batch_size):
            chunk_weights = style_weights[start : start + batch_size] if per_latent else style_weights
            outputs.append(fuse(samples[start : start + batch_size], chunk_weights, None))
            if progress is not None:
                progress(min(start + batch_size, batch), batch)
        styled = torch.cat(outputs)
    if mask is None and coverage is None:
        return styled
    weights = coverage.to(samples.device) if coverage is not None else 1
    if samples.dim() == 5:
        weights = weights[:, :, None] if coverage is not None else 1
        if mask is not None:
            weights = weights * video_mask(mask.to(samples.device), samples)
    elif mask is not None:
        weights = weights * latent_mask(mask.to(samples.device), batch, height, width)
    weights = weights.to(samples.dtype)
    return samples + weights * (styled - samples)
