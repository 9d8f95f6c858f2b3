"""The CLIPstyler baseline (Kwon & Ye, CVPR 2022), for side-by-side evaluation with StyleMamba.

CLIPstyler optimises a light U-Net ("StyleNet") per content image and style text, in pixel
space, with the global directional loss, the thresholded patch loss, a content loss and a
total-variation prior. Here the directions live in the same SigLIP space StyleMamba uses, so
the two methods are compared under one encoder, one timer and the same loss weights.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders import ImageEncoder
from .metrics import luminance
from .losses import LossWeights, vgg_content_loss, weighted_loss
from ..style import StyleEmbedding
from .vgg import VGG19Features


class ResidualBlock(nn.Module):
    """Two 3×3 conv → instance norm → ReLU layers, plus a 1×1 conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.InstanceNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.InstanceNorm2d(out_channels), nn.ReLU(),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class StyleNet(nn.Module):
    """CLIPstyler's StyleNet: a light U-Net of residual blocks, three down- and three up-sampling stages.

    Widths follow the paper's network (base 16): a 1×1 stem, stages of 16, 32 and 64 channels each
    halved by a stride-2 4×4 conv, a 128-channel bottleneck, bilinear ×2 up-sampling that joins
    the skip of the same scale, and a last block that joins the stem features before a sigmoid
    makes the output an image in [0, 1]. Any H, W works: up-sampling targets the skip's size.
    """

    def __init__(self, base: int = 16):
        super().__init__()
        widths = (base, base, 2 * base, 4 * base)
        self.stem = nn.Sequential(nn.Conv2d(3, base, 1), ResidualBlock(base, base))
        self.down = nn.ModuleList(ResidualBlock(c_in, c_out) for c_in, c_out in zip(widths, widths[1:]))
        self.downsample = nn.ModuleList(nn.Conv2d(c, c, 4, stride=2, padding=1) for c in widths[1:])
        self.bottleneck = ResidualBlock(widths[-1], 2 * widths[-1])
        deep = (2 * widths[-1], *widths[:0:-1])  # 128, 64, 32 coming up; skips of 64, 32, 16
        self.up = nn.ModuleList(ResidualBlock(c_deep + c_skip, c_skip) for c_deep, c_skip in zip(deep, widths[:0:-1]))
        self.fuse = ResidualBlock(2 * base, base)
        self.head = nn.Conv2d(base, 3, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        stem = x = self.stem(images)
        skips = []
        for block, downsample in zip(self.down, self.downsample):
            skips.append(block(x))
            x = downsample(skips[-1])
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return torch.sigmoid(self.head(self.fuse(torch.cat([x, stem], dim=1))))


@dataclass
class ClipStylerSettings:
    """CLIPstyler's published schedule: 200 Adam steps at lr 5e-4, halved every 100 steps.

    ``contrast`` 1.5 is the boost CLIPstyler applies to the images it saves; 1.0 keeps the raw output.
    """

    iterations: int = 200
    learning_rate: float = 5e-4
    lr_step: int = 100
    lr_gamma: float = 0.5
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    contrast: float = 1.5

    def __post_init__(self) -> None:
        if self.contrast <= 0:
            raise ValueError(f"contrast must be positive, got {self.contrast}")
        if self.iterations < 1 or self.lr_step < 1:
            raise ValueError(f"iterations and lr_step must be at least 1, got {self.iterations} and {self.lr_step}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


@dataclass
class ClipStylerResult:
    image: torch.Tensor  # (1, 3, H, W) in [0, 1]
    train_seconds: float
    inference_seconds: float  # one StyleNet forward pass (and contrast boost) after training
    losses: list[float]  # total loss per iteration


def clipstyler_losses(
    net_output: torch.Tensor,
    content: torch.Tensor,
    content_features: torch.Tensor,
    direction: torch.Tensor,
    image_encoder: ImageEncoder,
    weights: LossWeights,
    vgg: VGG19Features | None,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The weighted terms of one CLIPstyler step and their ``total``, skipping zero weights.

    CLIPstyler has no masked directional term (StyleMamba's), so its weight is left out; content
    is VGG when given, else pixel MSE.
    """
    return weighted_loss(
        dataclasses.replace(weights, masked=0.0), image_encoder, net_output, content, content_features, direction,
        lambda: vgg_content_loss(vgg, net_output, content) if vgg is not None else F.mse_loss(net_output, content), generator,
    )


def boost_contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale each image's distance from its mean grey level by ``factor`` (torchvision's adjust_contrast)."""
    grey = luminance(images).mean(dim=(1, 2, 3), keepdim=True)
    return (grey + factor * (images - grey)).clamp(0, 1)


def synchronize(device: torch.device | str) -> None:
    """Timers must wait for queued GPU work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(net: nn.Module, settings: ClipStylerSettings) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.StepLR]:
    """Adam with the learning rate multiplied by ``lr_gamma`` every ``lr_step`` steps."""
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=settings.lr_gamma)


def train_clipstyler(
    content: torch.Tensor,
    style: StyleEmbedding,
    image_encoder: ImageEncoder,
    settings: ClipStylerSettings | None = None,
    vgg: VGG19Features | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> ClipStylerResult:
    """Fit a fresh StyleNet to one (1, 3, H, W) content image in [0, 1] and one style; time it.

    ``progress(step, total_loss)`` is called after every step.
    """
    settings = settings or ClipStylerSettings()
    if content.dim() != 4 or content.shape[:2] != (1, 3):
        raise ValueError(f"CLIPstyler trains on one image (1, 3, H, W), got shape {tuple(content.shape)}")
    device = content.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        net = StyleNet().to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer, schedule = make_optimizer(net, settings)
    direction = style.direction.to(device)
    history = []
    start = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        content = content.detach().clone()
        with torch.no_grad():
            content_features = image_encoder.encode(content)
        for step in range(settings.iterations):
            total = clipstyler_losses(net(content), content, content_features, direction, image_encoder, settings.weights, vgg, generator)["total"]
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            schedule.step()
            history.append(total.item())
            if progress is not None:
                progress(step + 1, history[-1])
        synchronize(device)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            image = boost_contrast(net(content), settings.contrast)
        synchronize(device)
        inference_seconds = time.perf_counter() - start
    return ClipStylerResult(image=image, train_seconds=train_seconds, inference_seconds=inference_seconds, losses=history)
