"""Test-only ComfyUI nodes: linked into the test server's ``custom_nodes`` by ``tests/comfyui/conftest.py``, never shipped.

Flux.1's text encoders (CLIP-L + T5-XXL through DualCLIPLoader) are built at a fixed 4.7 G parameters whatever
the file holds, too large for CI. ``StandInFluxTextEncode`` takes their place in the test twin of a Flux
workflow: it returns a CONDITIONING of the shapes they give (T5-XXL tokens 4096 wide, CLIP-L's 768-d pooled
output), derived from the prompt text so different prompts give different conditioning, and every other
node of the workflow (the Flux model, Redux, SigLIP, the sampler, the VAE) runs as saved.
"""

from __future__ import annotations

import hashlib

import torch

T5_XXL_WIDTH, CLIP_L_POOLED = 4096, 768


class StandInFluxTextEncode:
    """CLIPTextEncode on Flux's DualCLIPLoader, reduced to its output shapes: one 4096-d token per word plus end."""

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
        pooled = torch.randn(1, CLIP_L_POOLED, generator=generator)
        return ([[tokens, {"pooled_output": pooled}]],)


NODE_CLASS_MAPPINGS = {"StandInFluxTextEncode": StandInFluxTextEncode}
