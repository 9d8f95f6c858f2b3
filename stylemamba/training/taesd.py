"""Tiny autoencoders of the TAESD family (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2) as plain modules.

They decode a latent of the matching full VAE in a few milliseconds and are fully differentiable,
which makes them a cheap proxy decoder while fitting a style. Built from the published
architecture (``nn.Sequential`` indices match the released ``*_encoder.pth`` / ``*_decoder.pth``
state dicts, so they load without renaming).

A tiny autoencoder works in the *scaled* latent space of its family; ``TinyAutoencoder``
converts from and to the raw VAE latents that ComfyUI's LATENT holds, with
``tae_latent = (raw - shift) * scale``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...errors import PackError

WIDTH = 64


@dataclass(frozen=True)
class TinyFamily:
    """One latent family: the full VAE's channel count and how its raw latents map to the TAE's."""

    name: str
    latent_channels: int
    scale: float
    shift: float


#: Scale/shift per family, the values ComfyUI uses to put a TAE behind its VAE interface.
FAMILIES = {
    family.name: family
    for family in (
        TinyFamily("taesd", 4, 0.18215, 0.0),
        TinyFamily("taesdxl", 4, 0.13025, 0.0),
        TinyFamily("taesd3", 16, 1.5305, 0.0609),
        TinyFamily("taef1", 16, 0.3611, 0.1159),
        TinyFamily("taef2", 32, 1.0, 0.0),
    )
}


class TinyAutoencoderError(PackError, ValueError):
    """A tiny-autoencoder file that does not fit, with the reason in the user's terms."""


def conv(n_in: int, n_out: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, stride=stride, bias=bias)


class Clamp(nn.Module):
    """Soft clamp to ±3: keeps out-of-range latents (e.g. from a style edit) from exploding the decoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual 3-conv block; ``group_norm_pool`` adds TAEF2's global-context branch before it."""

    def __init__(self, n_in: int, n_out: int, group_norm_pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.pool = (
            nn.Sequential(
                nn.Conv2d(n_in, 4 * n_in, 1, bias=False), nn.GroupNorm(4, 4 * n_in), nn.ReLU(),
                nn.Conv2d(4 * n_in, n_in, 1, bias=False),
            )
            if group_norm_pool
            else None
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(latent_channels: int, group_norm: bool = False) -> nn.Sequential:
    """Image in [0, 1] → TAE latent at 1/8 resolution; ``group_norm`` for the last stage (TAEF2)."""
    layers: list[nn.Module] = [conv(3, WIDTH), Block(WIDTH, WIDTH)]
    for stage in range(3):
        pooled = group_norm and stage == 2
        layers += [conv(WIDTH, WIDTH, bias=False, stride=2), *(Block(WIDTH, WIDTH, pooled) for _ in range(3))]
    layers.append(conv(WIDTH, latent_channels))
    return nn.Sequential(*layers)


def build_decoder(latent_channels: int, group_norm: bool = False) -> nn.Sequential:
    """TAE latent → image in about [0, 1]; ``group_norm`` for the first three blocks (TAEF2)."""
    layers: list[nn.Module] = [Clamp(), conv(latent_channels, WIDTH), nn.ReLU()]
    for stage in range(3):
        pooled = group_norm and stage == 0
        layers += [*(Block(WIDTH, WIDTH, pooled) for _ in range(3)), nn.Upsample(scale_factor=2), conv(WIDTH, WIDTH, bias=False)]
    layers += [Block(WIDTH, WIDTH), conv(WIDTH, 3)]
    return nn.Sequential(*layers)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A .safetensors file or a torch.load-able plain state dict (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tiny autoencoder file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TinyAutoencoderError(f"{path.name} is not a readable state dict (truncated or not a TAESD file?): {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TinyAutoencoderError(f"{path.name} does not hold a plain state dict of tensors")
    return state


def split_combined(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a one-file TAE (``encoder.*``/``decoder.*`` or ComfyUI's ``taesd_encoder.*``/``taesd_decoder.*``)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "decoder": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        part = head.removeprefix("taesd_")
        if part in parts and rest:
            parts[part][rest] = value
    return parts["encoder"], parts["decoder"]


def decoder_latent_channels(state: dict[str, torch.Tensor]) -> int:
    if "1.weight" not in state:
        raise TinyAutoencoderError("not a TAESD-family decoder state dict (no '1.weight': the first conv after the clamp)")
    return state["1.weight"].shape[1]


def encoder_latent_channels(state: dict[str, torch.Tensor]) -> int:
    if "14.weight" not in state:
        raise TinyAutoencoderError("not a TAESD-family encoder state dict (no '14.weight': the final conv to the latent)")
    return state["14.weight"].shape[0]


def uses_group_norm(state: dict[str, torch.Tensor]) -> bool:
    return any(".pool." in key for key in state)


def guess_family(path: str | os.PathLike, latent_channels: int) -> TinyFamily:
    """By file name (ComfyUI's ``taesd3_decoder.pth`` convention), else by channel count where unique."""
    stem = Path(path).name.lower()
    for name in sorted(FAMILIES, key=len, reverse=True):  # "taesdxl" before "taesd"
        if stem.startswith(name):
            family = FAMILIES[name]
            if family.latent_channels != latent_channels:
                raise TinyAutoencoderError(
                    f"{Path(path).name} is named like {name} ({family.latent_channels}-channel latents) "
                    f"but its weights have {latent_channels} latent channels"
                )
            return family
    matches = [f for f in FAMILIES.values() if f.latent_channels == latent_channels]
    if len(matches) == 1 or latent_channels == 4:  # TAESD and TAESDXL share a space up to scale; SD1.5 is the default
        return matches[0]
    if not matches:
        raise TinyAutoencoderError(f"{Path(path).name}: no TAESD family has {latent_channels} latent channels")
    names = " or ".join(f.name for f in matches)
    raise TinyAutoencoderError(f"{Path(path).name}: {latent_channels}-channel latents could be {names}; name the family explicitly")


class TinyAutoencoder(nn.Module):
    """Encoder and/or decoder of one TAE, speaking the full VAE's raw latents and images in [0, 1]."""

    downscale = 8  # pixels per latent cell, for every family

    def __init__(self, family: TinyFamily, decoder: nn.Module | None, encoder: nn.Module | None = None):
        super().__init__()
        if decoder is None and encoder is None:
            raise TinyAutoencoderError("a tiny autoencoder needs an encoder, a decoder or both")
        self.family = family
        self.decoder = decoder
        self.encoder = encoder

    @property
    def latent_channels(self) -> int:
        return self.family.latent_channels

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latent (b, C, h, w) → image (b, 3, 8h, 8w) in [0, 1], differentiable."""
        if self.decoder is None:
            raise TinyAutoencoderError(f"this {self.family.name} was loaded without its decoder")
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise TinyAutoencoderError(
                f"{self.family.name} decodes {self.latent_channels}-channel latents, got shape {tuple(latents.shape)}"
            )
        weight = self.decoder[1].weight
        scaled = (latents.to(weight.dtype) - self.family.shift) * self.family.scale
        return self.decoder(scaled).clamp(0, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Image (b, 3, H, W) in [0, 1], H and W multiples of 8 → raw VAE latent."""
        if self.encoder is None:
            raise TinyAutoencoderError(f"this {self.family.name} was loaded without its encoder")
        if images.dim() != 4 or images.shape[1] != 3:
            raise TinyAutoencoderError(f"images must be (batch, 3, height, width) in [0, 1], got {tuple(images.shape)}")
        weight = self.encoder[0].weight
        return self.encoder(images.to(weight.dtype)) / self.family.scale + self.family.shift


def _build(state: dict[str, torch.Tensor], part: str, name: str) -> tuple[nn.Sequential, int]:
    channels = decoder_latent_channels(state) if part == "decoder" else encoder_latent_channels(state)
    builder = build_decoder if part == "decoder" else build_encoder
    module = builder(channels, uses_group_norm(state))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        shown = ", ".join([f"missing {k}" for k in missing[:4]] + [f"unexpected {k}" for k in unexpected[:4]])
        raise TinyAutoencoderError(f"{name} is not a TAESD-family {part}: {shown}")
    return module.eval().requires_grad_(False), channels


def load_tiny_autoencoder(
    decoder_path: str | os.PathLike | None = None,
    encoder_path: str | os.PathLike | None = None,
    family: str | None = None,
) -> TinyAutoencoder:
    """Load from separate encoder/decoder files or one combined file (pass it as ``decoder_path``).

    The latent channel count comes from the weights; ``family`` (e.g. ``"taef1"``) is only needed
    when the file name does not say it and the channel count is ambiguous (16: TAESD3 or TAEF1).
    """
    if decoder_path is None and encoder_path is None:
        raise TinyAutoencoderError("give a tiny autoencoder decoder file, encoder file, or both")
    decoder_state = load_state_dict(decoder_path) if decoder_path is not None else None
    encoder_state = load_state_dict(encoder_path) if encoder_path is not None else None
    if decoder_state is not None and encoder_state is None and "1.weight" not in decoder_state:
        encoder_state, decoder_state = split_combined(decoder_state)
        if not decoder_state:
            raise TinyAutoencoderError(f"{Path(decoder_path).name} holds neither a TAESD-family decoder nor encoder.*/decoder.* weights")
        encoder_state = encoder_state or None
    decoder = encoder = None
    channels = []
    if decoder_state is not None:
        decoder, count = _build(decoder_state, "decoder", Path(decoder_path).name)
        channels.append(count)
    if encoder_state is not None:
        name = Path(encoder_path or decoder_path).name
        encoder, count = _build(encoder_state, "encoder", name)
        channels.append(count)
    if len(set(channels)) > 1:
        raise TinyAutoencoderError(f"encoder makes {channels[1]}-channel latents but decoder reads {channels[0]}: files of different families")
    path = decoder_path if decoder_path is not None else encoder_path
    if family is None:
        chosen = guess_family(path, channels[0])
    else:
        if family not in FAMILIES:
            raise TinyAutoencoderError(f"unknown tiny autoencoder family {family!r}; choose from {', '.join(FAMILIES)}")
        chosen = FAMILIES[family]
        if chosen.latent_channels != channels[0]:
            raise TinyAutoencoderError(f"{family} uses {chosen.latent_channels}-channel latents but the weights have {channels[0]}")
    return TinyAutoencoder(chosen, decoder, encoder)


def find_pair(path: str | os.PathLike) -> tuple[Path | None, Path | None]:
    """Given either ``<family>_decoder.*`` or ``<family>_encoder.*``, find its partner beside it."""
    path = Path(path)
    for own, other in (("_decoder", "_encoder"), ("_encoder", "_decoder")):
        if own in path.stem:
            partners = sorted(path.parent.glob(path.stem.replace(own, other) + ".*"))
            partner = partners[0] if partners else None
            return (path, partner) if own == "_decoder" else (partner, path)
    return path, None


def load_tiny_decoder(
    path: str | os.PathLike, latent_channels: int, device: torch.device | str = "cpu", family: str | None = None
) -> TinyAutoencoder:
    """The tiny autoencoder a fit decodes through instead of the full VAE, refused unless it reads the VAE's latents.

    ``path`` may name the decoder, its encoder partner or a one-file TAE (e.g. taef2.safetensors).
    """
    decoder_path, _ = find_pair(path)
    tiny = load_tiny_autoencoder(decoder_path, family=family).to(device)
    if tiny.latent_channels != latent_channels:
        raise TinyAutoencoderError(
            f"{decoder_path.name} decodes {tiny.latent_channels}-channel latents ({tiny.family.name}) but the VAE makes "
            f"{latent_channels}-channel latents; pick the tiny autoencoder of the VAE's latent family"
        )
    return tiny
