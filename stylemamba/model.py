"""Style Fusion Module: AdaLN-conditioned 2D Mamba blocks that restyle a VAE latent.

StyleMamba (arXiv 2405.05027) conditions selective-scan blocks on a SigLIP text embedding.
Here the blocks run on patchified latent tokens; each block's AdaLN gates and the output
projection start at zero, so a fresh model returns its input exactly and training only
has to learn the style change.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import cross_scan_2d
from .config import StyleMambaConfig


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: x is (b, tokens, c); shift and scale are (b, c) from the style vector."""
    return x * (1 + scale[:, None]) + shift[:, None]


class CrossScanMixer(nn.Module):
    """Mamba (S6) mixer over a 2D token grid, scanned in up to four directions and summed."""

    def __init__(self, config: StyleMambaConfig):
        super().__init__()
        inner, k, n, rank = config.inner_width, config.scan_directions, config.d_state, config.dt_rank
        self.in_proj = nn.Linear(config.width, 2 * inner, bias=False)
        self.conv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)
        # Per-direction projections computed on the grid: the scan kernel reorders them itself.
        self.x_proj = nn.Parameter(torch.randn(k, rank + 2 * n, inner) / math.sqrt(inner))
        self.dt_proj = nn.Parameter(torch.randn(k, inner, rank) / math.sqrt(rank))
        self.dt_bias = nn.Parameter(self._initial_dt_bias(k, inner))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k, inner, 1))
        self.D = nn.Parameter(torch.ones(k, inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, config.width, bias=False)
        self.dt_rank, self.d_state = rank, n
        self.scan_backend = "auto"

    @staticmethod
    def _initial_dt_bias(directions: int, inner: int) -> torch.Tensor:
        """Inverse softplus of step sizes log-uniform in [1e-3, 1e-1], as Mamba initialises Δ."""
        dt = torch.exp(torch.rand(directions, inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        return dt + torch.log(-torch.expm1(-dt))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch = x.shape[0]
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = u.transpose(1, 2).reshape(batch, -1, height, width)
        u = F.silu(self.conv(u))
        projected = torch.einsum("bdhw,kcd->bkchw", u, self.x_proj)
        dt, B, C = projected.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum("bkrhw,kdr->bkdhw", dt, self.dt_proj)
        y = cross_scan_2d(
            u,
            delta,
            -torch.exp(self.A_log.float()),
            B,
            C,
            D=self.D,
            delta_bias=self.dt_bias,
            delta_softplus=True,
            backend=self.scan_backend,
        )
        y = y.flatten(2).transpose(1, 2)
        return self.out_proj(self.out_norm(y) * F.silu(z))


class GatedMLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        hidden = int(width * ratio)
        self.up = nn.Linear(width, 2 * hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.up(x).chunk(2, dim=-1)
        return self.down(value * F.silu(gate))


class FusionBlock(nn.Module):
    """AdaLN-Zero block: style sets shift/scale/gate of a cross-scan mixer and an MLP."""

    def __init__(self, config: StyleMambaConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, elementwise_affine=False, eps=1e-6)
        self.mixer = CrossScanMixer(config)
        self.norm2 = nn.LayerNorm(config.width, elementwise_affine=False, eps=1e-6)
        self.mlp = GatedMLP(config.width, config.mlp_ratio)
        self.modulation = nn.Linear(config.width, 6 * config.width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor, height: int, width: int) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(style).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.mixer(modulate(self.norm1(x), shift1, scale1), height, width)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class StyleFusionModel(nn.Module):
    """Latent (b, C, H, W) + style embedding (b or 1, style_dim) → restyled latent of the same shape.

    Latents are standardised per sample and channel before the blocks and the predicted change is
    scaled back by the same std, so one model behaves alike on every VAE's latent scale.
    """

    def __init__(self, config: StyleMambaConfig):
        super().__init__()
        self.config = config
        w, p = config.width, config.patch_size
        self.style_embed = nn.Sequential(nn.Linear(config.style_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.stem = nn.Conv2d(config.latent_channels, w, kernel_size=p, stride=p)
        self.blocks = nn.ModuleList(FusionBlock(config) for _ in range(config.depth))
        self.final_norm = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(w, 2 * w)
        self.head = nn.Linear(w, config.latent_channels * p * p)
        for layer in (self.final_modulation, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def set_scan_backend(self, backend: str) -> None:
        """Choose the kernels backend for every mixer (``auto`` picks by device)."""
        for block in self.blocks:
            block.mixer.scan_backend = backend

    def check_inputs(self, latent: torch.Tensor, style: torch.Tensor) -> None:
        """Fail with the exact mismatch before any compute."""
        if latent.dim() != 4:
            raise ValueError(f"latent must be (batch, channels, height, width), got shape {tuple(latent.shape)}")
        channels = latent.shape[1]
        if channels != self.config.latent_channels:
            raise ValueError(latent_channel_mismatch(self.config.latent_channels, channels))
        if style.dim() != 2 or style.shape[1] != self.config.style_dim:
            raise ValueError(
                f"style embedding must be (batch, {self.config.style_dim}); got {tuple(style.shape)}: "
                "it was encoded with a different text encoder than this model was trained with"
            )
        if style.shape[0] not in (1, latent.shape[0]):
            raise ValueError(f"{style.shape[0]} style embeddings for a batch of {latent.shape[0]} latents")

    def forward(self, latent: torch.Tensor, style: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        self.check_inputs(latent, style)
        batch, _, height, width = latent.shape
        p = self.config.patch_size
        x = latent.to(self.stem.weight.dtype)
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True, unbiased=False).clamp_min(1e-4) if height * width > 1 else torch.ones_like(mean)
        x = (x - mean) / std
        pad_h, pad_w = (-height) % p, (-width) % p
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        tokens = self.stem(x)
        grid_h, grid_w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        cond = F.silu(self.style_embed(style.to(tokens.dtype)).expand(batch, -1))
        for block in self.blocks:
            tokens = block(tokens, cond, grid_h, grid_w)
        shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
        change = self.head(modulate(self.final_norm(tokens), shift, scale))
        change = change.transpose(1, 2).reshape(batch, -1, grid_h, grid_w)
        change = F.pixel_shuffle(change, p)[:, :, :height, :width]
        return latent + (strength * change * std).to(latent.dtype)


#: Latent families by channel count, to explain a mismatch in the user's words.
LATENT_FAMILIES = {4: "an SD1.5/SDXL VAE", 16: "an SD3/Flux.1 VAE", 32: "a Flux.2 VAE", 128: "a Flux.2 packed latent"}


def latent_channel_mismatch(expected: int, got: int) -> str:
    """A message that names both latent families, e.g. 4-channel SD vs 16-channel Flux."""
    want = LATENT_FAMILIES.get(expected, "a VAE")
    have = LATENT_FAMILIES.get(got, "an unrecognised VAE")
    return (
        f"this StyleMamba model expects {expected}-channel latents ({want}), but the LATENT has {got} channels: "
        f"it comes from {have}. Use a StyleMamba model trained for {got}-channel latents or the matching VAE."
    )
