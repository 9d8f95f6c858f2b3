"""StyleScore: judge a stylised image in the graph and, with a strength sweep, let the graph pick StyleFuse's strength."""

from __future__ import annotations

import itertools

import torch

from ..stylemamba.checkpoint import StyleMamba
from ..stylemamba.mixing import StyleMix
from ..stylemamba.style import StyleEmbedding
from ..stylemamba.stylize import stylize_latents
from ..stylemamba.training.score import Score, check_strengths, pick_strength, report, score_images, strength_grid, sweep_strengths
from . import comfy_bridge
from .image_sockets import channels_first
from .style_encoders import ManagedImageEncoder, image_encoder_for
from .widgets import CATEGORY, parse_numbers

#: What StyleScore's best_strength gives when no sweep runs: StyleFuse's default.
DEFAULT_STRENGTH = 1.0
SWEEP_INPUTS = ("style_mamba", "vae", "latent")


class StyleScore:
    DESCRIPTION = (
        "Scores a stylised image: SigLIP similarity to the style (beside the content's own, as a baseline), SSIM to the "
        "content, and a one-line report. Connect style_mamba, vae and the content's latent to sweep strengths too: a "
        "labelled preview grid and the strength with the highest style similarity whose SSIM stays at or above "
        "min_content_ssim, ready for StyleFuse's strength. A style mix is scored against its weighted mean style."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING", "IMAGE", "FLOAT")
    RETURN_NAMES = ("style_similarity", "content_ssim", "report", "preview", "best_strength")
    OUTPUT_TOOLTIPS = (
        "Mean SigLIP cosine of the styled images to the style (higher = more like the style).",
        "Mean SSIM of the styled images to the content (1 = structure fully kept).",
        "Both numbers, the content's own style similarity and, after a sweep, the strength picked.",
        "The sweep's labelled grid, or the styled images when no sweep runs.",
        "The picked strength after a sweep; 1.0 without one.",
    )
    OUTPUT_NODE = True
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "content": ("IMAGE", {"tooltip": "The content image(s) before styling."}),
                "styled": ("IMAGE", {"tooltip": "The stylised image(s), e.g. from VAEDecode after StyleFuse."}),
                "style": ("STYLE_EMBED", {"tooltip": "The style that was applied."}),
            },
            "optional": {
                "style_mamba": ("STYLE_MAMBA", {"tooltip": "For the sweep: the model StyleFuse used."}),
                "vae": ("VAE", {"tooltip": "For the sweep: the VAE that decodes the latent."}),
                "latent": ("LATENT", {"tooltip": "For the sweep: the content's latent (StyleFuse's input)."}),
                "strengths": ("STRING", {"default": "0.5, 1.0, 1.5", "tooltip": "Strengths to sweep (0 to 2), e.g. '0.5, 1.0, 1.5'."}),
                "min_content_ssim": ("FLOAT", {
                    "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "The sweep picks the most style-like strength whose content SSIM is at least this.",
                }),
                "clip_vision": ("CLIP_VISION", {"tooltip": "The CLIP_VISION the style was encoded with, when it came "
                                                "from one (styles of a SigLIP model need none)."}),
            },
        }

    def score(
        self, content: torch.Tensor, styled: torch.Tensor, style: StyleEmbedding | StyleMix,
        style_mamba: StyleMamba | None = None, vae=None, latent: dict | None = None,
        strengths: str = "0.5, 1.0, 1.5", min_content_ssim: float = 0.5, clip_vision=None,
    ) -> dict:
        content_images = channels_first(content, "StyleScore: content")
        styled_images = channels_first(styled, "StyleScore: styled")
        encoder = image_encoder_for(style.encoder, clip_vision, "StyleScore: the style")
        measured = score_images(encoder.ready(), styled_images, content_images, style)
        line, preview, best = report(measured, style.description), styled[..., :3], DEFAULT_STRENGTH
        given = {name: value for name, value in zip(SWEEP_INPUTS, (style_mamba, vae, latent)) if value is not None}
        if given:
            missing = [name for name in SWEEP_INPUTS if name not in given]
            if missing:
                raise ValueError(f"StyleScore: the strength sweep needs style_mamba, vae and latent; connect {', '.join(missing)} too")
            picked, kept, preview = self.sweep(encoder, style_mamba, vae, latent, style, content_images, measured, strengths, min_content_ssim)
            best = picked.strength
            line += f" | sweep picked strength {best:g} (SSIM {picked.ssim:.3f}"
            line += f" ≥ {min_content_ssim:g})" if kept else f"; none kept SSIM ≥ {min_content_ssim:g}, so the one keeping the most content)"
        return {"ui": {"text": [line]}, "result": (measured.style, measured.ssim, line, preview, best)}

    @staticmethod
    def sweep(
        encoder: ManagedImageEncoder, style_mamba: StyleMamba, vae, latent: dict, style: StyleEmbedding | StyleMix,
        content: torch.Tensor, measured: Score, strengths: str, min_content_ssim: float,
    ) -> tuple[Score, bool, torch.Tensor]:
        """StyleFuse + VAEDecode at each strength; the picked score, whether it kept enough content, and the grid IMAGE."""
        samples = latent["samples"]
        if samples.dim() != 4:
            raise ValueError(f"StyleScore: the sweep takes image latents (batch, channels, height, width), got shape {tuple(samples.shape)}")
        values = check_strengths(parse_numbers(strengths, "StyleScore: strengths"))
        progress, done = comfy_bridge.Progress(len(values)), itertools.count(1)

        def render(strength: float) -> torch.Tensor:
            comfy_bridge.throw_if_interrupted()
            device = comfy_bridge.load_model(style_mamba, style_mamba.model)
            fused = stylize_latents(style_mamba, samples, style, strength, device=device, autocast_dtype=comfy_bridge.autocast_dtype(device))
            return vae.decode(fused).movedim(-1, 1)[:, :3].float().cpu()

        def judge(images: torch.Tensor, strength: float) -> Score:
            result = score_images(encoder.ready(), images, content, style, content_style=measured.content_style, strength=strength)
            progress(next(done), len(values))
            return result

        results = sweep_strengths(values, render, judge)
        picked, kept = pick_strength([score for score, _ in results], min_content_ssim)
        return picked, kept, strength_grid(results, picked).movedim(1, -1)


NODE_CLASS_MAPPINGS = {"StyleScore": StyleScore}
NODE_DISPLAY_NAME_MAPPINGS = {"StyleScore": "StyleMamba Style Score (pick strength)"}
