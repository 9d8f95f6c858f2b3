"""A STYLE_EMBED that holds several weighted styles, each optionally limited to a region by a mask.

StyleFuse applies a mix in one pass (see ``StyleFusionModel``: the styles' AdaLN modulations are mixed).
Rules, in the user's terms:

- Weights are normalised to sum to 1; a weight of 0 drops its style; negative or all-zero weights are refused.
- Without masks every latent pixel gets the same weighted mix.
- With masks, each latent pixel mixes the styles in proportion to weight × mask value, so a soft edge blends
  two styles smoothly and the weights only matter where styles overlap. A style without a mask covers the
  whole latent. The latent changes as much as the masks cover it (their sum, capped at 1): a pixel no mask
  covers keeps its exact input value, as with StyleFuse's own mask.
- A mix used inside a mix contributes its styles, their weights scaled by its own weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .encoders import encoder_identity
from .masks import check_region_mask, region_on_latent
from .style import StyleEmbedding

#: The weights must add up to more than this; below it they are taken as all zero.
MIN_TOTAL_WEIGHT = 1e-8


@dataclass(frozen=True)
class WeightedStyle:
    """One style of a mix: its normalised weight and an optional MASK (b, h, w) or (h, w) in [0, 1]."""

    style: StyleEmbedding
    weight: float
    mask: torch.Tensor | None = None


@dataclass(frozen=True)
class StyleMix:
    """Several styles as one STYLE_EMBED; ``target``/``source``/``direction`` are their weighted means.

    Those means stand for the mix wherever one point in SigLIP space is needed (scores, losses); the
    fusion model itself conditions on every style's own embedding (``embeddings``).
    """

    components: tuple[WeightedStyle, ...]

    @property
    def encoder(self) -> str:
        return self.components[0].style.encoder

    @property
    def description(self) -> str:
        return " + ".join(
            f"{c.weight:.2f} × {c.style.description}{' (masked)' if c.mask is not None else ''}" for c in self.components
        )

    @property
    def embeddings(self) -> torch.Tensor:
        """(k, dim): the fusion model's condition for each style."""
        return torch.cat([c.style.target for c in self.components])

    def _weighted_mean(self, name: str) -> torch.Tensor:
        return F.normalize(sum(c.weight * getattr(c.style, name) for c in self.components), dim=-1)

    @property
    def target(self) -> torch.Tensor:
        return self._weighted_mean("target")

    @property
    def source(self) -> torch.Tensor:
        return self._weighted_mean("source")

    @property
    def direction(self) -> torch.Tensor:
        return F.normalize(self.target - self.source, dim=-1)

    def latent_weights(self, batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(style weights, coverage) for a (batch, C, height, width) latent.

        Without masks: (1, k) weights and no coverage. With masks: (batch, k, height, width) weights that
        sum to 1 at every pixel (the global weights where no mask reaches) and (batch, 1, height, width)
        coverage in [0, 1]; on the CPU, where the apply path moves them to the model's device.
        """
        weights = torch.tensor([c.weight for c in self.components], dtype=torch.float32)
        if all(c.mask is None for c in self.components):
            return weights[None], None
        maps = [
            torch.ones(batch, 1, height, width) if c.mask is None
            else region_on_latent(c.mask.cpu(), f"StyleMix: the mask of {c.style.description!r}", batch, height, width)
            for c in self.components
        ]
        masks = torch.cat(maps, dim=1)
        weighted = masks * weights.view(1, -1, 1, 1)
        total = weighted.sum(dim=1, keepdim=True)
        covered = total > 0
        mixed = torch.where(covered, weighted / torch.where(covered, total, torch.ones_like(total)), weights.view(1, -1, 1, 1))
        return mixed, masks.sum(dim=1, keepdim=True).clamp(max=1)


def normalise_weights(weights: Sequence[float], owner: str, item: str) -> list[float]:
    """Weights that are finite and 0 or more, scaled to sum to 1; all zero is refused (nothing would be left)."""
    for index, weight in enumerate(weights, start=1):
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{owner}: weight {index} is {weight}; weights must be finite and 0 or more")
    total = math.fsum(weights)
    if total <= MIN_TOTAL_WEIGHT:
        raise ValueError(f"{owner}: the weights {list(weights)} are all zero; give at least one {item} a positive weight")
    return [weight / total for weight in weights]


def _flatten(style: StyleEmbedding | StyleMix, weight: float, mask: torch.Tensor | None, index: int) -> list[WeightedStyle]:
    """A plain style as it is; a nested mix as its own styles, weights scaled, the outer mask handed down."""
    if not isinstance(style, StyleMix):
        return [WeightedStyle(style, weight, mask)]
    if mask is not None and any(c.mask is not None for c in style.components):
        raise ValueError(f"StyleMix: style {index} is a mix with its own masks; give masks to only one of the two mixes")
    return [WeightedStyle(c.style, weight * c.weight, mask if c.mask is None else c.mask) for c in style.components]


def mix_styles(
    styles: Sequence[StyleEmbedding | StyleMix], weights: Sequence[float], masks: Sequence[torch.Tensor | None] | None = None
) -> StyleMix:
    """Check and normalise a weighted (and optionally masked) set of styles into one ``StyleMix``."""
    masks = list(masks) if masks is not None else [None] * len(styles)
    if not styles:
        raise ValueError("StyleMix needs at least one style")
    if len(weights) != len(styles) or len(masks) != len(styles):
        raise ValueError(f"StyleMix: {len(styles)} styles need {len(styles)} weights and masks, got {len(weights)} and {len(masks)}")
    shares = normalise_weights(weights, "StyleMix", "style")
    for index, mask in enumerate(masks, start=1):
        if mask is not None:
            check_region_mask(mask, f"StyleMix: mask {index}")
    parts = [
        part
        for index, (style, share, mask) in enumerate(zip(styles, shares, masks), start=1)
        for part in _flatten(style, share, mask, index)
        if part.weight > 0
    ]
    first = parts[0].style
    for part in parts[1:]:
        if encoder_identity(part.style.encoder, part.style.target.shape[-1]) != encoder_identity(first.encoder, first.target.shape[-1]):
            raise ValueError(
                f"StyleMix: {part.style.description!r} was encoded with {part.style.encoder!r} but "
                f"{first.description!r} with {first.encoder!r}; encode every style with the same StyleMamba model"
            )
    return StyleMix(tuple(parts))


def fusion_inputs(
    style: StyleEmbedding | StyleMix, batch: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(conditions, style weights, coverage) for the fusion model; a plain style is its target alone."""
    if isinstance(style, StyleMix):
        return (style.embeddings, *style.latent_weights(batch, height, width))
    return style.target, None, None
