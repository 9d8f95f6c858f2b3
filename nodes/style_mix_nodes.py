"""ImageStyleEncode and StyleMix: styles from reference pictures, and several styles (by region) in one StyleFuse pass."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..stylemamba.checkpoint import StyleMamba
from ..stylemamba.encoders import load_text_encoder
from ..stylemamba.image_style import encode_reference_style, image_embedding
from ..stylemamba import mixing
from ..stylemamba.style import DEFAULT_SOURCE_TEXT, StyleEmbedding
from ..stylemamba.tower_identity import describe_encoder
from . import comfy_bridge
from .image_sockets import channels_first
from .style_encoders import image_encoder_for
from .widgets import CATEGORY, parse_numbers

#: StyleMix's style slots.
MIX_SLOTS = 4


def _mix_signature() -> inspect.Signature:
    """``mix(self, style_1, weight_1, mask_1=None, style_2=None, weight_2=1.0, mask_2=None, ...)`` for ``MIX_SLOTS`` slots:
    the node's inputs, which ComfyUI passes by name."""
    parameter = lambda name, default=inspect.Parameter.empty: inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
    parameters = [parameter("self"), parameter("style_1"), parameter("weight_1"), parameter("mask_1", None)]
    for slot in range(2, MIX_SLOTS + 1):
        parameters += [parameter(f"style_{slot}", None), parameter(f"weight_{slot}", 1.0), parameter(f"mask_{slot}", None)]
    return inspect.Signature(parameters)


_MIX_SIGNATURE = _mix_signature()


class ImageStyleEncode:
    DESCRIPTION = (
        "Encodes reference image(s) with the model's SigLIP image tower into a STYLE_EMBED, the same kind and space "
        "as Text Style Encode's. A batch of references is one style: their embeddings are averaged with the optional "
        "weights. Any size is resized and an alpha channel is put on white, as SigLIP's own preprocessing does. "
        "For a model made from a CLIP_VISION, connect that CLIP_VISION (and content: such a tower has no text for the "
        "direction's start)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STYLE_EMBED",)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("The references' style as a SigLIP embedding, plus its direction from the content.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "style_mamba": ("STYLE_MAMBA", {"tooltip": "Decides which SigLIP encodes the images (the model's own)."}),
                "images": ("IMAGE", {"tooltip": "The style reference(s); a batch of several is averaged into one style."}),
            },
            "optional": {
                "weights": ("STRING", {
                    "default": "",
                    "tooltip": "One weight per reference image, e.g. '1, 0.5, 0.5' (normalised to sum to 1); empty = equal.",
                }),
                "content": ("IMAGE", {"tooltip": "The content image(s): the style's direction starts from them. "
                                                 "Without it, from the model's source text (e.g. 'a photo')."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "The model's CLIP_VISION, when it was made from one "
                                                "(Load StyleMamba or Train StyleMamba with a CLIP_VISION)."}),
            },
        }

    def encode(
        self, style_mamba: StyleMamba, images: torch.Tensor, weights: str = "", content: torch.Tensor | None = None,
        clip_vision=None,
    ) -> tuple[StyleEmbedding]:
        references = channels_first(images, "ImageStyleEncode: images")
        shares = parse_numbers(weights, "ImageStyleEncode: weights", count=references.shape[0])
        managed = image_encoder_for(style_mamba.text_encoder, clip_vision, "ImageStyleEncode: the StyleMamba model")
        encoder = managed.ready()
        resolved = encoder.name
        if content is not None:
            source = image_embedding(encoder, [channels_first(content, "ImageStyleEncode: content")])
        elif clip_vision is not None:
            raise ValueError(
                "ImageStyleEncode: a CLIP_VISION has no text tower to start the style's direction from 'a photo': "
                "connect the content image(s) to content"
            )
        else:
            text_encoder = load_text_encoder(resolved)
            device = comfy_bridge.load_model(text_encoder, text_encoder.model, "text encoder")
            with torch.no_grad():
                source = text_encoder.encode_style(style_mamba.training.get("source_text") or DEFAULT_SOURCE_TEXT, device).cpu()
        style = encode_reference_style(encoder, [references], source, shares)
        if style.target.shape[-1] != style_mamba.config.style_dim:
            raise ValueError(
                f"ImageStyleEncode: {describe_encoder(resolved)} gives {style.target.shape[-1]}-d image embeddings but this StyleMamba "
                f"model takes {style_mamba.config.style_dim}-d styles; load the model with the SigLIP it was trained with"
            )
        return (style,)


class StyleMixNode:
    """The node ``StyleMix`` (its public id, which saved workflows use); the mix it makes is ``mixing.StyleMix``."""

    DESCRIPTION = (
        f"Mixes up to {MIX_SLOTS} styles (text or image) into one STYLE_EMBED that StyleFuse applies in a single pass. "
        "Weights are normalised to sum to 1 (0 leaves a style out). A MASK gives a style a region: each latent pixel "
        "mixes the styles by weight × mask, soft edges blend, and pixels no mask covers stay unchanged; a style "
        "without a mask covers the whole image. All styles must come from the same StyleMamba model's encoder."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STYLE_EMBED",)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("The mix; connect it to StyleFuse's style (or to another StyleMix for more styles).",)
    FUNCTION = "mix"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        weight = ("FLOAT", {
            "default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05, "tooltip": "Relative weight; all weights are normalised to sum to 1.",
        })
        mask = ("MASK", {"tooltip": "Where this style goes (white) in the content image; resized to the latent."})
        optional = {"mask_1": mask}
        for slot in range(2, MIX_SLOTS + 1):
            optional.update({f"style_{slot}": ("STYLE_EMBED",), f"weight_{slot}": weight, f"mask_{slot}": mask})
        return {"required": {"style_1": ("STYLE_EMBED",), "weight_1": weight}, "optional": optional}

    def mix(self, *values: Any, **inputs: Any) -> tuple[mixing.StyleMix]:
        """``style_i`` / ``weight_i`` / ``mask_i`` of every slot, as ``_mix_signature`` names them (it is ``mix``'s signature)."""
        bound = _MIX_SIGNATURE.bind(self, *values, **inputs)
        bound.apply_defaults()
        given = bound.arguments
        slots = [(given[f"style_{slot}"], given[f"weight_{slot}"], given[f"mask_{slot}"]) for slot in range(1, MIX_SLOTS + 1)]
        for slot, (style, _, mask) in enumerate(slots, start=1):
            if style is None and mask is not None:
                raise ValueError(f"StyleMix: mask_{slot} is connected but style_{slot} is not; connect its style or remove the mask")
        used = [(style, weight, mask) for style, weight, mask in slots if style is not None]
        styles, weights, masks = (list(column) for column in zip(*used))
        return (mixing.mix_styles(styles, weights, masks),)

    mix.__signature__ = _MIX_SIGNATURE


NODE_CLASS_MAPPINGS = {"ImageStyleEncode": ImageStyleEncode, "StyleMix": StyleMixNode}
NODE_DISPLAY_NAME_MAPPINGS = {"ImageStyleEncode": "Image Style Encode (SigLIP)", "StyleMix": "StyleMamba Style Mix (weights, regions)"}
