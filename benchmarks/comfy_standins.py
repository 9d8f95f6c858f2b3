"""Tiny random-weight models from ComfyUI's own classes, and stand-in CLIP visions: what the StyleStudio benchmarks
(``stylestudio_dit.py``, ``stylestudio_sd3.py``) measure on and the real-ComfyUI tier's probes (``tests/comfyui/probes``) sample.

Run in ComfyUI's python with cwd = the ComfyUI root (``PYTHONPATH=.``). Importing this module sets ComfyUI's ``--cpu``
before ``comfy.model_management`` loads: every user of these models runs them on the CPU.
"""

from __future__ import annotations

import math

from comfy.cli_args import args

args.cpu = True

import torch  # noqa: E402

import comfy.clip_vision  # noqa: E402
import comfy.ldm.flux.redux  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402

CONTEXT, POOLED, HIDDEN, VISION = 32, 16, 32, 24  # text width, pooled width, model width, CLIP-vision width
FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=POOLED, context_in_dim=CONTEXT, hidden_size=HIDDEN,
            mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=4, axes_dim=[4, 6, 6], theta=10000, patch_size=2,
            qkv_bias=True, guidance_embed=True)
REDUX_PATCHES = 5  # Redux tokens per image: CLIP-vision patches of the stand-in SigLIP
VIT_L, SIGLIP = 20, 28  # stand-in CLIP ViT-L / SigLIP image_embeds widths
CLIP_WIDTH = {"xlabs": VIT_L, "instantx": SIGLIP}
#: The tiny SD3.5-shaped MM-DiT (ComfyUI's MMDiT: 64·depth wide, depth heads of 64) and its SigLIP stand-in's width and patches.
SD3_DEPTH, SD3_BLOCKS, SD3_FEATURES, SD3_PATCHES = 2, 3, 20, 9
SD3 = dict(in_channels=16, out_channels=16, patch_size=2, depth=SD3_DEPTH, num_blocks=SD3_BLOCKS, adm_in_channels=POOLED,
           pos_embed_max_size=8, num_patches=64, qk_norm="rms",
           context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": CONTEXT, "out_features": 64 * SD3_DEPTH}})


def random_patcher(model) -> comfy.model_patcher.ModelPatcher:
    """``model``'s diffusion model with seeded random weights (zero biases, unit norms), in a CPU ``ModelPatcher``."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.diffusion_model.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif parameter.ndim == 1:
                parameter.fill_(1.0)
            else:
                fan_in = math.prod(parameter.shape[1:])
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(fan_in))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def tiny_flux(dtype: torch.dtype = torch.float32):
    config = comfy.supported_models.Flux(dict(FLUX))
    config.set_inference_dtype(dtype, None)
    return random_patcher(config.get_model({}))


def tiny_redux(vision: int = VISION, context: int = CONTEXT) -> comfy.sd.StyleModel:
    """ComfyUI's Redux encoder, narrowed; seeded weights (ComfyUI's layers skip initialisation, leaving memory as found)."""
    encoder = comfy.ldm.flux.redux.ReduxImageEncoder(redux_dim=vision, txt_in_features=context)
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for parameter in encoder.parameters():
            fan_in = parameter.shape[-1] if parameter.ndim > 1 else 1
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(fan_in))
    return comfy.sd.StyleModel(encoder)


class StandInSiglip:
    """CLIP vision reduced to ``last_hidden_state``, which Redux reads; each image's tokens follow its colours."""

    def __init__(self, width: int = VISION):
        self.width = width

    def encode_image(self, image: torch.Tensor) -> comfy.clip_vision.Output:
        colour = image.mean(dim=(1, 2))  # (n, 3)
        output = comfy.clip_vision.Output()
        phases = torch.arange(1.0, REDUX_PATCHES + 1)[None, :, None] * colour.sum(-1)[:, None, None] * 3
        output["last_hidden_state"] = torch.sin(phases + torch.arange(self.width) * 0.7)
        return output


class StandInClipVision:
    """CLIP vision reduced to ``image_embeds``, which both Flux adapters read; each image's embedding follows its colours."""

    def __init__(self, width: int):
        self.width = width

    def encode_image(self, picture: torch.Tensor) -> comfy.clip_vision.Output:
        colour = picture.mean(dim=(1, 2)).sum(-1, keepdim=True)  # (n, 1)
        output = comfy.clip_vision.Output()
        output["image_embeds"] = torch.sin(colour * 5 + torch.arange(self.width) * 0.9) * 2
        return output


def tiny_sd3(x_self_attention: bool = False, **overrides):
    """ComfyUI's SD3 with seeded weights; the q/k norms get random weights (not 1) so the adapter's norm ratio is tested.
    ``overrides``: other MMDiT settings (the benchmark's wider model)."""
    config = comfy.supported_models.SD3(dict(SD3, x_block_self_attn_layers=[0] if x_self_attention else [], **overrides))
    config.set_inference_dtype(torch.float32, None)
    patcher = random_patcher(config.get_model({}))
    model = patcher.get_model_object("diffusion_model")
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        model.pos_embed.copy_(torch.randn(model.pos_embed.shape, generator=generator) * 0.1)  # a buffer: not initialised
        for name, parameter in model.named_parameters():
            if ".ln_q." in name or ".ln_k." in name:
                parameter.copy_(1 + 0.3 * torch.randn(parameter.shape, generator=generator))
    return patcher


class StandInSiglipHidden:
    """CLIP vision reduced to ``penultimate_hidden_states``, which the SD3.5 adapter reads; they follow the image's colours."""

    def __init__(self, width: int = SD3_FEATURES):
        self.width = width

    def encode_image(self, image: torch.Tensor) -> comfy.clip_vision.Output:
        colour = image.mean(dim=(1, 2))
        output = comfy.clip_vision.Output()
        phases = torch.arange(1.0, SD3_PATCHES + 1)[None, :, None] * colour.sum(-1)[:, None, None] * 3
        output["penultimate_hidden_states"] = torch.sin(phases + torch.arange(self.width) * 0.7)
        return output


def image(value: float) -> torch.Tensor:
    return torch.linspace(0, value, 16 * 16 * 3).reshape(1, 16, 16, 3)
