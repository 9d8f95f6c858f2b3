"""diffusers autoencoders (AutoencoderKL, AutoencoderTiny) behind encode/decode in [0, 1] image space.

Latents are the raw encoder output (no scaling factor), the same values ComfyUI's VAEEncode puts
in a LATENT, so a checkpoint behaves alike in the shell and in a graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .pretrained import pretrained_source, quiet_loading

SUPPORTED_CLASSES = ("AutoencoderKL", "AutoencoderTiny")


@dataclass
class DiffusersVAE:
    name: str
    model: torch.nn.Module

    @property
    def latent_channels(self) -> int:
        return self.model.config.latent_channels

    @property
    def downscale(self) -> int:
        """Pixels per latent cell: one halving per encoder stage after the first."""
        config = self.model.config
        blocks = getattr(config, "block_out_channels", None) or config.encoder_block_out_channels
        return 2 ** (len(blocks) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) in [0, 1], H and W multiples of ``downscale`` → latent mean."""
        out = self.model.encode(images * 2 - 1)
        return out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (self.model.decode(latents).sample / 2 + 0.5).clamp(0, 1)


#: What a local VAE folder holds; quoted when one cannot be found.
VAE_FILES = "config.json + diffusion_pytorch_model.safetensors (diffusers format)"


def check_vae_source(name_or_path: str) -> bool:
    """A VAE folder that exists, or a hub id that is cached or downloadable now; returns ``local_files_only``."""
    return pretrained_source(name_or_path, "VAE", VAE_FILES)


def load_diffusers_vae(name_or_path: str, device: torch.device | str = "cpu") -> DiffusersVAE:
    """Load from a local diffusers folder or a hub id; the class is read from its config.json."""
    local_files_only = check_vae_source(name_or_path)
    class_name = "AutoencoderKL"
    config_file = Path(name_or_path).expanduser() / "config.json"
    if config_file.is_file():
        class_name = json.loads(config_file.read_text()).get("_class_name", class_name)
    elif Path(name_or_path).expanduser().exists():
        raise FileNotFoundError(f"{name_or_path} has no config.json: give a diffusers VAE folder ({VAE_FILES}) or a hub id")
    if class_name not in SUPPORTED_CLASSES:
        raise ValueError(f"{name_or_path} holds a {class_name}; supported VAEs: {', '.join(SUPPORTED_CLASSES)}")
    try:
        with quiet_loading("diffusers"):
            import diffusers

            model = getattr(diffusers, class_name).from_pretrained(name_or_path, local_files_only=local_files_only)
    except OSError as error:
        raise FileNotFoundError(
            f"VAE {name_or_path!r} could not be loaded ({error}); pass a local diffusers VAE folder ({VAE_FILES}) "
            "or run with network access"
        ) from error
    return DiffusersVAE(name_or_path, model.to(device).eval().requires_grad_(False))


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple of the VAE's downscale; returns the original size to crop back."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect" if min(height, width) > max(pad_h, pad_w) else "replicate")
    return images, (height, width)
