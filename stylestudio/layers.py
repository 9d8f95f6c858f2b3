"""Where the style goes: the UNet's cross-attention layers, keyed exactly like ComfyUI's attn2 replace patches.

A layer is ``(block_name, block_id, transformer_index)`` with ``block_name`` one of "input",
"middle", "output": the key ComfyUI's ``BasicTransformerBlock`` looks up in
``transformer_options["patches_replace"]["attn2"]``. A *block* is ``(block_name, block_id)``; the
explicit index list counts blocks in UNet order, the same numbering IP-Adapter users know
(16 for SD1.5, each one layer; 11 for SDXL, each holding 2 or 10 transformer layers).
"""

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import PackError
from .block_indices import parse_block_indices

Layer = tuple[str, int, int]
Block = tuple[str, int]

PRESETS = ("style", "all up blocks", "custom")

# Blocks that hold cross-attention, in UNet order, for the two supported families.
SD15_BLOCKS: tuple[Block, ...] = (
    ("input", 1), ("input", 2), ("input", 4), ("input", 5), ("input", 7), ("input", 8),
    ("middle", 0),
    *(("output", i) for i in range(3, 12)),
)
SDXL_BLOCKS: tuple[Block, ...] = (
    ("input", 4), ("input", 5), ("input", 7), ("input", 8),
    ("middle", 0),
    *(("output", i) for i in range(6)),
)
FAMILIES: dict[str, tuple[Block, ...]] = {"SD1.5": SD15_BLOCKS, "SDXL": SDXL_BLOCKS}

# InstantStyle's style layers: SDXL up_blocks.0.attentions.1 (ComfyUI output block 1, all its
# transformer indices); SD1.5 up_blocks.1, the first up block with attention (output 3, 4, 5).
STYLE_BLOCKS: dict[str, tuple[Block, ...]] = {
    "SD1.5": (("output", 3), ("output", 4), ("output", 5)),
    "SDXL": (("output", 1),),
}

_ORDER = {"input": 0, "middle": 1, "output": 2}


class UnsupportedModelError(PackError, ValueError):
    """The MODEL is not a UNet with cross-attention (SD3, Flux and other DiT models)."""


def unet_cross_attention_layers(unet: nn.Module) -> dict[Layer, tuple[int, int]]:
    """Map every attn2 layer of a ComfyUI ``UNetModel`` to ``(inner_dim, context_dim)``.

    Found by walking the module tree rather than trusting a config, so ComfyUI-side model
    variants (SD2, fine-tunes with odd depths, tiny test UNets) report what they really hold.
    """
    if not all(hasattr(unet, name) for name in ("input_blocks", "output_blocks")):
        raise UnsupportedModelError(
            f"StyleStudioCrossAdaIN patches UNet cross-attention (attn2) and supports SD1.5/SD2 and SDXL "
            f"UNet models; this model's diffusion model is {type(unet).__name__} "
            f"(SD3, Flux and other DiT models use joint attention: for Flux.1 use StyleStudio Cross-Modal AdaIN (Flux / DiT), "
            f"the others are not supported yet)."
        )
    groups = (("input", list(unet.input_blocks)),
              ("middle", [unet.middle_block] if getattr(unet, "middle_block", None) is not None else []),
              ("output", list(unet.output_blocks)))
    layers: dict[Layer, tuple[int, int]] = {}
    for name, blocks in groups:
        for block_id, block in enumerate(blocks):
            for module in block.modules():
                for index, transformer in enumerate(getattr(module, "transformer_blocks", ())):
                    attn2 = getattr(transformer, "attn2", None)
                    if attn2 is not None:
                        layers[(name, block_id, index)] = (attn2.to_k.out_features, attn2.to_k.in_features)
    if not layers:
        raise UnsupportedModelError(
            f"{type(unet).__name__} has no cross-attention (attn2) layers; StyleStudioCrossAdaIN supports "
            f"SD1.5/SD2 and SDXL UNet models."
        )
    return layers


def attention_blocks(layers: Sequence[Layer]) -> list[Block]:
    """Blocks holding the given layers, in UNet order (input, middle, output)."""
    return sorted({(name, block_id) for name, block_id, _ in layers}, key=lambda b: (_ORDER[b[0]], b[1]))


def detect_family(layers: Sequence[Layer]) -> str | None:
    """"SD1.5" or "SDXL" when the cross-attention blocks sit where that family has them."""
    blocks = tuple(attention_blocks(layers))
    return next((family for family, known in FAMILIES.items() if known == blocks), None)


def select_layers(layers: Sequence[Layer], preset: str, custom: str = "") -> list[Layer]:
    """Resolve a preset ("style", "all up blocks", "custom" with ``custom`` indices) to layers."""
    blocks = attention_blocks(layers)
    if preset == "style":
        family = detect_family(layers)
        if family is None:
            raise ValueError(
                "The 'style' preset knows the SD1.5 and SDXL UNet layouts only; this model's cross-attention "
                f"blocks are {blocks}. Use 'all up blocks' or 'custom'."
            )
        chosen = set(STYLE_BLOCKS[family])
    elif preset == "all up blocks":
        chosen = {b for b in blocks if b[0] == "output"}
    elif preset == "custom":
        chosen = {blocks[i] for i in parse_block_indices(custom, len(blocks))}
    else:
        raise ValueError(f"Unknown layer preset {preset!r}; choose one of {PRESETS}")
    return [layer for layer in layers if layer[:2] in chosen]


def existing_patch(patches: dict, layer: Layer) -> Any:
    """The replace patch ComfyUI would have used at ``layer`` (exact key first, then the block key)."""
    return patches.get(layer, patches.get(layer[:2]))


def patch_key(patches: dict, layer: Layer, layers_in_block: int) -> Layer | Block:
    """Where our patch for ``layer`` goes: where ComfyUI runs it, and where a collecting pack applied later finds it.

    A block with one transformer layer (every SD1.5 block) is keyed ``(block, id)``, the key IPAdapter_plus uses on
    SD1.5, so its ``add()`` reaches our patch instead of creating a block patch that ComfyUI would never run behind an
    indexed one. An occupied indexed key keeps the indexed key: ComfyUI looks that one up first.
    """
    return layer[:2] if layers_in_block == 1 and layer not in patches else layer
