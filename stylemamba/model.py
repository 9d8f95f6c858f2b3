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

from ..errors import PackError
from ..kernels import cross_scan_2d
from .config import StyleMambaConfig
from .latent_families import latent_channel_mismatch
from .temporal import TemporalContext, TemporalMixer


class ModelInputError(PackError, ValueError):
    """A latent this model cannot restyle (wrong channel count), or a style it cannot take."""


def latent_statistics(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and std (b, C, 1, 1) that put any VAE's latents on one scale.

    The model works on ``(latent - mean) / std`` and the latent content loss measures changes in
    the same units, so neither depends on the VAE family's scaling. A 1-pixel latent has no
    spread: its std is taken as 1.
    """
    mean = latent.mean(dim=(2, 3), keepdim=True)
    if latent.shape[-2] * latent.shape[-1] == 1:
        return mean, torch.ones_like(mean)
    return mean, latent.std(dim=(2, 3), keepdim=True, unbiased=False).clamp_min(1e-4)


def tokenwise(params: torch.Tensor) -> torch.Tensor:
    """Modulation (b, c) for the whole latent → (b, 1, c); per-token modulation (b, tokens, c) stays as it is."""
    return params[:, None] if params.dim() == 2 else params


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: x is (b, tokens, c); shift and scale are (b, c) from the style vector, or (b, tokens, c) per token."""
    return x * (1 + tokenwise(scale)) + tokenwise(shift)


def mix_modulation(params: torch.Tensor, style_weights: torch.Tensor | None) -> torch.Tensor:
    """Weighted sum of each style's AdaLN parameters (k, c) → (b, c) globally or (b, tokens, c) per token.

    ``style_weights`` is (b, k) or (b, tokens, k) and sums to 1 over k; None means ``params`` is already
    one style per sample. A weight of exactly 1 returns that style's parameters bit for bit.
    """
    if style_weights is None:
        return params
    return torch.einsum("...k,kc->...c", style_weights.to(params.dtype), params)


def token_weights(style_weights: torch.Tensor, patch: int) -> torch.Tensor:
    """Latent-pixel style weights (b, k, H, W) → (b, tokens, k): each token gets the mean over its patch.

    Padded like the latent (replicate) so edge tokens average real pixels only; the mean of convex
    weights stays convex, and a soft mask edge becomes a soft blend between neighbouring tokens.
    """
    height, width = style_weights.shape[-2:]
    pad_h, pad_w = (-height) % patch, (-width) % patch
    weights = style_weights.float()
    weights = F.pad(weights, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else weights
    return F.avg_pool2d(weights, patch).flatten(2).transpose(1, 2)


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

    def forward(
        self, x: torch.Tensor, style: torch.Tensor, height: int, width: int, style_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        params = mix_modulation(self.modulation(style), style_weights)
        shift1, scale1, gate1, shift2, scale2, gate2 = params.chunk(6, dim=-1)
        x = x + tokenwise(gate1) * self.mixer(modulate(self.norm1(x), shift1, scale1), height, width)
        return x + tokenwise(gate2) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class StyleFusionModel(nn.Module):
    """Latent (b, C, H, W) + style embedding (b or 1, style_dim) → restyled latent of the same shape.

    Latents are standardised per sample and channel before the blocks and the predicted change is
    scaled back by the same std, so one model behaves alike on every VAE's latent scale.

    Several styles in one pass: ``style`` holds k embeddings (k, style_dim) and ``style_weights`` says how
    much of each style every sample (b, k) or every latent pixel (b, k, H, W) gets; the weights sum to 1.
    The styles' AdaLN modulations (shift, scale, gate of every block and the final layer) are mixed, not
    their embeddings: the style MLP is nonlinear, so a blend of two SigLIP embeddings is a third style the
    model never saw, while a blend of modulations conditions each style exactly as its own run does, a
    weight of 1 reproduces that style bit for bit, and per-token mixing costs k modulations per block
    plus a (tokens × k) weighted sum instead of a modulation per token.
    """

    def __init__(self, config: StyleMambaConfig):
        super().__init__()
        self.config = config
        w, p = config.width, config.patch_size
        self.style_embed = nn.Sequential(nn.Linear(config.style_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.stem = nn.Conv2d(config.latent_channels, w, kernel_size=p, stride=p)
        self.blocks = nn.ModuleList(FusionBlock(config) for _ in range(config.depth))
        # Video only (``forward(..., temporal=)``); zero-initialised output, so images and fresh weights never see it.
        self.temporal = nn.ModuleList(TemporalMixer(config) for _ in range(config.depth))
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
        for mixer in self.temporal:
            mixer.scan_backend = backend

    def check_latent_channels(self, channels: int) -> None:
        """The one latent-channel check (the model's own and every caller's up-front one), naming both VAE families."""
        if channels != self.config.latent_channels:
            raise ModelInputError(latent_channel_mismatch(self.config.latent_channels, channels))

    def check_inputs(self, latent: torch.Tensor, style: torch.Tensor, style_weights: torch.Tensor | None = None) -> None:
        """Fail with the exact mismatch before any compute."""
        if latent.dim() != 4:
            raise ValueError(f"latent must be (batch, channels, height, width), got shape {tuple(latent.shape)}")
        self.check_latent_channels(latent.shape[1])
        if style.dim() != 2 or style.shape[1] != self.config.style_dim:
            raise ValueError(
                f"style embedding must be (batch, {self.config.style_dim}); got {tuple(style.shape)}: "
                "it was encoded with a different text encoder than this model was trained with"
            )
        if style_weights is None:
            if style.shape[0] not in (1, latent.shape[0]):
                raise ValueError(f"{style.shape[0]} style embeddings for a batch of {latent.shape[0]} latents")
            return
        self.check_style_weights(latent, style.shape[0], style_weights)

    @staticmethod
    def check_style_weights(latent: torch.Tensor, styles: int, style_weights: torch.Tensor) -> None:
        """Mixing weights: (1 or b, k) or (1 or b, k, H, W) of the latent's size, non-negative, summing to 1."""
        batch, _, height, width = latent.shape
        spatial = (height, width)
        if style_weights.dim() not in (2, 4) or style_weights.shape[1] != styles:
            raise ValueError(
                f"style_weights must be (batch, {styles}) or (batch, {styles}, {height}, {width}) for {styles} styles, "
                f"got shape {tuple(style_weights.shape)}"
            )
        if style_weights.dim() == 4 and tuple(style_weights.shape[-2:]) != spatial:
            raise ValueError(f"style_weights cover {tuple(style_weights.shape[-2:])} latent pixels, the latent has {spatial}")
        if style_weights.shape[0] not in (1, batch):
            raise ValueError(f"style_weights for {style_weights.shape[0]} latents, the batch has {batch}")
        sums = style_weights.float().sum(dim=1)
        if not torch.isfinite(sums).all() or (style_weights < 0).any() or (sums - 1).abs().max() > 1e-4:
            raise ValueError(
                "style_weights must be non-negative and sum to 1 over the styles at every sample and pixel; "
                f"sums run from {sums.min().item():.4g} to {sums.max().item():.4g}"
            )

    def forward(
        self,
        latent: torch.Tensor,
        style: torch.Tensor,
        strength: float = 1.0,
        style_weights: torch.Tensor | None = None,
        temporal: TemporalContext | None = None,
    ) -> torch.Tensor:
        self.check_inputs(latent, style, style_weights)
        batch, _, height, width = latent.shape
        p = self.config.patch_size
        x = latent.to(self.stem.weight.dtype)
        mean, std = latent_statistics(x)
        x = (x - mean) / std
        pad_h, pad_w = (-height) % p, (-width) % p
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        tokens = self.stem(x)
        grid_h, grid_w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        if style_weights is None:
            cond = F.silu(self.style_embed(style.to(tokens.dtype)).expand(batch, -1))
        else:  # one condition per style; the blocks mix their modulations
            cond = F.silu(self.style_embed(style.to(tokens.dtype)))
            style_weights = token_weights(style_weights, p) if style_weights.dim() == 4 else style_weights
        for index, block in enumerate(self.blocks):
            tokens = block(tokens, cond, grid_h, grid_w, style_weights)
            if temporal is not None:  # latent holds temporal.frames consecutive frames per sample
                tokens = temporal.mix(index, self.temporal[index], tokens, grid_h, grid_w)
        shift, scale = mix_modulation(self.final_modulation(cond), style_weights).chunk(2, dim=-1)
        change = self.head(modulate(self.final_norm(tokens), shift, scale))
        change = change.transpose(1, 2).reshape(batch, -1, grid_h, grid_w)
        change = F.pixel_shuffle(change, p)[:, :, :height, :width]
        return latent + (strength * change * std).to(latent.dtype)
