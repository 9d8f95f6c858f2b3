"""The Style Fusion Module's architecture config, stored verbatim in every checkpoint."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .encoders import embedding_width

DEFAULT_TEXT_ENCODER = "google/siglip-base-patch16-224"


@dataclass(frozen=True)
class StyleMambaConfig:
    """Every number that fixes the weights' shapes; anything else is a runtime choice.

    The default runs a 512×512-image SD latent (64×64×4) in well under 5 s on 2 CPU cores:
    2×2 patches give a 32×32 token grid, so each 4-direction scan has 1024 steps.
    """

    latent_channels: int = 4
    style_dim: int = 768  # SigLIP-base text/image embedding width
    width: int = 128
    depth: int = 4
    d_state: int = 16
    expand: int = 2
    dt_rank: int = 8
    patch_size: int = 2
    scan_directions: int = 4
    mlp_ratio: float = 2.0

    def __post_init__(self) -> None:
        positive = ("latent_channels", "style_dim", "width", "depth", "d_state", "expand", "dt_rank", "patch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StyleMambaConfig.{name} must be a positive integer, got {value!r}")
        if self.scan_directions not in (1, 2, 4):
            raise ValueError(f"StyleMambaConfig.scan_directions must be 1, 2 or 4, got {self.scan_directions!r}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"StyleMambaConfig.mlp_ratio must be positive, got {self.mlp_ratio!r}")

    @property
    def inner_width(self) -> int:
        return self.width * self.expand

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StyleMambaConfig":
        """Parse a stored config, naming unknown keys instead of failing with a TypeError."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("model config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config has unknown fields {unknown}: written by a newer version of the pack?")
        return cls(**data)


def config_for_encoder(text_encoder: str, latent_channels: int, **architecture: int | float) -> StyleMambaConfig:
    """The config of a new model: ``style_dim`` is read from the SigLIP's own config, never assumed.

    The one place a new model's style width comes from (LoadStyleMamba, TrainStyleMamba and every
    command), so a model made for SigLIP so400m (1152-d) or a local folder fits the embeddings it
    will be given. ``text_encoder`` must be loadable: a folder path or a hub id.
    """
    return StyleMambaConfig(latent_channels=latent_channels, style_dim=embedding_width(text_encoder), **architecture)
