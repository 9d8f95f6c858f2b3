"""Image styles through ComfyUI's own CLIP_VISION: the vision tower artists already load for IP-Adapter or Redux.

The core never imports ComfyUI: it reads what a ``comfy.clip_vision.ClipVisionModel`` holds (``model``: a
``CLIPVisionModelProjection``; ``image_size``, ``image_mean``, ``image_std``) and wraps the tower so it looks like
a transformers vision model to the losses (``last_hidden_state`` and ``pooler_output``). The result is an
``ImageEncoder``, so every image path (ImageStyleEncode, the fit's losses, StyleScore) takes it unchanged.

Which embedding is the style, per family, is read from what ComfyUI's model returns, not assumed:
ComfyUI builds the CLIP towers (ViT-L, ViT-H, ViT-bigG) with their ``visual_projection``, so their third output is
the projected pooled image embedding, one vector per image; it builds SigLIP so400m without the attention-pooling
head (ComfyUI loads no ``head.*`` weights), so its third output is the post-layer-norm patch tokens, and the style
is their mean.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import types
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import PackError
from .encoders import ImageEncoder
from .images import square
from .tower_identity import KNOWN_FILES, TowerIdentity, describe_encoder, is_clip_vision

#: (hidden width, layers, input size) of each tower ComfyUI's CLIPVisionLoader detects -> family.
FAMILIES = {
    (1280, 32, 224): "vit-h-14",
    (1664, 48, 224): "vit-bigg-14",
    (1024, 24, 224): "vit-l-14",
    (1024, 24, 336): "vit-l-14-336",
    (1152, 27, 384): "siglip-so400m-384",
    (1152, 27, 512): "siglip-so400m-512",
}
#: Values sampled from each weight tensor for the fingerprint: enough to tell two trainings apart, cheap on a 2.5 GB tower.
FINGERPRINT_SAMPLES = 64


class UnsupportedVisionTowerError(PackError, ValueError):
    """A CLIP_VISION whose model is not a CLIP/SigLIP tower (e.g. DINOv2), or that gives no image embedding."""


@dataclass
class TowerOutput:
    """The two fields of a transformers vision output that the pack reads."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor


class StyleEmbeddingTower(torch.nn.Module):
    """ComfyUI's ``CLIPVisionModelProjection`` answering like a transformers vision model.

    ``pooler_output`` is the style embedding: the projected image embedding where ComfyUI gives one vector
    per image, the mean patch token where it gives tokens (SigLIP without its head).
    """

    def __init__(self, projection_model: torch.nn.Module) -> None:
        super().__init__()
        self.tower = projection_model

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        tokens, _, embeds, _ = self.tower(pixel_values=pixel_values)
        pooled = embeds.mean(dim=1) if embeds.dim() == 3 else embeds
        return TowerOutput(last_hidden_state=tokens, pooler_output=pooled)


@dataclass
class ClipVisionImageEncoder(ImageEncoder):
    """An ``ImageEncoder`` over a ComfyUI CLIP_VISION with ComfyUI's preprocessing, kept differentiable.

    ``comfy.clip_vision.clip_preprocess`` scales the shorter side to the input size (bicubic, antialiased), crops the
    centre, and rounds to 8-bit levels; the rounding here passes gradients straight through, so a fit backpropagates
    into the image while the values stay exactly ComfyUI's (CLIPVisionEncode with crop "center").
    """

    def fit_to_input(self, images: torch.Tensor, size: int) -> torch.Tensor:
        levels = square(images, size) * 255
        return (levels + (levels.round() - levels).detach()) / 255  # ComfyUI's rounding, straight-through

    def encode(self, images: torch.Tensor, size: int = 0) -> torch.Tensor:
        """Unit style embeddings (b, dim), differentiable; fp32 pixels as ComfyUI's ``encode_image`` passes them, so
        its ``manual_cast`` layers compute in fp32 whatever dtype the weights are stored in. The images go to the
        tower, never the tower to the images: ComfyUI's model management decides where a CLIP_VISION lives.
        ComfyUI's towers have fixed position embeddings: ``size`` must be 0 or the tower's own input size."""
        if size and size != self.image_size:
            raise ValueError(
                f"a CLIP_VISION encodes at its own input size ({self.image_size} px), not {size}: set the patch loss's "
                "crop resolution (patch_crop_resolution) to 0"
            )
        device = next(self.model.parameters()).device
        return F.normalize(self.model(pixel_values=self.preprocess(images.to(device))).pooler_output.float(), dim=-1)


def _out_of_place_layer_forward(layer: torch.nn.Module, x: torch.Tensor, mask=None, optimized_attention=None) -> torch.Tensor:
    """ComfyUI's CLIP/SigLIP layer (pre-norm attention, then pre-norm MLP, each added to the residual) without its
    in-place ``x +=``, which overwrites the input its layer norm saved for backward."""
    x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
    return x + layer.mlp(layer.layer_norm2(x))


def differentiable_copy(encoder: ClipVisionImageEncoder) -> ClipVisionImageEncoder:
    """A copy of the encoder whose tower a fit can backpropagate through.

    The weights are copied: ComfyUI loads them as inference tensors, which cannot be saved for backward, and shares
    them with other nodes, whose dtype must not change. Each transformer layer of the copy runs out of place.
    """
    model = copy.deepcopy(encoder.model).requires_grad_(False)
    for layer in model.tower.vision_model.encoder.layers:
        if all(hasattr(layer, name) for name in ("layer_norm1", "self_attn", "layer_norm2", "mlp")):
            layer.forward = types.MethodType(_out_of_place_layer_forward, layer)
    return dataclasses.replace(encoder, model=model)


def _projection_model(clip_vision: object) -> torch.nn.Module:
    model = getattr(clip_vision, "model", None)
    vision = getattr(model, "vision_model", None)
    if vision is None or not hasattr(getattr(vision, "encoder", None), "layers"):
        raise UnsupportedVisionTowerError(
            f"this CLIP_VISION holds a {type(model).__name__}, not a CLIP or SigLIP vision tower (a DINOv2 file?); "
            f"StyleMamba image styles take one of: {', '.join(sorted(KNOWN_FILES.values()))}"
        )
    return model


def family_of(clip_vision: object) -> str:
    """The family of the tower ComfyUI detected, from its width, depth and input size."""
    model = _projection_model(clip_vision)
    hidden = model.vision_model.post_layernorm.weight.shape[0]
    key = (hidden, len(model.vision_model.encoder.layers), int(clip_vision.image_size))
    return FAMILIES.get(key, f"clip-vision-{key[0]}x{key[1]}-{key[2]}px")


def embedding_width(clip_vision: object) -> int:
    """Width of the style embedding: the projection's output where the tower has one, else the hidden width."""
    model = _projection_model(clip_vision)
    projection = model.visual_projection
    return projection.weight.shape[0] if isinstance(projection, torch.nn.Module) else model.vision_model.post_layernorm.weight.shape[0]


def weights_fingerprint(module: torch.nn.Module) -> str:
    """12 hex digits over every weight's name, shape and evenly spaced values (as fp16, so the same file loaded
    in fp16 on a GPU or fp32 on the CPU gives the same fingerprint)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        index = torch.linspace(0, flat.numel() - 1, min(FINGERPRINT_SAMPLES, flat.numel()), device=flat.device).long()
        index.clamp_(max=flat.numel() - 1)  # fp32 rounds the last index past the end for some sizes above 2**24
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(flat[index].to("cpu", torch.float16).numpy().tobytes())
    return digest.hexdigest()[:12]


_IDENTITIES: "weakref.WeakKeyDictionary[object, TowerIdentity]" = weakref.WeakKeyDictionary()


def tower_identity(clip_vision: object) -> TowerIdentity:
    """Family, width and fingerprint of a CLIP_VISION; computed once per loaded model."""
    known = _IDENTITIES.get(clip_vision)
    if known is None:
        known = TowerIdentity(family_of(clip_vision), embedding_width(clip_vision), weights_fingerprint(clip_vision.model))
        _IDENTITIES[clip_vision] = known
    return known


def clip_vision_encoder(clip_vision: object) -> ClipVisionImageEncoder:
    """The image encoder over a CLIP_VISION's own model (no copy): ComfyUI keeps managing its weights."""
    model = _projection_model(clip_vision)
    return ClipVisionImageEncoder(
        name=tower_identity(clip_vision).encoder_id, model=StyleEmbeddingTower(model).eval(),
        image_size=int(clip_vision.image_size), mean=tuple(clip_vision.image_mean), std=tuple(clip_vision.image_std),
    )


def check_same_tower(expected_id: str, clip_vision: object, what: str) -> None:
    """Refuse a CLIP_VISION other than the one ``expected_id`` (a model's or a style's encoder) names."""
    given = tower_identity(clip_vision)
    if given.encoder_id != expected_id:
        raise ValueError(
            f"{what} was made with {describe_encoder(expected_id)} but the one connected is {given.describe()}; "
            "connect the CLIP_VISION it was made with" + (
                " (a SigLIP model takes no CLIP_VISION: disconnect it)" if not is_clip_vision(expected_id) else "")
        )
