"""StyleMamba checkpoints: safetensors + metadata, validated on load, written atomically.

Metadata (all strings, as safetensors requires): format, format_version, config (JSON),
latent_channels, style_dim, text_encoder, training (JSON: prompts and settings), and the encoder's
encoder_family, encoder_width and (for a CLIP_VISION tower) encoder_fingerprint. Files written before those
three keys existed load unchanged; where they are present they must agree with text_encoder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import PackError
from .atomic import write_atomically
from .config import DEFAULT_TEXT_ENCODER, StyleMambaConfig
from .model import StyleFusionModel
from .state_dicts import state_dict_problems
from .tower_identity import TowerIdentity

FORMAT = "stylemamba"
FORMAT_VERSION = 2
#: The first format whose files hold the temporal mixers (``temporal.*``); older files must hold none of them.
TEMPORAL_VERSION = 2


class CheckpointError(PackError, ValueError):
    """A checkpoint that cannot be used, with the reason in the user's terms."""


@dataclass
class StyleMamba:
    """What the STYLE_MAMBA socket carries: the fusion model plus the encoder it was trained against."""

    model: StyleFusionModel
    text_encoder: str = DEFAULT_TEXT_ENCODER
    training: dict = field(default_factory=dict)
    source: str = "new (untrained)"

    @property
    def config(self) -> StyleMambaConfig:
        return self.model.config


def new_style_mamba(config: StyleMambaConfig, text_encoder: str = DEFAULT_TEXT_ENCODER, seed: int = 0) -> StyleMamba:
    """A freshly initialised (identity) model; the seed makes its random mixer weights reproducible."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = StyleFusionModel(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    return StyleMamba(model=model, text_encoder=text_encoder)


def checkpoint_metadata(style_mamba: StyleMamba) -> dict[str, str]:
    config = style_mamba.config
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": config.to_json(),
        "latent_channels": str(config.latent_channels),
        "style_dim": str(config.style_dim),
        "text_encoder": style_mamba.text_encoder,
        "training": json.dumps(style_mamba.training, sort_keys=True, default=str),
        **encoder_metadata(style_mamba.text_encoder, config.style_dim),
    }


def encoder_metadata(encoder_id: str, width: int) -> dict[str, str]:
    """Family, width and fingerprint of the encoder: a CLIP_VISION id's parts, or family "siglip" for a SigLIP id."""
    tower = TowerIdentity.parse(encoder_id)
    if tower is None:
        return {"encoder_family": "siglip", "encoder_width": str(width)}
    return {"encoder_family": tower.family, "encoder_width": str(tower.width), "encoder_fingerprint": tower.fingerprint}


def save_checkpoint(style_mamba: StyleMamba, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write to a temp file beside ``path`` and move it in place, so a crash never leaves half a file.

    Without ``overwrite`` an existing file is never replaced, even if it appears during the write.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint path must end in .safetensors, got {path.name!r}")
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in style_mamba.model.state_dict().items()}
    metadata = checkpoint_metadata(style_mamba)
    return write_atomically(path, lambda temp: save_file(tensors, temp, metadata=metadata), overwrite)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata, or a CheckpointError for missing, truncated and foreign files."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"StyleMamba checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path.name} is not a readable safetensors file (truncated or corrupt?): {error}") from error
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path.name} is a safetensors file but not a StyleMamba checkpoint (metadata format="
            f"{metadata.get('format')!r}); StyleMamba checkpoints are made by TrainStyleMamba / SaveStyleMamba"
        )
    return metadata


def parse_metadata(metadata: dict[str, str], name: str) -> tuple[StyleMambaConfig, str, dict]:
    """Config, text-encoder id and training record, each checked against the others."""
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{name}: format_version {metadata.get('format_version')!r} is not a number") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{name} uses checkpoint format {version}; this pack reads up to {FORMAT_VERSION}: update the pack")
    try:
        config = StyleMambaConfig.from_json(metadata["config"])
        training = json.loads(metadata.get("training", "{}"))
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{name}: bad model config in metadata: {error}") from error
    for key in ("latent_channels", "style_dim"):
        stored = metadata.get(key)
        if stored is not None and stored != str(getattr(config, key)):
            raise CheckpointError(f"{name}: metadata {key}={stored} disagrees with the config's {getattr(config, key)}")
    text_encoder = metadata.get("text_encoder")
    if not text_encoder:
        raise CheckpointError(f"{name}: metadata does not name the text encoder it was trained with")
    try:
        recorded = encoder_metadata(text_encoder, config.style_dim)
    except ValueError as error:
        raise CheckpointError(f"{name}: {error}") from None
    for key, value in recorded.items():
        if key in metadata and metadata[key] != value:
            raise CheckpointError(f"{name}: metadata {key}={metadata[key]!r} disagrees with its encoder {text_encoder!r} ({value!r})")
    if recorded["encoder_width"] != str(config.style_dim):
        raise CheckpointError(f"{name}: encoder {text_encoder!r} gives {recorded['encoder_width']}-d styles but the model takes {config.style_dim}-d")
    return config, text_encoder, training


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> StyleMamba:
    """Build the model from the stored config and load weights, naming every mismatch."""
    from safetensors.torch import load_file

    path = Path(path)
    metadata = read_metadata(path)
    config, text_encoder, training = parse_metadata(metadata, path.name)
    model = StyleFusionModel(config)
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as error:
        raise CheckpointError(f"{path.name}: tensor data unreadable (truncated download?): {error}") from error
    expected = model.state_dict()
    before_video = int(metadata["format_version"]) < TEMPORAL_VERSION
    if before_video:  # an image-only file: its temporal mixers keep their identity (zero-output) initialisation
        expected = {name: value for name, value in expected.items() if not name.startswith("temporal.")}
    problems = state_dict_problems(expected, tensors)
    if problems:
        raise CheckpointError(f"{path.name} does not match its own config: {problems}")
    model.load_state_dict(tensors, strict=not before_video)
    return StyleMamba(model=model.to(device).eval(), text_encoder=text_encoder, training=training, source=str(path))
