"""Where the style goes on a Flux-class DiT: its double and single blocks, keyed like ComfyUI's "dit" block patches.

A block is ``("double_block", i)`` or ``("single_block", i)``: the key ComfyUI's Flux looks up in
``transformer_options["patches_replace"]["dit"]``. Custom indices count the double blocks first and
then the single blocks (Flux.1: 0-18 double, 19-56 single), the numbering of the Stable Flow
layer analysis (arXiv 2411.14430).

The presets are *not* the result of a measured sweep: a sweep on tiny random models says nothing about
a trained Flux, and no trained Flux is available here. They are block ranges with a stated reason;
``benchmarks/stylestudio_dit_sweep.py`` measures them on a real checkpoint where one exists.
"""

from collections.abc import Sequence

from torch import nn

from ..errors import PackError
from .layers import parse_block_indices

DiTBlock = tuple[str, int]

DIT_PRESETS = ("style", "double blocks", "single blocks", "all blocks", "custom")


class UnsupportedDiTError(PackError, ValueError):
    """The MODEL is not a Flux-class DiT (double + single stream blocks)."""


def flux_blocks(diffusion_model: nn.Module) -> list[DiTBlock]:
    """Every double block then every single block of a ComfyUI Flux model, in execution order."""
    doubles, singles = getattr(diffusion_model, "double_blocks", None), getattr(diffusion_model, "single_blocks", None)
    if doubles is None or singles is None or not hasattr(diffusion_model, "txt_in"):
        name = type(diffusion_model).__name__
        if hasattr(diffusion_model, "joint_blocks"):
            hint = "SD3/SD3.5 (MM-DiT) models are not supported yet"
        elif hasattr(diffusion_model, "input_blocks"):
            hint = "for SD1.5/SDXL UNet models use the StyleStudio Cross-Modal AdaIN node"
        else:
            hint = "this model family is not supported"
        raise UnsupportedDiTError(
            f"StyleStudio Cross-Modal AdaIN (DiT) patches Flux.1 models (dev, schnell, and fine-tunes with Flux's double and "
            f"single stream blocks); this model's diffusion model is {name}: {hint}."
        )
    return [("double_block", i) for i in range(len(doubles))] + [("single_block", i) for i in range(len(singles))]


def select_dit_blocks(blocks: Sequence[DiTBlock], preset: str, custom: str = "") -> list[DiTBlock]:
    """Resolve a preset to blocks.

    "style" is the second half of the single blocks (Flux.1: single 19-37). A hypothesis, not a
    measurement: a diffusion transformer settles the composition early, in the double blocks (where
    image and text still have their own weights) and the first single blocks, and refines colour and
    texture late, the part of an image that AdaIN's per-channel statistics describe; InstantStyle
    found that division on SDXL (its style layer is an up block, not the layout-setting down blocks).
    """
    singles = [b for b in blocks if b[0] == "single_block"]
    if preset == "style":
        chosen = singles[len(singles) // 2:]
    elif preset == "double blocks":
        chosen = [b for b in blocks if b[0] == "double_block"]
    elif preset == "single blocks":
        chosen = singles
    elif preset == "all blocks":
        chosen = list(blocks)
    elif preset == "custom":
        chosen = [blocks[i] for i in parse_block_indices(custom, len(blocks))]
    else:
        raise ValueError(f"Unknown layer preset {preset!r}; choose one of {DIT_PRESETS}")
    return list(chosen)
