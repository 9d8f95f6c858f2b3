"""StyleStudioCrossAdaINDiT: StyleStudio's cross-modal AdaIN, style-based CFG and teacher on Flux.1 with a Redux style model.

Thin adapter: ComfyUI objects in, the pure-torch core in ``stylestudio.dit`` does the work; comfy is not imported.
"""

from typing import Any

import torch
from torch import Tensor

from ..errors import PackError
from ..stylestudio.dit import ReduxStyle
from ..stylestudio.dit_blocks import DIT_PRESETS, flux_blocks, select_dit_blocks
from .stylestudio_base import (StyleStudioNode, check_window, layer_inputs, negative_style_input, patch_dit_blocks, schedule_inputs,
                               strength_input, style_image_input)

REDUX_CLIP_VISION = "sigclip_vision_patch14_384 (SigLIP so400m)"


class StyleModelError(PackError, ValueError):
    """The STYLE_MODEL or CLIP_VISION does not fit the MODEL."""


def redux_tokens(style_model: Any, clip_vision: Any, image: Tensor, context_dim: int) -> Tensor:
    """The Redux tokens ``(1, images * N, context_dim)`` for a batch of images, as core StyleModelApply makes them.

    Checked first, so a wrong file fails here with a message instead of as a shape error mid-sampling.
    """
    encoder = getattr(style_model, "model", None)
    up, down = getattr(encoder, "redux_up", None), getattr(encoder, "redux_down", None)
    if up is None or down is None:
        raise StyleModelError(
            f"style_model is a {type(encoder).__name__}, not a Flux Redux model; StyleStudio Cross-Modal AdaIN (DiT) takes "
            f"flux1-redux-dev.safetensors (Load Style Model). SD1.5 T2I style adapters do not fit Flux."
        )
    if down.out_features != context_dim:
        raise StyleModelError(
            f"style_model makes {down.out_features}-wide tokens but this MODEL reads {context_dim}-wide text tokens: "
            f"the Redux model belongs to another model family; use the Redux model made for this Flux model."
        )
    output = clip_vision.encode_image(image)
    hidden = output["last_hidden_state"]
    if hidden.shape[-1] != up.in_features:
        raise StyleModelError(
            f"clip_vision gives {hidden.shape[-1]}-wide features but the Redux model reads {up.in_features}-wide ones: "
            f"load the CLIP vision model Redux was trained with, {REDUX_CLIP_VISION}."
        )
    return style_model.get_cond(output).float().flatten(0, 1).unsqueeze(0).cpu()


def append_tokens(conditioning: list, tokens: Tensor) -> list:
    """Conditioning with ``tokens`` appended to every entry's text tokens, in the entry's dtype and device."""
    out = []
    for text, options in conditioning:
        if "attention_mask" in options:
            raise StyleModelError("This conditioning carries an attention mask (regional prompting); StyleStudio (DiT) "
                                  "cannot extend it yet: apply StyleStudio before the masking node or without masks.")
        extra = tokens.to(text.device, text.dtype).expand(text.shape[0], -1, -1)
        out.append([torch.cat((text, extra), dim=1), options.copy()])
    return out


class StyleStudioCrossAdaINDiT(StyleStudioNode):
    """StyleStudio on Flux.1 with Redux: cross-modal AdaIN in the chosen blocks, style-based CFG, teacher hand-over."""

    DESCRIPTION = (
        "StyleStudio (arXiv 2412.08503) on a Flux.1 MODEL with a Redux style model. The node appends the style image's "
        "Redux tokens to the positive conditioning (as Apply Style Model does) and patches the chosen double/single blocks: "
        "there the image tokens' attention over the text is re-normalised to the statistics of their attention over the "
        "Redux tokens instead of one shared softmax, so the prompt keeps the layout and the image lends the style. An "
        "optional negative style image goes to the negative conditioning (style-based CFG; it acts only with true CFG, "
        "cfg > 1, since guidance-distilled Flux-dev at cfg 1 runs no negative pass). The teacher runs a text-only pass "
        "early in sampling and lends the styled pass its image-to-image attention maps."
    )
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "positive", "negative")
    OUTPUT_TOOLTIPS = ("The patched model (a clone).", "positive with the style tokens appended",
                       "negative, with the negative style's tokens appended when a negative style image is given")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A Flux.1 model (dev, schnell or a fine-tune)."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt's conditioning, without Redux tokens."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative conditioning (used only when cfg > 1)."}),
                "style_model": ("STYLE_MODEL", {"tooltip": "flux1-redux-dev from Load Style Model."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": f"The CLIP vision model Redux reads: {REDUX_CLIP_VISION}."}),
                "style_image": style_image_input(),
                "strength": strength_input("plain Redux (the model untouched)"),
                **layer_inputs(DIT_PRESETS, "style: the second half of the single blocks (a reasoned choice, not a measured "
                                            "one); double blocks; single blocks; all blocks; or custom.",
                               "38-56", "block indices, double blocks first then single blocks (Flux.1: 0-18 double, "
                                        "19-56 single), e.g. '38-56' or '0, 19-25'"),
                **schedule_inputs(),
            },
            "optional": negative_style_input(" (acts only with cfg > 1)."),
        }

    def patch(self, model: Any, positive: list, negative: list, style_model: Any, clip_vision: Any, style_image: Tensor,
              strength: float, layers: str, custom_layers: str, start_percent: float, end_percent: float, teacher: bool,
              teacher_end_percent: float, negative_style_image: Tensor | None = None) -> tuple[Any, list, list]:
        check_window(start_percent, end_percent)
        diffusion_model = model.get_model_object("diffusion_model")
        blocks = flux_blocks(diffusion_model)
        selected = set(select_dit_blocks(blocks, layers, custom_layers))
        context_dim = diffusion_model.txt_in.in_features
        style = ReduxStyle(redux_tokens(style_model, clip_vision, style_image, context_dim))
        if negative_style_image is not None:
            style.negative = redux_tokens(style_model, clip_vision, negative_style_image, context_dim)
        positive = append_tokens(positive, style.positive)
        negative = append_tokens(negative, style.negative) if style.negative is not None else negative

        if strength == 0.0:
            return (model.clone(), positive, negative)  # plain Redux: the lerp's other end, bit for bit
        patched = patch_dit_blocks(model, blocks, selected, style, strength, (start_percent, end_percent),
                                   teacher_end_percent if teacher else None)
        return (patched, positive, negative)


NODE_CLASS_MAPPINGS = {"StyleStudioCrossAdaINDiT": StyleStudioCrossAdaINDiT}
NODE_DISPLAY_NAME_MAPPINGS = {"StyleStudioCrossAdaINDiT": "StyleStudio Cross-Modal AdaIN (Flux / DiT)"}
