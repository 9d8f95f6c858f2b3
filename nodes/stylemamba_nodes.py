"""LoadStyleMamba → TextStyleEncode → StyleFuse: thin adapters from ComfyUI sockets to the core."""

from __future__ import annotations

from ..stylemamba.checkpoint import StyleMamba, load_checkpoint, new_style_mamba
from ..stylemamba.config import DEFAULT_TEXT_ENCODER, StyleMambaConfig, config_for_encoder
from ..stylemamba.style import DEFAULT_SOURCE_TEXT, StyleEmbedding, encode_text_style
from ..stylemamba.stylize import TEMPORAL_MODES, stylize_latents
from ..stylemamba.vision_towers import check_same_tower, tower_identity
from . import comfy_bridge
from .style_encoders import text_encoder_for
from .widgets import CATEGORY

NEW_MODEL = "new (untrained)"
FROM_CHECKPOINT = "from checkpoint"


class LoadStyleMamba:
    DESCRIPTION = (
        "Loads a StyleMamba style fusion model from models/stylemamba, or makes a new untrained one "
        "(which changes nothing until trained) for a given latent channel count, sized to the chosen SigLIP. "
        "A text_encoder other than 'from checkpoint' is the only SigLIP whose styles StyleFuse then accepts. "
        "With a CLIP_VISION connected (e.g. the IP-Adapter's or Redux's), a new model is sized to that tower instead and "
        "takes image styles from it, and a checkpoint must have been made with that very CLIP_VISION."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STYLE_MAMBA",)
    RETURN_NAMES = ("style_mamba",)
    OUTPUT_TOOLTIPS = ("The style fusion model and the SigLIP text encoder it expects.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "checkpoint": ([NEW_MODEL, *comfy_bridge.list_model_files("stylemamba")], {"tooltip": "A .safetensors file in models/stylemamba."}),
                "text_encoder": (
                    [FROM_CHECKPOINT, DEFAULT_TEXT_ENCODER, *comfy_bridge.list_local_encoders()],
                    {"tooltip": "SigLIP folder in models/siglip or a hub id; 'from checkpoint' uses the one it was trained with."},
                ),
            },
            "optional": {
                "latent_channels": ("INT", {
                    "default": 4, "min": 1, "max": 256,
                    "tooltip": "Only for a new model: 4 for SD1.5/SDXL, 16 for SD3/Flux.1, 32 for Flux.2 latents.",
                }),
                "clip_vision": ("CLIP_VISION", {"tooltip": "Optional: the vision tower (CLIP ViT-L/H/bigG, SigLIP so400m) "
                                "whose image styles the model reads, instead of a SigLIP folder; text_encoder is then ignored "
                                "for a new model and must be 'from checkpoint' for a checkpoint."}),
            },
        }

    def load(self, checkpoint: str, text_encoder: str, latent_channels: int = 4, clip_vision=None) -> tuple[StyleMamba]:
        if clip_vision is not None:
            return (self.load_for_clip_vision(checkpoint, text_encoder, latent_channels, clip_vision),)
        if checkpoint == NEW_MODEL:
            encoder = DEFAULT_TEXT_ENCODER if text_encoder == FROM_CHECKPOINT else text_encoder
            config = config_for_encoder(comfy_bridge.resolve_encoder(encoder), latent_channels)
            return (new_style_mamba(config, text_encoder=encoder),)
        style_mamba = load_checkpoint(comfy_bridge.model_file_path("stylemamba", checkpoint), device=comfy_bridge.offload_device())
        if text_encoder != FROM_CHECKPOINT:
            style_mamba.text_encoder = text_encoder  # StyleFuse then accepts styles from this encoder only
        return (style_mamba,)

    @staticmethod
    def load_for_clip_vision(checkpoint: str, text_encoder: str, latent_channels: int, clip_vision) -> StyleMamba:
        """A new model sized to the CLIP_VISION's style embedding, or a checkpoint made with that same tower."""
        tower = tower_identity(clip_vision)
        if checkpoint == NEW_MODEL:
            return new_style_mamba(StyleMambaConfig(latent_channels=latent_channels, style_dim=tower.width), text_encoder=tower.encoder_id)
        if text_encoder != FROM_CHECKPOINT:
            raise ValueError(
                f"LoadStyleMamba: text_encoder {text_encoder!r} and a CLIP_VISION both name the encoder; set text_encoder "
                "to 'from checkpoint' or disconnect clip_vision"
            )
        style_mamba = load_checkpoint(comfy_bridge.model_file_path("stylemamba", checkpoint), device=comfy_bridge.offload_device())
        check_same_tower(style_mamba.text_encoder, clip_vision, f"LoadStyleMamba: {checkpoint}")
        return style_mamba


class TextStyleEncode:
    DESCRIPTION = (
        "Encodes a style description with the model's text encoder (prompt templates averaged): its SigLIP text tower, "
        "or, for a model made from a CLIP_VISION, the CLIP text encoder of the same CLIP model connected as clip "
        "(e.g. Flux's clip_l with clip_vision_l, an SDXL checkpoint's CLIP with ViT-bigG); a pair that is not one "
        "CLIP model is refused, naming the pairs that work."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STYLE_EMBED",)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("The style as an embedding of the model's encoder, plus its direction from the source text.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "style_mamba": ("STYLE_MAMBA", {"tooltip": "Decides which text encoder to use."}),
                "text": ("STRING", {"multiline": True, "default": "an oil painting by Van Gogh", "tooltip": "The style to apply."}),
            },
            "optional": {
                "source_text": ("STRING", {"default": DEFAULT_SOURCE_TEXT, "tooltip": "What the content images are, e.g. 'a photo'."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "For a model made from a CLIP_VISION: that CLIP_VISION, the image "
                                "half of the pair (with clip)."}),
                "clip": ("CLIP", {"tooltip": "For a model made from a CLIP_VISION: the CLIP text encoder of the same CLIP "
                         "model (clip_l.safetensors for ViT-L/14, an SD2.x checkpoint's for ViT-H, an SDXL checkpoint's "
                         "or clip_g.safetensors for ViT-bigG). Leave empty for a SigLIP model."}),
            },
        }

    def encode(
        self, style_mamba: StyleMamba, text: str, source_text: str = DEFAULT_SOURCE_TEXT, clip_vision=None, clip=None,
    ) -> tuple[StyleEmbedding]:
        if not text.strip():
            raise ValueError("TextStyleEncode: the style text is empty; describe a style such as 'a watercolor painting'")
        managed = text_encoder_for(style_mamba.text_encoder, clip_vision, clip, "TextStyleEncode: this model")
        return (encode_text_style(managed.ready(), text, source_text),)


class StyleFuse:
    DESCRIPTION = (
        "Restyles a LATENT with a StyleMamba model and a style embedding. Keeps the LATENT's other keys; "
        "an optional MASK limits the change. Video latents (Wan, HunyuanVideo, LTX-Video, Mochi, Cosmos) are styled "
        "across frames in chunks that carry the temporal state, so any length runs in the memory of one chunk."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The stylised latent: decode it with the same VAE.",)
    FUNCTION = "fuse"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "style_mamba": ("STYLE_MAMBA",),
                "latent": ("LATENT", {"tooltip": "From VAEEncode of the content image(s)."}),
                "style": ("STYLE_EMBED",),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "0 = unchanged, 1 = as trained, 2 = exaggerated."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "White = stylise, black = keep; resized to the latent. For video: one mask, "
                                  "one per latent frame, or one per video frame."}),
                "temporal": (list(TEMPORAL_MODES), {"default": "auto", "tooltip": "Video only. auto = across frames "
                             "for video latents; 'across frames' on an image latent is an error; 'frame by frame' ignores "
                             "the model's temporal mixers."}),
                "chunk_frames": ("INT", {"default": 16, "min": 1, "max": 4096, "tooltip": "Video only (images ignore it): "
                                 "latent frames per step; memory grows with it, the result does not change."}),
            },
        }

    def fuse(
        self, style_mamba: StyleMamba, latent: dict, style: StyleEmbedding, strength: float, mask=None,
        temporal: str = "auto", chunk_frames: int = 16,
    ) -> tuple[dict]:
        samples = latent["samples"]
        video = samples.dim() == 5
        progress = comfy_bridge.Progress(samples.shape[2] if video else samples.shape[0])

        def report(done: int, total: int) -> None:
            progress(done, total)
            comfy_bridge.throw_if_interrupted()

        device = comfy_bridge.load_model(style_mamba, style_mamba.model)
        styled = stylize_latents(
            style_mamba, samples, style, strength, mask,
            device=device, autocast_dtype=comfy_bridge.autocast_dtype(device), progress=report,
            temporal=temporal, **({"batch_size": chunk_frames} if video else {}),
        )
        return ({**latent, "samples": styled},)


NODE_CLASS_MAPPINGS = {"LoadStyleMamba": LoadStyleMamba, "TextStyleEncode": TextStyleEncode, "StyleFuse": StyleFuse}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadStyleMamba": "Load StyleMamba",
    "TextStyleEncode": "Text Style Encode (SigLIP)",
    "StyleFuse": "StyleMamba Style Fuse",
}
