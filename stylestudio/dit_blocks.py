"""Where the style goes on a DiT: Flux's double and single blocks, or SD3's joint blocks, keyed like ComfyUI's "dit" block patches.

A block is ``("double_block", i)`` or ``("single_block", i)``: the key ComfyUI's Flux looks up in
``transformer_options["patches_replace"]["dit"]``. Custom indices count the double blocks first and
then the single blocks (Flux.1: 0-18 double, 19-56 single), the numbering of the Stable Flow
layer analysis (arXiv 2411.14430). ComfyUI's MMDiT (SD3, SD3.5) looks its joint blocks up under the
same ``("double_block", i)`` key: a joint block is a double-stream block (own weights for text and
image, one joint attention), and SD3 has no single-stream blocks (SD3.5 Large: 0-37).

The presets are *not* the result of a measured sweep: a sweep on tiny random models says nothing about
a trained Flux, and no trained Flux is available here. They are block ranges with a stated reason;
``benchmarks/stylestudio_dit.py sweep`` measures them on a real checkpoint where one exists.
"""

from collections.abc import Sequence

from torch import nn

from ..errors import PackError
from .block_indices import parse_block_indices

DiTBlock = tuple[str, int]

DIT_PRESETS = ("style", "double blocks", "single blocks", "all blocks", "custom")


FLUX, MMDIT = "Flux", "SD3/SD3.5 (MM-DiT)"


class UnsupportedDiTError(PackError, ValueError):
    """The MODEL is not a DiT family the node patches."""


def dit_family(diffusion_model: nn.Module) -> str | None:
    """``FLUX`` (double + single stream blocks and ``txt_in``: Flux.1, Chroma), ``MMDIT`` (``joint_blocks``: SD3, SD3.5) or None."""
    if all(hasattr(diffusion_model, name) for name in ("double_blocks", "single_blocks", "txt_in")):
        return FLUX
    return MMDIT if hasattr(diffusion_model, "joint_blocks") else None


def unsupported(diffusion_model: nn.Module, node: str, fits: str, hints: dict[str, str]) -> UnsupportedDiTError:
    """The error for a MODEL ``node`` does not patch: what it patches (``fits``), and a hint per family (``hints``, by family)."""
    family = dit_family(diffusion_model)
    if family in hints:
        described, hint = f"an {family} model" if family == MMDIT else f"a {family} model", hints[family]
    elif hasattr(diffusion_model, "input_blocks"):
        described, hint = "an SD1.5/SDXL UNet", "use the StyleStudio Cross-Modal AdaIN node"
    else:
        described, hint = "of a family StyleStudio does not patch", "see the README's list of supported models"
    return UnsupportedDiTError(f"{node} patches {fits}, but this MODEL is {described} "
                               f"(ComfyUI's {type(diffusion_model).__name__}): {hint}.")


def flux_blocks(diffusion_model: nn.Module) -> list[DiTBlock]:
    """Every double block then every single block of a ComfyUI Flux model, in execution order."""
    if dit_family(diffusion_model) != FLUX:
        raise unsupported(diffusion_model, "StyleStudio Cross-Modal AdaIN (DiT)",
                          "Flux.1 models (dev, schnell, and fine-tunes with Flux's double and single stream blocks)",
                          {MMDIT: "SD3/SD3.5 takes its style from InstantX's SD3.5-Large IP-Adapter (with SigLIP so400m) in the "
                                  "StyleStudio Cross-Modal AdaIN (DiT IP-Adapter) node; Redux and Flux IP-Adapters fit Flux only"})
    doubles, singles = diffusion_model.double_blocks, diffusion_model.single_blocks
    return [("double_block", i) for i in range(len(doubles))] + [("single_block", i) for i in range(len(singles))]


def mmdit_blocks(diffusion_model: nn.Module) -> list[DiTBlock]:
    """Every joint block of a ComfyUI MMDiT (SD3, SD3.5), keyed as its forward looks them up."""
    if dit_family(diffusion_model) != MMDIT:
        raise unsupported(diffusion_model, "StyleStudio with an SD3.5 IP-Adapter", "SD3/SD3.5 (MM-DiT) models",
                          {FLUX: "use a Flux IP-Adapter or Redux with Flux models"})
    return [("double_block", i) for i in range(len(diffusion_model.joint_blocks))]


def select_dit_blocks(blocks: Sequence[DiTBlock], preset: str, custom: str = "") -> list[DiTBlock]:
    """Resolve a preset to blocks.

    "style" is the second half of the single blocks (Flux.1: single 19-37), and on an MM-DiT, which has
    joint blocks only, the second half of those (SD3.5 Large: 19-37). A hypothesis, not a measurement:
    a diffusion transformer settles the composition early, in the double blocks (where image and text
    still have their own weights) and the first single blocks, and refines colour and texture late, the
    part of an image that AdaIN's per-channel statistics describe; InstantStyle found that division on
    SDXL (its style layer is an up block, not the layout-setting down blocks). On SD3 every block is a
    joint block, so depth is the only axis left to divide by.
    """
    singles = [b for b in blocks if b[0] == "single_block"]
    doubles = [b for b in blocks if b[0] == "double_block"]
    if preset == "style":
        late = singles or doubles
        chosen = late[len(late) // 2:]
    elif preset == "double blocks":
        chosen = doubles
    elif preset == "single blocks":
        if not singles:
            raise ValueError("layers='single blocks': this model has joint (double) blocks only (SD3/SD3.5); "
                             "choose style, double blocks, all blocks or custom")
        chosen = singles
    elif preset == "all blocks":
        chosen = list(blocks)
    elif preset == "custom":
        chosen = [blocks[i] for i in parse_block_indices(custom, len(blocks))]
    else:
        raise ValueError(f"Unknown layer preset {preset!r}; choose one of {DIT_PRESETS}")
    return list(chosen)
