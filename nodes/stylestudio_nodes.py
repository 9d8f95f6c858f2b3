"""StyleStudioCrossAdaIN: patches a MODEL with StyleStudio's cross-modal AdaIN, style-based CFG and teacher.

Thin adapter: ComfyUI objects in, the pure-torch core in ``stylestudio`` does the work. ComfyUI's attention and
model folders come through ``comfy_bridge``, the widgets and the window from ``stylestudio_base``, so this module
imports without ComfyUI.
"""

from collections import Counter
from typing import Any

import torch
from torch import Tensor

from ..stylestudio.adapter_files import IPAdapterError
from ..stylestudio.ip_adapter import IPAdapterWeights, load_ip_adapter, style_tokens, weights_per_layer
from ..stylestudio.layers import PRESETS, select_layers, unet_cross_attention_layers
from ..stylestudio.layers import existing_patch, patch_key
from ..stylestudio.patches import CrossAdaINPatch, TeacherAttn1Patch, TeacherWrapper, style_kv
from . import comfy_bridge
from .stylestudio_base import (IPADAPTER_FOLDER, StyleStudioNode, check_window, layer_inputs, negative_style_input,
                               replace_patches, schedule_inputs, sigma_window, strength_input, style_image_input)


class StyleStudioCrossAdaIN(StyleStudioNode):
    """Training-free StyleStudio (cross-modal AdaIN + style-based CFG + teacher) as native MODEL patches."""

    DESCRIPTION = (
        "StyleStudio (arXiv 2412.08503) on an SD1.5/SDXL MODEL: in the chosen cross-attention layers the text "
        "attention output T is re-normalised to the statistics of the style-image attention output I "
        "(cross-modal AdaIN) instead of adding I. The negative CFG half gets the same treatment with the "
        "adapter's empty-image tokens, or with an optional negative style image (style-based CFG). The teacher "
        "runs a text-only pass beside the styled one early in sampling and lends it its self-attention maps to "
        "keep the prompt's layout. Stacks with LoRAs, ControlNets, IPAdapter_plus (before or after this node) and "
        "other attention patches."
    )
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5/SD2 or SDXL UNet model (e.g. from Load Checkpoint)."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "The CLIP vision model the IP-Adapter was trained with."}),
                "style_image": style_image_input(),
                "ipadapter_file": (comfy_bridge.list_model_files(IPADAPTER_FOLDER), {
                    "tooltip": "IP-Adapter from models/ipadapter: standard, Plus, or CSGO (.safetensors or .bin)."}),
                "strength": strength_input("the model untouched"),
                **layer_inputs(PRESETS, "style: InstantStyle's style layers (SDXL output block 1, SD1.5 output blocks 3-5); "
                                        "all up blocks; or custom.",
                               "6", "cross-attention block indices in UNet order, e.g. '6' or '0-3, 6' (SD1.5 0-15, SDXL 0-10)"),
                **schedule_inputs(),
            },
            "optional": negative_style_input(
                ", e.g. the style image's layout re-drawn plainly with a Canny ControlNet."),
        }

    def patch(self, model: Any, clip_vision: Any, style_image: Tensor, ipadapter_file: str, strength: float, layers: str,
              custom_layers: str, start_percent: float, end_percent: float, teacher: bool, teacher_end_percent: float,
              negative_style_image: Tensor | None = None) -> tuple[Any]:
        check_window(start_percent, end_percent)
        optimized_attention = comfy_bridge.optimized_attention()
        model_layers = unet_cross_attention_layers(model.get_model_object("diffusion_model"))
        weights = load_ip_adapter(comfy_bridge.model_file_path(IPADAPTER_FOLDER, ipadapter_file))
        per_layer = weights_per_layer(weights, model_layers)
        selected = select_layers(list(model_layers), layers, custom_layers)
        missing = [layer for layer in selected if layer not in per_layer]
        if missing:
            raise IPAdapterError(
                f"IP-Adapter {ipadapter_file!r} ({weights.kind}) has no style weights for layers {missing}; choose up-block layers"
            )

        positive_features = self._features(clip_vision, style_image, weights)
        negative_features = (self._features(clip_vision, negative_style_image, weights) if negative_style_image is not None
                             else self._empty_image_features(clip_vision, weights, positive_features))
        positive, negative = style_tokens(weights, positive_features), style_tokens(weights, negative_features)

        patched = model.clone()
        sampling = patched.get_model_object("model_sampling")
        window = sigma_window(patched, start_percent, end_percent)
        attn1, attn2 = replace_patches(patched, "attn1"), replace_patches(patched, "attn2")
        per_block = Counter(layer[:2] for layer in model_layers)
        for layer in selected:
            patch = CrossAdaINPatch(style_kv(per_layer[layer], positive, negative), strength, window,
                                    existing_patch(attn2, layer), optimized_attention)
            patched.set_model_attn2_replace(patch, *patch_key(attn2, layer, per_block[layer[:2]]))
        if teacher and strength > 0:  # at strength 0 the styled pass is the text-only pass: nothing to hand over
            for layer in model_layers:
                patch = TeacherAttn1Patch(existing_patch(attn1, layer), optimized_attention)
                patched.set_model_attn1_replace(patch, *patch_key(attn1, layer, per_block[layer[:2]]))
            wrapper = TeacherWrapper(sampling.percent_to_sigma(teacher_end_percent), patched.model_options.get("model_function_wrapper"))
            patched.set_model_unet_function_wrapper(wrapper)
        return (patched,)

    @staticmethod
    def _features(clip_vision: Any, image: Tensor, weights: IPAdapterWeights) -> Tensor:
        output = clip_vision.encode_image(image)
        return (output["penultimate_hidden_states"] if weights.uses_hidden_states else output["image_embeds"]).float().cpu()

    @classmethod
    def _empty_image_features(cls, clip_vision: Any, weights: IPAdapterWeights, positive: Tensor) -> Tensor:
        """What the adapter was trained to see without an image: IP-Adapter's reference code encodes a black image for
        Plus (Resampler) adapters, which read hidden states, and zeroes the image embedding for the others."""
        if not weights.uses_hidden_states:
            return torch.zeros_like(positive)
        size = getattr(clip_vision, "image_size", 224)
        return cls._features(clip_vision, torch.zeros(1, size, size, 3), weights)


NODE_CLASS_MAPPINGS = {"StyleStudioCrossAdaIN": StyleStudioCrossAdaIN}
NODE_DISPLAY_NAME_MAPPINGS = {"StyleStudioCrossAdaIN": "StyleStudio Cross-Modal AdaIN"}
