"""Judge a stylisation: how close it is to the style in SigLIP space, how much content it keeps (SSIM),
and which strength of a sweep keeps enough content while looking most like the style.

A ``StyleMix`` is judged against the weighted mean of its styles (its ``target``): one number for the
whole picture, even where the mix puts different styles in different regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..encoders import ImageEncoder
from ..image_style import siglip_rgb
from ..images import labelled_grid, resize
from ..mixing import StyleMix
from ..style import StyleEmbedding
from .metrics import cosine_scores, ssim

#: StyleFuse's strength range; a sweep stays inside it.
MAX_STRENGTH = 2.0


@dataclass(frozen=True)
class Score:
    """Means over the batch: ``style`` of the styled images, ``content_style`` of the content (the baseline)."""

    style: float
    content_style: float
    ssim: float
    strength: float | None = None


@torch.no_grad()
def style_similarity(encoder: ImageEncoder, images: torch.Tensor, style: StyleEmbedding | StyleMix) -> torch.Tensor:
    """Cosine (b,) between the SigLIP embedding of each (b, C, H, W) image and the style's target."""
    device = next(encoder.model.parameters()).device
    features = encoder.encode(siglip_rgb(images).to(device)).float().cpu()
    return cosine_scores(features, style.target.float().cpu())


def content_ssim(styled: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """SSIM (b,) of each styled image to its content image; a content image of another size is resized to the
    styled one's (a VAE crops to a multiple of 8), and one content image serves a whole batch."""
    if content.shape[0] not in (1, styled.shape[0]):
        raise ValueError(f"{content.shape[0]} content images for {styled.shape[0]} styled images; give one, or one per styled image")
    reference = resize(content[:, :3], tuple(styled.shape[-2:])).clamp(0, 1)
    return ssim(styled[:, :3].float(), reference.expand(styled.shape[0], -1, -1, -1))


def score_images(
    encoder: ImageEncoder, styled: torch.Tensor, content: torch.Tensor, style: StyleEmbedding | StyleMix,
    content_style: float | None = None, strength: float | None = None,
) -> Score:
    """The batch-mean scores of (b, C, H, W) styled images; ``content_style`` is computed unless given (a sweep reuses it)."""
    if content_style is None:
        content_style = style_similarity(encoder, content, style).mean().item()
    return Score(
        style=style_similarity(encoder, styled, style).mean().item(),
        content_style=content_style,
        ssim=content_ssim(styled, content).mean().item(),
        strength=strength,
    )


def check_strengths(strengths: Sequence[float]) -> list[float]:
    """Strengths to sweep: at least one, each in StyleFuse's range; duplicates dropped, order kept."""
    if not strengths:
        raise ValueError("the strength sweep needs at least one strength, e.g. '0.5, 1.0, 1.5'")
    for strength in strengths:
        if not math.isfinite(strength) or not 0.0 <= strength <= MAX_STRENGTH:
            raise ValueError(f"strength {strength} is outside StyleFuse's range 0 to {MAX_STRENGTH}")
    return list(dict.fromkeys(strengths))


def sweep_strengths(
    strengths: Sequence[float], render: Callable[[float], torch.Tensor], judge: Callable[[torch.Tensor, float], Score]
) -> list[tuple[Score, torch.Tensor]]:
    """Render (b, 3, H, W) images at each strength and judge them, in order."""
    results = []
    for strength in check_strengths(strengths):
        images = render(strength)
        results.append((judge(images, strength), images))
    return results


def pick_strength(scores: Sequence[Score], min_ssim: float) -> tuple[Score, bool]:
    """The most style-like score whose SSIM is at least ``min_ssim``, and True; if none keeps that much content,
    the one that keeps the most, and False."""
    kept = [score for score in scores if score.ssim >= min_ssim]
    if kept:
        return max(kept, key=lambda score: score.style), True
    return max(scores, key=lambda score: score.ssim), False


def report(score: Score, description: str) -> str:
    """One line: style similarity against the content's baseline, content SSIM, strength when known, and the style."""
    strength = f"strength {score.strength:g} · " if score.strength is not None else ""
    return (
        f"{strength}style similarity {score.style:.3f} (content {score.content_style:.3f}, "
        f"{score.style - score.content_style:+.3f}) · content SSIM {score.ssim:.3f} · {description}"
    )


def strength_grid(results: Sequence[tuple[Score, torch.Tensor]], chosen: Score | None, tile: int = 256) -> torch.Tensor:
    """The first image of each strength side by side at ``tile`` px high, each under its label; the chosen one marked."""
    captions = [f"strength {score.strength:g}{'  (picked)' if score is chosen else ''}\nstyle {score.style:.3f}  SSIM {score.ssim:.3f}"
                for score, _ in results]
    return labelled_grid([[images[0] for _, images in results]], height=tile, captions=[captions], caption_height=30)
