"""StyleStudioCrossAdaIN: patches a MODEL with StyleStudio's cross-modal AdaIN, style-based CFG and teacher.

Thin adapter: ComfyUI objects in, the pure-torch core in ``stylestudio`` does the work. comfy is imported lazily
and model folders go through ``comfy_bridge``, so this module imports without ComfyUI.
"""

from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..stylestudio.ip_adapter import IPAdapterError, IPAdapterWeights, load_ip_adapter, project_image_features, weights_per_layer
from ..stylestudio.layers import PRESETS, select_layers, unet_cross_attention_layers
from ..stylestudio.layers import existing_patch as _existing_patch, patch_key as _patch_key
from ..stylestudio.patches import CrossAdaINPatch, SigmaWindow, StyleKV, TeacherAttn1Patch, TeacherWrapper
from . import comfy_bridge

IPADAPTER_FOLDER = "ipadapter"


PERCENT = {"min": 0.0, "max": 1.0, "step": 0.01}


def schedule_inputs() -> dict[str, tuple]:
    """The style's and the teacher's windows in the schedule: the same widgets, in the same order, on every StyleStudio node."""
    return {
        "start_percent": ("FLOAT", {"default": 0.0, **PERCENT, "tooltip": "Where in the schedule the style starts."}),
        "end_percent": ("FLOAT", {"default": 1.0, **PERCENT, "tooltip": "Where in the schedule the style ends."}),
        "teacher": ("BOOLEAN", {"default": True, "tooltip": (
            "Keep the prompt's layout with a text-only teacher pass (one extra model pass per step while it is active).")}),
        "teacher_end_percent": ("FLOAT", {"default": 0.4, **PERCENT, "tooltip": (
            "The teacher is active from the start to here (StyleStudio: 20 of 50 steps = 0.4).")}),
    }


def style_tokens(weights: IPAdapterWeights, features: Tensor) -> Tensor:
    """Project a batch of reference images and join their tokens: several images style together."""
    return project_image_features(weights, features).flatten(0, 1).unsqueeze(0)


def style_kv(layer_weights: tuple[Tensor, Tensor], positive: Tensor, negative: Tensor) -> StyleKV:
    """Project both token sets once with the layer's to_k_ip / to_v_ip, so sampling steps only attend."""
    k, v = (w.float() for w in layer_weights)
    return StyleKV(F.linear(positive, k), F.linear(positive, v), F.linear(negative, k), F.linear(negative, v))


class StyleStudioCrossAdaIN:
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
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The patched model (a clone; the input model is unchanged).",)
    FUNCTION = "patch"
    CATEGORY = "style_transfer/StyleStudio"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5/SD2 or SDXL UNet model (e.g. from Load Checkpoint)."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "The CLIP vision model the IP-Adapter was trained with."}),
                "style_image": ("IMAGE", {"tooltip": "Style reference; several images in a batch are used together."}),
                "ipadapter_file": (comfy_bridge.list_model_files(IPADAPTER_FOLDER), {
                    "tooltip": "IP-Adapter from models/ipadapter: standard, Plus, or CSGO (.safetensors or .bin)."}),
                "strength": ("FLOAT", {"default": 1.0, **PERCENT,
                                       "tooltip": "0 leaves the model untouched, 1 is pure cross-modal AdaIN."}),
                "layers": (list(PRESETS), {"default": "style", "tooltip": (
                    "style: InstantStyle's style layers (SDXL output block 1, SD1.5 output blocks 3-5); "
                    "all up blocks; or custom.")}),
                "custom_layers": ("STRING", {"default": "6", "tooltip": (
                    "For layers=custom: cross-attention block indices in UNet order, e.g. '6' or '0-3, 6' "
                    "(SD1.5 0-15, SDXL 0-10).")}),
                **schedule_inputs(),
            },
            "optional": {
                "negative_style_image": ("IMAGE", {"tooltip": (
                    "Style-based CFG: the style to steer away from, e.g. the style image's layout "
                    "re-drawn plainly with a Canny ControlNet.")}),
            },
        }

    def patch(self, model: Any, clip_vision: Any, style_image: Tensor, ipadapter_file: str, strength: float, layers: str,
              custom_layers: str, start_percent: float, end_percent: float, teacher: bool, teacher_end_percent: float,
              negative_style_image: Tensor | None = None) -> tuple[Any]:
        from comfy.ldm.modules.attention import optimized_attention

        if start_percent > end_percent:
            raise ValueError(f"start_percent ({start_percent}) must not be after end_percent ({end_percent})")
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
        window = SigmaWindow(high=sampling.percent_to_sigma(start_percent), low=sampling.percent_to_sigma(end_percent))
        replaced = patched.model_options["transformer_options"].get("patches_replace", {})
        attn1, attn2 = replaced.get("attn1", {}), replaced.get("attn2", {})
        per_block = Counter(layer[:2] for layer in model_layers)
        for layer in selected:
            patch = CrossAdaINPatch(style_kv(per_layer[layer], positive, negative), strength, window,
                                    _existing_patch(attn2, layer), optimized_attention)
            patched.set_model_attn2_replace(patch, *_patch_key(attn2, layer, per_block[layer[:2]]))
        if teacher and strength > 0:  # at strength 0 the styled pass is the text-only pass: nothing to hand over
            for layer in model_layers:
                patch = TeacherAttn1Patch(_existing_patch(attn1, layer), optimized_attention)
                patched.set_model_attn1_replace(patch, *_patch_key(attn1, layer, per_block[layer[:2]]))
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
