"""Test-only ComfyUI nodes: linked into the test server's ``custom_nodes`` by ``tests/comfyui/conftest.py``, never shipped.

Flux.1's text encoders (CLIP-L + T5-XXL through DualCLIPLoader) are built at a fixed 4.7 G parameters whatever
the file holds, and SD3.5's (CLIP-L + CLIP-G + T5-XXL through TripleCLIPLoader) at 5.5 G: too large for CI.
``StandInFluxTextEncode`` and ``StandInSD3TextEncode`` take their place in the test twin of a Flux or SD3.5
workflow: each returns a CONDITIONING of the shapes the real encoders give (T5-XXL-wide 4096-d tokens and the
pooled CLIP output: CLIP-L's 768-d for Flux, CLIP-L's and CLIP-G's concatenated, 2048-d, for SD3), derived from
the prompt text so different prompts give different conditioning, and every other node of the workflow (the
diffusion model, Redux or the IP-Adapter, SigLIP, the sampler, the VAE) runs as saved.
"""

from __future__ import annotations

import hashlib

import torch

T5_XXL_WIDTH, CLIP_L_POOLED, CLIP_G_POOLED = 4096, 768, 1280


class StandInFluxTextEncode:
    """CLIPTextEncode on Flux's DualCLIPLoader, reduced to its output shapes: one 4096-d token per word plus end."""

    POOLED_WIDTH = CLIP_L_POOLED
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {"required": {"text": ("STRING", {"multiline": True})}}

    def encode(self, text: str) -> tuple[list]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randn(1, len(text.split()) + 1, T5_XXL_WIDTH, generator=generator)
        pooled = torch.randn(1, self.POOLED_WIDTH, generator=generator)
        return ([[tokens, {"pooled_output": pooled}]],)


class StandInSD3TextEncode(StandInFluxTextEncode):
    """CLIPTextEncode on SD3's TripleCLIPLoader, reduced to its output shapes: 4096-d tokens, CLIP-L + CLIP-G pooled."""

    POOLED_WIDTH = CLIP_L_POOLED + CLIP_G_POOLED


class StandInCLIPVisionLoader:
    """CLIPVisionLoader reduced in size: ComfyUI's own ``ClipVisionModel`` (its CLIP tower class, preprocessing, patcher and
    model management) built from a 2-layer, 64-wide ViT config with random weights, for the CLIP_VISION fit template, whose
    64 patch crops per step through a full-size tower take most of an hour on 2 CPU cores. The full-size towers are tested
    in-process (test_clip_vision_styles_in_comfyui.py)."""

    CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8,
              "image_size": 64, "projection_dim": 32, "num_channels": 3, "hidden_act": "quick_gelu", "model_type": "clip_vision_model"}
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, dict[str, tuple]]:
        return {"required": {"clip_name": ("STRING", {})}}

    def load_clip(self, clip_name: str) -> tuple:
        import json
        import tempfile

        import comfy.clip_vision

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as config:
            json.dump(self.CONFIG, config)
        clip_vision = comfy.clip_vision.ClipVisionModel(config.name)
        generator = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(clip_name.encode()).digest()[:4], "little"))
        state = {name: (torch.ones_like(value) if name.endswith("norm1.weight") or name.endswith("norm2.weight")
                        or name.endswith("layernorm.weight") or name.endswith("layrnorm.weight")
                        else torch.randn(value.shape, generator=generator) * 0.05)
                 for name, value in clip_vision.get_sd().items()}
        missing, unexpected = clip_vision.load_sd(state)
        assert not missing and not unexpected, (missing, unexpected)
        return (clip_vision,)


NODE_CLASS_MAPPINGS = {"StandInFluxTextEncode": StandInFluxTextEncode, "StandInSD3TextEncode": StandInSD3TextEncode,
                       "StandInCLIPVisionLoader": StandInCLIPVisionLoader}
