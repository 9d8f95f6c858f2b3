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

import torch
from tqdm import tqdm

from ..stylemamba.checkpoint import StyleMamba, new_style_mamba, save_checkpoint
from ..stylemamba.config import DEFAULT_TEXT_ENCODER, StyleMambaConfig
from ..stylemamba.encoders import load_image_encoder, load_text_encoder
from ..stylemamba.training.fit import FitSettings, fit_resolution, fit_style
from ..stylemamba.style import DEFAULT_SOURCE_TEXT, StyleEmbedding, encode_text_style
from ..stylemamba.training.taesd import find_pair, load_tiny_autoencoder
from . import comfy_bridge

CATEGORY = "style_transfer/StyleMamba"
FULL_VAE = "full VAE"
FROM_MODEL = "from style_mamba (or default)"
PREVIEW_SIZE = 512


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


def comfy_image_batch(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (b, H, W, C) → (b, 3, H, W) in [0, 1], a normal (non-inference) tensor."""
    if images.dim() != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"TrainStyleMamba: images must be an IMAGE batch (b, H, W, 3), got shape {tuple(images.shape)}")
    return images[..., :3].movedim(-1, 1).float().clone()


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


class TinyDecoder:
    """A TAESD-family decoder from models/vae_approx as the fit's cheap proxy decoder."""

    def __init__(self, name: str, latent_channels: int, device: torch.device):
        decoder_path, _ = find_pair(comfy_bridge.model_file_path("vae_approx", name))
        self.tae = load_tiny_autoencoder(decoder_path).to(device)
        if self.tae.latent_channels != latent_channels:
            raise ValueError(
                f"TrainStyleMamba: {name} decodes {self.tae.latent_channels}-channel latents ({self.tae.family.name}) "
                f"but this VAE makes {latent_channels}-channel latents; pick the tiny autoencoder of the same family"
            )
        self.device = device

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.tae.decode(latents.to(self.device))


def preview_image(images: torch.Tensor, step: int, total: int, loss: float) -> tuple:
    """ComfyUI's preview tuple: the first image, with the step and loss written on it."""
    from PIL import Image, ImageDraw

    array = (images[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    picture = Image.fromarray(array)
    picture.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    ImageDraw.Draw(picture).text((4, 4), f"step {step}/{total}  loss {loss:.4g}", fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    return ("JPEG", picture, PREVIEW_SIZE)


class TrainStyleMamba:
    DESCRIPTION = (
        "Fits a StyleMamba model to a style text on your content images (CLIPstyler-style losses in SigLIP space). "
        "Decodes through the full VAE, or a tiny autoencoder from models/vae_approx as a much faster proxy. "
        "Cancel stops the fit and returns the best model so far."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STYLE_MAMBA",)
    RETURN_NAMES = ("style_mamba",)
    OUTPUT_TOOLTIPS = ("The fitted model (lowest loss seen); apply it with StyleFuse, keep it with SaveStyleMamba.",)
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
                "max_resolution": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Content images are downscaled so their longer side is at most this while fitting."}),
            },
            "optional": {
                "style_mamba": ("STYLE_MAMBA", {"tooltip": "Start from this model (e.g. a multi-style checkpoint) instead of a new one."}),
                "text_encoder": ([FROM_MODEL, DEFAULT_TEXT_ENCODER, *comfy_bridge.list_local_encoders()], {"tooltip": "SigLIP in models/siglip or a hub id."}),
            },
        }

    def train(
        self, vae, images: torch.Tensor, style_text: str, source_text: str, iterations: int, learning_rate: float,
        seed: int, training_decoder: str, max_resolution: int, style_mamba: StyleMamba | None = None,
        text_encoder: str = FROM_MODEL,
    ) -> tuple[StyleMamba]:
        if not style_text.strip():
            raise ValueError("TrainStyleMamba: the style text is empty; describe a style such as 'a watercolor painting'")
        encoder_name = text_encoder if text_encoder != FROM_MODEL else (style_mamba.text_encoder if style_mamba else DEFAULT_TEXT_ENCODER)
        device = comfy_bridge.compute_device()
        settings = FitSettings(
            iterations=iterations, lr=learning_rate, seed=seed,
            train_decoder="vae" if training_decoder == FULL_VAE else training_decoder,
        )
        with torch.inference_mode(False), torch.enable_grad():
            try:
                return (self._fit(vae, images, style_text, source_text, settings, max_resolution, style_mamba, encoder_name, device),)
            finally:
                comfy_bridge.free_memory()

    def _fit(self, vae, images, style_text, source_text, settings, max_resolution, style_mamba, encoder_name, device) -> StyleMamba:
        resolved = comfy_bridge.resolve_encoder(encoder_name)
        text_encoder = load_text_encoder(resolved)
        with comfy_bridge.on_compute_device(text_encoder.model):
            style = encode_text_style(text_encoder, style_text, source_text)
        style = StyleEmbedding(style.target.clone(), style.source.clone(), style.description, style.encoder)
        cached = load_image_encoder(resolved)
        image_encoder = dataclasses.replace(cached, model=trainable(cached.model))
        ratio = getattr(vae, "downscale_ratio", 8)
        content = fit_resolution(comfy_image_batch(images), max_resolution, multiple=ratio if isinstance(ratio, int) else 8)
        codec = ComfyVAECodec(vae, device)
        if style_mamba is None:
            config = StyleMambaConfig(latent_channels=vae.latent_channels, style_dim=style.target.shape[-1])
            style_mamba = new_style_mamba(config, text_encoder=encoder_name, seed=settings.seed)
        decode = codec.decode
        if settings.train_decoder != "vae":
            decode = TinyDecoder(settings.train_decoder, style_mamba.config.latent_channels, device).decode

        total = settings.iterations
        progress = comfy_bridge.Progress(total)
        bar = tqdm(total=total, desc="TrainStyleMamba", unit="step")

        def report(step: int, loss: float, preview: torch.Tensor | None) -> bool:
            if comfy_bridge.interrupt_requested():
                logging.info("TrainStyleMamba: interrupted at step %d; returning the best model so far", step)
                return True
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
            progress(step, total, preview_image(preview, step, total, loss) if preview is not None else None)
            return False

        with comfy_bridge.on_compute_device(image_encoder.model):
            try:
                result = fit_style(style_mamba, content, style, codec.encode, decode, image_encoder, settings, report, device=device)
            finally:
                bar.close()
        fitted = result.style_mamba
        fitted.model.to(comfy_bridge.offload_device())
        fitted.training.update(source_text=source_text, text_encoder=encoder_name, stopped_early=result.stopped_early, seconds=round(result.seconds, 2))
        fitted.source = f"TrainStyleMamba: {style_text.strip()}"
        logging.info(
            "TrainStyleMamba: %d steps in %.1f s, best loss %.4g at step %d",
            len(result.history), result.seconds, result.best_loss, result.best_step,
        )
        return fitted


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
        for _ in range(3):  # another save may take the same number between the check and the write
            path = comfy_bridge.new_checkpoint_path(filename_prefix.strip())
            try:
                save_checkpoint(style_mamba, path, overwrite=False)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"SaveStyleMamba: could not find a free file name for {filename_prefix!r}")
        logging.info("SaveStyleMamba: wrote %s", path)
        return {"ui": {"text": [path.name]}, "result": ()}


NODE_CLASS_MAPPINGS = {"TrainStyleMamba": TrainStyleMamba, "SaveStyleMamba": SaveStyleMamba}
NODE_DISPLAY_NAME_MAPPINGS = {"TrainStyleMamba": "Train StyleMamba (fit a style)", "SaveStyleMamba": "Save StyleMamba"}
