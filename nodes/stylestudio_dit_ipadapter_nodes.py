"""StyleStudioCrossAdaINDiTIPAdapter: StyleStudio's cross-modal AdaIN, style-based CFG and teacher on a DiT with an IP-Adapter.

Thin adapter: the file comes from ``models/ipadapter`` through ``comfy_bridge``, the adapter's layout from
``stylestudio.dit_adapters.load_dit_adapter`` (XLabs and InstantX Flux, InstantX SD3.5), and the block patches are the
Redux node's (``stylestudio_base.patch_dit_blocks``), each given the adapter's branch for its block. What the branches read every step
(SD3.5's weights, the Flux adapters' keys/values of the style images) goes to ComfyUI's model management with the patched
MODEL (``comfy_bridge.attach_model``). comfy is not imported.
"""

from typing import Any

from torch import Tensor

from ..stylestudio.adapter_files import IPAdapterError
from ..stylestudio.dit import ImageStyle
from ..stylestudio.dit_adapters import load_dit_adapter
from ..stylestudio.dit_blocks import DIT_PRESETS, select_dit_blocks
from . import comfy_bridge
from .stylestudio_base import (IPADAPTER_FOLDER, StyleStudioNode, check_window, layer_inputs, negative_style_input,
                               patch_dit_blocks, schedule_inputs, strength_input, style_image_input)

#: The key of the adapter's weights among the patched MODEL's additional models (ComfyUI loads them with it).
ADAPTER_WEIGHTS_KEY = "stylestudio_dit_ipadapter"


class StyleStudioCrossAdaINDiTIPAdapter(StyleStudioNode):
    """StyleStudio on Flux.1 or SD3.5 with an IP-Adapter: cross-modal AdaIN on the adapter's branch, style-based CFG, teacher."""

    DESCRIPTION = (
        "StyleStudio (arXiv 2412.08503) on a Flux.1 MODEL with a Flux IP-Adapter from models/ipadapter (XLabs "
        "flux-ip-adapter with CLIP ViT-L, or InstantX FLUX.1-dev-IP-Adapter with SigLIP so400m), or on SD3.5 Large with "
        "InstantX's SD3.5-Large IP-Adapter (SigLIP so400m). In the chosen blocks "
        "the adapter's image branch no longer adds to the image tokens: their attention over the text is re-normalised "
        "to the statistics of the branch (cross-modal AdaIN), so the prompt keeps the layout and the image lends the "
        "style; strength 0 is the plain IP-Adapter on those blocks. An optional negative style image feeds the "
        "unconditional half (style-based CFG; it acts only with true CFG, cfg > 1). The teacher runs a pass without the "
        "adapter early in sampling and lends the styled pass its image-to-image attention maps."
    )
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A Flux.1 model (dev, schnell or a fine-tune) or SD3.5 Large."}),
                "ipadapter_file": (comfy_bridge.list_model_files(IPADAPTER_FOLDER), {"tooltip": (
                    "A Flux IP-Adapter from models/ipadapter (.safetensors or .bin): XLabs flux-ip-adapter (double "
                    "blocks only) or InstantX FLUX.1-dev-IP-Adapter (double and single blocks); for SD3.5 Large, InstantX's "
                    "SD3.5-Large-IP-Adapter (ip-adapter.bin, every joint block).")}),
                "clip_vision": ("CLIP_VISION", {"tooltip": (
                    "The CLIP vision model the adapter reads: CLIP ViT-L/14 for XLabs, SigLIP so400m for InstantX (Flux and SD3.5).")}),
                "style_image": style_image_input(),
                "strength": strength_input("the plain IP-Adapter on the chosen blocks"),
                **layer_inputs(DIT_PRESETS, "Where the adapter acts (blocks without adapter weights are skipped): style: the "
                                            "second half of the single blocks, or of the double blocks for XLabs, which has no "
                                            "single-block weights (a reasoned choice, not a measured one), on SD3.5 the second "
                                            "half of its joint blocks; double blocks (SD3.5: every joint block); single blocks "
                                            "(Flux only); all blocks; or custom.",
                               "38-56", "block indices, double blocks first then single blocks (Flux.1: 0-18 double, "
                                        "19-56 single; SD3.5 Large: joint blocks 0-37), e.g. '38-56' or '0-18'"),
                **schedule_inputs(),
            },
            "optional": negative_style_input(", on the unconditional half (acts only with cfg > 1). Without it both halves "
                                             "see the style image, as with the plain adapter in ComfyUI."),
        }

    def patch(self, model: Any, ipadapter_file: str, clip_vision: Any, style_image: Tensor, strength: float, layers: str,
              custom_layers: str, start_percent: float, end_percent: float, teacher: bool, teacher_end_percent: float,
              negative_style_image: Tensor | None = None) -> tuple[Any]:
        check_window(start_percent, end_percent)
        diffusion_model = model.get_model_object("diffusion_model")
        adapter = load_dit_adapter(comfy_bridge.model_file_path(IPADAPTER_FOLDER, ipadapter_file))
        adapter.check_model(diffusion_model)
        blocks = adapter.model_blocks(diffusion_model)
        positive = adapter.tokens(clip_vision.encode_image(style_image))
        negative = adapter.tokens(clip_vision.encode_image(negative_style_image)) if negative_style_image is not None else positive
        branches = adapter.branches(positive, negative, diffusion_model)
        # "style" is the late half of the blocks the adapter reaches (XLabs: double blocks only); other presets and
        # custom indices keep the model's numbering
        presets_over = [b for b in blocks if b in branches] if layers == "style" else blocks
        selected = set(select_dit_blocks(presets_over, layers, custom_layers)) & set(branches)
        if not selected:
            with_weights = [i for i, block in enumerate(blocks) if block in branches]
            raise IPAdapterError(
                f"layers={layers!r} chose no block that IP-Adapter {ipadapter_file!r} ({adapter.layout}) has weights for; "
                f"it has them for blocks {with_weights[0]}-{with_weights[-1]}: choose those (e.g. custom "
                f"'{with_weights[0]}-{with_weights[-1]}') or 'all blocks'")
        teacher_end = teacher_end_percent if teacher and strength > 0 else None  # strength 0 is the plain adapter
        patched = patch_dit_blocks(model, blocks, selected, ImageStyle(), strength, (start_percent, end_percent), teacher_end, branches)
        if adapter.sampling_weights is not None:
            comfy_bridge.attach_model(patched, adapter.sampling_weights, ADAPTER_WEIGHTS_KEY)
        return (patched,)


NODE_CLASS_MAPPINGS = {"StyleStudioCrossAdaINDiTIPAdapter": StyleStudioCrossAdaINDiTIPAdapter}
NODE_DISPLAY_NAME_MAPPINGS = {"StyleStudioCrossAdaINDiTIPAdapter": "StyleStudio Cross-Modal AdaIN (DiT IP-Adapter)"}
