"""TrainStyleMamba and SaveStyleMamba: fit a style inside the graph and keep it as a checkpoint.

ComfyUI runs every node under ``torch.inference_mode()``, and tensors made there (node inputs,
weights of models loaded by other nodes) cannot take part in backward. The fit therefore runs
under ``inference_mode(False)`` + ``enable_grad()`` on clones of its inputs, and decodes through a
copy of the VAE's model only when that model's weights are inference tensors.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import torch
from tqdm import tqdm

from ..stylemamba.checkpoint import StyleMamba, new_style_mamba, save_checkpoint
from ..stylemamba.config import DEFAULT_TEXT_ENCODER, StyleMambaConfig
from ..stylemamba.encoders import ImageEncoder, load_image_encoder
from ..stylemamba.images import fit_resolution, to_pil
from ..stylemamba.training.fit import DEFAULT_FIT_RESOLUTION, FitResult, FitSettings, fit_model, fit_weights
from ..stylemamba.style import DEFAULT_SOURCE_TEXT, StyleEmbedding, encode_text_style
from ..stylemamba.text_vision_pairs import ClipPairError, pairs_table
from ..stylemamba.training.reference_styles import fit_target_style
from ..stylemamba.training.taesd import load_tiny_decoder
from ..stylemamba.training.vgg import load_vgg19
from ..stylemamba.vision_towers import check_same_tower, tower_identity
from . import comfy_bridge
from .image_sockets import channels_first, rgb_batch
from .style_encoders import differentiable, image_encoder_for, text_encoder_for
from .widgets import CATEGORY

FULL_VAE = "full VAE"
FROM_MODEL = "from style_mamba (or default)"
PREVIEW_SIZE = 512
#: Where TrainStyleMamba writes its best model when the user presses Cancel (models/stylemamba/<prefix>_00001…).
CANCELLED_PREFIX = "TrainStyleMamba_cancelled"
NO_VGG = "none"
#: keep_weights choices, as FitSettings.keep values.
KEEP_WEIGHTS = {"best on a fixed evaluation": "best", "last update": "last"}


def tiny_decoder_files() -> list[str]:
    """Files in models/vae_approx that can decode: ``*_decoder.*`` or a one-file TAE such as taef2.safetensors."""
    return [
        name for name in comfy_bridge.list_model_files("vae_approx")
        if "decoder" in name or (name.endswith(".safetensors") and "encoder" not in name)
    ]


def trainable(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself, or a copy with ordinary tensors when it was built under inference mode."""
    if any(t.is_inference() for t in [*module.parameters(), *module.buffers()]):
        return copy.deepcopy(module)  # deepcopy clones; outside inference mode the clones are normal tensors
    return module


class ComfyVAECodec:
    """ComfyUI VAE as the fit's encoder/decoder; decoding calls the wrapped model directly so it is differentiable."""

    def __init__(self, vae: object, device: torch.device):
        comfy_bridge.load_patcher(getattr(vae, "patcher", None))
        self.vae, self.device = vae, device
        self.model = trainable(vae.first_stage_model).requires_grad_(False)
        self.dtype = getattr(vae, "vae_dtype", torch.float32)
        self.model_device = getattr(vae, "device", device)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The same latents VAEEncode gives (ComfyUI crops to its downscale multiple)."""
        return self.vae.encode(images.movedim(1, -1)).to(self.device).float().clone()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        decoded = self.model.decode(latents.to(self.model_device, self.dtype))
        return self.vae.process_output(decoded.float()).to(self.device)


def preview_image(images: torch.Tensor, step: int, total: int, loss: float) -> tuple:
    """ComfyUI's preview tuple: the first image, with the step and loss written on it."""
    from PIL import ImageDraw

    picture = to_pil(fit_resolution(images[:1], PREVIEW_SIZE, multiple=1))
    ImageDraw.Draw(picture).text((4, 4), f"step {step}/{total}  loss {loss:.4g}", fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return ("JPEG", picture, PREVIEW_SIZE)


class TrainStyleMamba:
    DESCRIPTION = (
        "Fits a StyleMamba model to a style text on your content images with the paper's losses in SigLIP space (global, "
        "masked and second-order directional, content, smoothness); CLIPstyler's patch-wise loss is an option. "
        "Decodes through the full VAE, or a tiny autoencoder from models/vae_approx as a much faster proxy. "
        "Style images (optional) replace the text, or join it: the losses then aim along the content→style image "
        "direction in SigLIP space (with text too, at the equal-weight mix of both), and a VGG-19 style-statistics "
        "loss on them can be switched on with a VGG file from models/vgg. "
        "With a CLIP_VISION connected the losses work in its space instead of SigLIP's: from style images, or from the "
        "style text when the CLIP text encoder of the same CLIP model is connected as clip. "
        f"Cancel stops the fit and saves the model so far (the weights keep_weights names) as models/stylemamba/{CANCELLED_PREFIX}_00001.safetensors "
        "(the next free number; the node's text and the log name the file), then the prompt ends as cancelled: "
        "load that file with LoadStyleMamba, or queue the prompt again to run the rest of the graph with it."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STYLE_MAMBA",)
    RETURN_NAMES = ("style_mamba",)
    OUTPUT_TOOLTIPS = ("The fitted model (the weights keep_weights names; the node's text says which update and why); apply it with StyleFuse, keep it with SaveStyleMamba.",)
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "The VAE whose latents the model will restyle (use the same one for VAEEncode/VAEDecode)."}),
                "images": ("IMAGE", {"tooltip": "Content image(s) to fit on; one or a few are enough."}),
                "style_text": ("STRING", {"multiline": True, "default": "an oil painting by Van Gogh", "tooltip": "The style to learn."}),
                "source_text": ("STRING", {"default": DEFAULT_SOURCE_TEXT, "tooltip": "What the content images are; the style direction starts here."}),
                "iterations": ("INT", {"default": FitSettings.iterations, "min": 1, "max": 10000, "tooltip": "Optimiser steps: 40 follows StyleMamba's 5x fewer than CLIPstyler's 200; raise it for a stronger style."}),
                "learning_rate": ("FLOAT", {"default": 5e-4, "min": 1e-6, "max": 1e-1, "step": 1e-5, "round": 1e-6, "tooltip": "Adam learning rate, halved every 100 steps."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Random crops and masks; same seed, same model."}),
                "training_decoder": ([FULL_VAE, *tiny_decoder_files()], {"tooltip": "Decoder used while fitting: the full VAE, or a tiny autoencoder of the same latent family (taesd/taesdxl for SD1.5/SDXL, taesd3, taef1, taef2) as a fast proxy."}),
                "max_resolution": ("INT", {"default": DEFAULT_FIT_RESOLUTION, "min": 64, "max": 4096, "step": 8, "tooltip": "Content images are downscaled so their longer side is at most this while fitting; 512 (CLIPstyler's) costs about 4x the time per step of 256 (the decode grows with the pixel count)."}),
            },
            "optional": {
                "style_mamba": ("STYLE_MAMBA", {"tooltip": "Start from this model (e.g. a multi-style checkpoint) instead of a new one."}),
                "text_encoder": ([FROM_MODEL, DEFAULT_TEXT_ENCODER, *comfy_bridge.list_local_encoders()], {"tooltip": "SigLIP in models/siglip or a hub id."}),
                "style_images": ("IMAGE", {"tooltip": "Style reference image(s), any size (transparency counts as white). With them style_text may be empty; with both, the model learns their equal-weight mix."}),
                "style_statistics_weight": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1e7, "step": 100.0, "tooltip": "Weight of the VGG-19 mean/std (AdaIN) statistics loss on relu1_1..relu4_1 of the style images; 0 = off. Needs style_images and vgg_weights."}),
                "vgg_weights": ([NO_VGG, *comfy_bridge.list_model_files("vgg")], {"tooltip": "torchvision VGG-19 state dict in models/vgg, for the style-statistics loss."}),
                "video": ("BOOLEAN", {"default": False, "tooltip": "Treat the images as the frames of one clip (at least 3, in order): the temporal layers train and the temporal masked, second-order and consistency losses keep the style steady across frames. Each step decodes 4 latent frames."}),
                "patch_loss": ("BOOLEAN", {"default": False, "tooltip": "Add CLIPstyler's patch-wise directional loss (weight 9000) to the paper's losses. Its crops go through the image encoder every step: with a base-sized SigLIP most of a step's time."}),
                "patch_crops": ("INT", {"default": 64, "min": 1, "max": 512, "tooltip": "With patch_loss: random crops per image and step (64 is CLIPstyler's)."}),
                "patch_crop_resolution": ("INT", {"default": 0, "min": 0, "max": 1024, "step": 16, "tooltip": "With patch_loss: the size crops are encoded at; 0 = the encoder's input size (224 for SigLIP-base, as CLIPstyler's CLIP). Smaller is cheaper."}),
                "keep_weights": (list(KEEP_WEIGHTS), {"default": "best on a fixed evaluation", "tooltip": "Which weights to return: the lowest loss on one fixed draw of masks, crops and frame window, evaluated after every update; or the last update's (skips that evaluation)."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "Fit through this vision tower (the IP-Adapter's "
                                "or Redux's CLIP_VISION) instead of SigLIP: needs style_images and an empty style_text, "
                                "unless clip is connected too."}),
                "clip": ("CLIP", {"tooltip": "With clip_vision: the CLIP text encoder of the same CLIP model (clip_l.safetensors "
                         "for ViT-L/14, an SD2.x checkpoint's for ViT-H, an SDXL checkpoint's or clip_g.safetensors for "
                         "ViT-bigG), so style_text is encoded into the CLIP_VISION's space."}),
            },
        }

    def train(
        self, vae, images: torch.Tensor, style_text: str, source_text: str, iterations: int, learning_rate: float,
        seed: int, training_decoder: str, max_resolution: int, style_mamba: StyleMamba | None = None,
        text_encoder: str = FROM_MODEL, style_images: torch.Tensor | None = None, style_statistics_weight: float = 0.0,
        vgg_weights: str = NO_VGG, video: bool = False, patch_loss: bool = False, patch_crops: int = 64,
        patch_crop_resolution: int = 0, keep_weights: str = "best on a fixed evaluation", clip_vision=None, clip=None,
    ) -> dict:
        if clip is not None and clip_vision is None:
            raise ClipPairError(
                "TrainStyleMamba: clip is the text half of a CLIP + CLIP_VISION pair: connect the CLIP_VISION of the same "
                f"CLIP model to clip_vision, or disconnect clip (pairs that work: {pairs_table()})"
            )
        if clip_vision is not None:
            style_mamba = clip_vision_start(
                clip_vision, style_mamba, style_text, style_images, text_encoder, vae.latent_channels, seed, clip is not None)
        if not style_text.strip() and style_images is None:
            raise ValueError(
                "TrainStyleMamba: the style text is empty and no style_images are connected; describe a style such as "
                "'a watercolor painting', or connect style reference images"
            )
        if style_statistics_weight > 0 and (style_images is None or vgg_weights == NO_VGG):
            raise ValueError(
                "TrainStyleMamba: style_statistics_weight > 0 matches VGG-19 statistics of the style images: connect "
                "style_images and choose vgg_weights (a torchvision VGG-19 state dict in models/vgg), or set the weight to 0"
            )
        encoder_name = text_encoder if text_encoder != FROM_MODEL else (style_mamba.text_encoder if style_mamba else DEFAULT_TEXT_ENCODER)
        device = comfy_bridge.compute_device()
        settings = FitSettings(
            iterations=iterations, lr=learning_rate, seed=seed,
            train_decoder="vae" if training_decoder == FULL_VAE else training_decoder,
            weights=fit_weights(patch_loss, patch_crops, patch_crop_resolution, style_statistics_weight, video), video=video,
            keep=KEEP_WEIGHTS[keep_weights],
        )
        references = [] if style_images is None else [channels_first(style_images, "TrainStyleMamba: style_images")]
        with torch.inference_mode(False), torch.enable_grad():
            try:
                references = [batch.clone() for batch in references]  # normal tensors, outside inference mode
                vgg = load_vgg19(comfy_bridge.model_file_path("vgg", vgg_weights), device) if style_statistics_weight > 0 else None
                result = self._fit(
                    vae, images, style_text, source_text, settings, max_resolution, style_mamba, encoder_name, device, references, vgg,
                    clip_vision, clip,
                )
            finally:
                comfy_bridge.free_memory()
        return {"ui": {"text": [self._outcome(result, settings.iterations)]}, "result": (result.style_mamba,)}

    @staticmethod
    def _outcome(result: FitResult, total: int) -> str:
        """What the node's text and the log say; after Cancel, the best model is written first.

        The node returns normally even after Cancel: only a returned node shows its text, and its
        output stays cached, so queueing the prompt again goes on with this fit. The Cancel is still
        pending, so ComfyUI ends the prompt as cancelled before the next node runs; that is also why
        a Cancel pressed after the last step saves the model too.
        """
        if not (result.stopped_early or comfy_bridge.interrupt_requested()):
            message = f"TrainStyleMamba: fitted {result.summary()}"
        else:
            path = save_new_checkpoint(result.style_mamba, CANCELLED_PREFIX)
            message = (
                f"TrainStyleMamba: cancelled after step {len(result.history)} of {total}; the model so far (the weights after "
                f"update {result.kept_step}: {result.kept_reason}) is saved as {path}: load {path.name} with LoadStyleMamba"
            )
        logging.info(message)
        return message

    def _fit(
        self, vae, images, style_text, source_text, settings, max_resolution, style_mamba, encoder_name, device, references, vgg,
        clip_vision=None, clip=None,
    ) -> FitResult:
        text_style = None
        if style_text.strip():  # with a CLIP_VISION only when clip is its pair: clip_vision_start checked that
            text_encoder = text_encoder_for(encoder_name, clip_vision, clip, "TrainStyleMamba: style_mamba").ready()
            text_style = encode_text_style(text_encoder, style_text, source_text)  # constants: no gradient through text
            text_style = StyleEmbedding(text_style.target.clone(), text_style.source.clone(), text_style.description, text_style.encoder)
        image_encoder = self._image_encoder(encoder_name, clip_vision)
        content = rgb_batch(images, "TrainStyleMamba: images")
        style = fit_target_style(text_style, image_encoder, references, content)
        ratio = getattr(vae, "downscale_ratio", 8)
        codec = ComfyVAECodec(vae, device)
        decode = codec.decode
        if settings.train_decoder != "vae":
            tiny_path = comfy_bridge.model_file_path("vae_approx", settings.train_decoder)
            decode = load_tiny_decoder(tiny_path, vae.latent_channels, device).decode

        total = settings.iterations
        progress = comfy_bridge.Progress(total)
        bar = tqdm(total=total, desc="TrainStyleMamba", unit="step")

        def report(step: int, loss: float, preview: torch.Tensor | None) -> bool:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
            return progress.update_unless_cancelled(step, total, preview_image(preview, step, total, loss) if preview is not None else None)

        try:
            result = fit_model(
                style, content, codec.encode, decode, image_encoder, settings, encoder_name,
                vae.latent_channels, max_resolution, ratio if isinstance(ratio, int) else 8, style_mamba, report,
                vgg, device, dict(source_text=source_text), references,
            )
        finally:
            bar.close()
        result.style_mamba.model.to(comfy_bridge.offload_device())
        result.style_mamba.source = f"TrainStyleMamba: {style.description}"
        return result

    @staticmethod
    def _image_encoder(encoder_name: str, clip_vision) -> ImageEncoder:
        """The encoder the fit backpropagates through: a copy of the CLIP_VISION's tower, or the SigLIP image tower."""
        if clip_vision is not None:
            return differentiable(image_encoder_for(encoder_name, clip_vision, "TrainStyleMamba: style_mamba"))
        cached = load_image_encoder(comfy_bridge.resolve_encoder(encoder_name))
        image_encoder = dataclasses.replace(cached, model=trainable(cached.model))
        comfy_bridge.load_model(image_encoder, image_encoder.model, "differentiable encoder")
        return image_encoder


def clip_vision_start(
    clip_vision, style_mamba: StyleMamba | None, style_text: str, style_images: torch.Tensor | None, text_encoder: str,
    latent_channels: int, seed: int, paired_clip: bool = False,
) -> StyleMamba:
    """The model a CLIP_VISION fit starts from: ``style_mamba`` when it was made with this tower, else a new one sized to it.

    A CLIP_VISION has no text tower: without its paired CLIP the style comes from the style images alone.
    """
    if not paired_clip and (style_images is None or style_text.strip()):
        raise ValueError(
            "TrainStyleMamba: a CLIP_VISION encodes pictures only: connect style_images and clear style_text, or connect "
            f"the CLIP of the same CLIP model to clip for a text style (pairs that work: {pairs_table()}); "
            "SigLIP text styles need a SigLIP text_encoder, with clip_vision disconnected"
        )
    if text_encoder != FROM_MODEL:
        raise ValueError(
            f"TrainStyleMamba: text_encoder {text_encoder!r} and clip_vision both name the encoder; set text_encoder to "
            f"{FROM_MODEL!r} or disconnect clip_vision"
        )
    if style_mamba is not None:
        check_same_tower(style_mamba.text_encoder, clip_vision, "TrainStyleMamba: the style_mamba to start from")
        return style_mamba
    tower = tower_identity(clip_vision)
    config = StyleMambaConfig(latent_channels=latent_channels, style_dim=tower.width)
    return new_style_mamba(config, text_encoder=tower.encoder_id, seed=seed)


def save_new_checkpoint(style_mamba: StyleMamba, filename_prefix: str) -> Path:
    """Write ``<prefix>_NNNNN.safetensors`` under models/stylemamba with the first free number; never overwrites."""
    for _ in range(3):  # another save may take the same number between the check and the write
        path = comfy_bridge.new_checkpoint_path(filename_prefix)
        try:
            return save_checkpoint(style_mamba, path, overwrite=False)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not find a free file name for {filename_prefix!r} in models/stylemamba")


class SaveStyleMamba:
    DESCRIPTION = "Saves a STYLE_MAMBA to models/stylemamba/<prefix>_00001.safetensors with its training prompt and settings; never overwrites."
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "style_mamba": ("STYLE_MAMBA", {"tooltip": "The model to keep, e.g. from TrainStyleMamba."}),
                "filename_prefix": ("STRING", {"default": "style", "tooltip": "Name inside models/stylemamba; a number is appended."}),
            },
        }

    def save(self, style_mamba: StyleMamba, filename_prefix: str) -> dict:
        if not filename_prefix.strip():
            raise ValueError("SaveStyleMamba: filename_prefix is empty")
        path = save_new_checkpoint(style_mamba, filename_prefix.strip())
        logging.info("SaveStyleMamba: wrote %s", path)
        return {"ui": {"text": [path.name]}, "result": ()}


NODE_CLASS_MAPPINGS = {"TrainStyleMamba": TrainStyleMamba, "SaveStyleMamba": SaveStyleMamba}
NODE_DISPLAY_NAME_MAPPINGS = {"TrainStyleMamba": "Train StyleMamba (fit a style)", "SaveStyleMamba": "Save StyleMamba"}
