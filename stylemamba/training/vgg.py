"""VGG-19 feature extractor for perceptual content losses, loading a user's torchvision state dict.

The layer layout matches torchvision's ``vgg19().features`` (same ``nn.Sequential`` indices),
so ``features.N.weight`` / ``features.N.bias`` of the ImageNet weights load without renaming
and without torchvision. No weights ship with the pack: the user points at the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ...errors import PackError
from ..state_dicts import state_dict_problems

#: Output channels per conv, "M" for 2×2 max pooling: torchvision's configuration "E" (VGG-19).
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_layer_indices() -> dict[str, int]:
    """``conv{block}_{n}`` → index of that conv in ``features`` (conv4_2 → 21, conv5_2 → 30)."""
    names, index, block, number = {}, 0, 1, 1
    for item in VGG19_LAYOUT:
        if item == "M":
            index, block, number = index + 1, block + 1, 1
        else:
            names[f"conv{block}_{number}"] = index
            index, number = index + 2, number + 1  # conv, ReLU
    return names


CONV_LAYERS = conv_layer_indices()


class VGGWeightsError(PackError, ValueError):
    """A VGG weights file that is absent or not torchvision's VGG-19, said in the user's terms."""


class VGG19Features(nn.Module):
    """``forward(images in [0, 1], layers)`` → {name: activation after that conv's ReLU}.

    Normalises with ImageNet statistics itself, and runs only as deep as the deepest layer asked.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, layers: tuple[str, ...] | list[str] = ("conv4_2", "conv5_2")) -> dict[str, torch.Tensor]:
        unknown = [name for name in layers if name not in CONV_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-19 layers {unknown}; choose from {', '.join(CONV_LAYERS)}")
        wanted = {CONV_LAYERS[name] + 1: name for name in layers}  # +1: the ReLU after the conv
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        outputs = {}
        for index, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if index in wanted:
                outputs[wanted[index]] = x
        return outputs


def require_weights_file(path: str | os.PathLike) -> Path:
    """The VGG-19 weights file exists, or an error saying how to make one (the commands check this before any load)."""
    path = Path(path)
    if not path.is_file():
        raise VGGWeightsError(
            f"VGG-19 weights not found: {path}. Save torchvision's ImageNet VGG-19 once, e.g. "
            "torch.save(torchvision.models.vgg19(weights='IMAGENET1K_V1').state_dict(), 'vgg19.pth'), "
            "and pass that file (.pth or .safetensors)"
        )
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file, or a pickled .pth/.pt/.bin read with ``weights_only=True`` (no code runs)."""
    path = require_weights_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and safetensors errors have no common base
        raise VGGWeightsError(f"{path.name} is not a readable state-dict file: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VGGWeightsError(f"{path.name} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_vgg19(path: str | os.PathLike, device: torch.device | str = "cpu") -> VGG19Features:
    """Build the extractor and load ``features.*`` from a torchvision VGG-19 state dict (classifier keys are ignored)."""
    state = read_state_dict(path)
    features = {key: value for key, value in state.items() if key.startswith("features.")}
    model = VGG19Features()
    expected = model.state_dict()
    if not features:
        raise VGGWeightsError(
            f"{Path(path).name} has no 'features.N.weight' keys (found e.g. {sorted(state)[:3]}): "
            "expected a torchvision vgg19 state dict"
        )
    problems = state_dict_problems(expected, features, shown=6)
    if problems:
        raise VGGWeightsError(
            f"{Path(path).name} is not torchvision's VGG-19 layout (vgg19, not vgg16 or vgg19_bn): {problems}"
        )
    model.load_state_dict({k: v.float() for k, v in features.items()})
    return model.to(device).eval().requires_grad_(False)
