"""StyleStudio and the SigLIP/StyleMamba nodes in-process in a real ComfyUI, on tiny models built from ComfyUI's classes.

Usage (ComfyUI's venv, cwd = ComfyUI root): ``stylestudio_in_comfyui.py``. Last stdout line: one JSON object
with, per family (SD1.5, SDXL), how far each sampled latent lies from the unpatched model's and how often
the stand-in IP-Adapter contribution ran, plus what ComfyUI's model management holds after the StyleMamba
nodes ran. ``tests/comfyui/test_stylestudio_in_comfyui.py`` asserts on it.

The UNets are ComfyUI's ``UNetModel`` inside ``comfy.model_base`` models (built through
``comfy.supported_models.SD15`` / ``SDXL`` with small channels) in a ``ModelPatcher``; they keep their
family's cross-attention block layout, so the "style" preset and IP-Adapter's layer numbering apply.
CLIP vision is a stand-in (features computed from the image); the IP-Adapter files are real
``.safetensors`` files in the public key layout, shaped for the tiny models.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

from comfy.cli_args import args

args.cpu = True

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

import comfy.clip_vision  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import folder_paths  # noqa: E402
from comfy.ldm.modules.attention import optimized_attention  # noqa: E402

TESTS = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(TESTS), str(TESTS.parent / "benchmarks")]  # the test builders; the ComfyUI stand-ins benchmarks share
from builders import TINY_EMBED_DIM, build_tiny_siglip, tiny_config  # noqa: E402
from comfy_standins import random_patcher  # noqa: E402
from collecting_patch import ImagePromptCallback, apply_collecting_patch, ipadapter_keys  # noqa: E402

from comfyui_stylemamba.nodes.stylemamba_nodes import StyleFuse, TextStyleEncode  # noqa: E402
from comfyui_stylemamba.nodes.stylestudio_nodes import StyleStudioCrossAdaIN  # noqa: E402
from comfyui_stylemamba.stylemamba.checkpoint import new_style_mamba  # noqa: E402
from comfyui_stylemamba.stylestudio.layers import unet_cross_attention_layers  # noqa: E402
from comfyui_stylemamba.stylestudio.patches import CrossAdaINPatch  # noqa: E402

CONTEXT = 32  # text-token width of the tiny models
POOLED = 32  # SDXL's pooled text embedding, tiny
EMBEDS, HIDDEN = 16, 24  # stand-in CLIP vision: image_embeds and penultimate hidden-state widths
LATENT = (1, 4, 8, 8)
STEPS, CFG = 4, 5.0
COMMON = dict(image_size=32, in_channels=4, out_channels=4, model_channels=32, use_spatial_transformer=True, legacy=False,
              use_checkpoint=False, context_dim=CONTEXT, use_temporal_attention=False, use_temporal_resblock=False)
UNETS = {
    "SD1.5": (comfy.supported_models.SD15, dict(
        COMMON, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
        transformer_depth_middle=1, transformer_depth_output=[1] * 9 + [0] * 3, use_linear_in_transformer=False,
        adm_in_channels=None)),
    "SDXL": (comfy.supported_models.SDXL, dict(
        COMMON, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 1, 1, 2, 2],
        transformer_depth_middle=1, transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], use_linear_in_transformer=True,
        num_head_channels=8, num_classes="sequential",
        adm_in_channels=POOLED + 6 * 256)),  # SDXL's adm input: the pooled text + six 256-d size embeddings
}


def tiny_unet(family: str, dtype: torch.dtype = torch.float32) -> comfy.model_patcher.ModelPatcher:
    """A ``comfy.model_base`` model of the family with random weights (ComfyUI's layers skip initialisation)."""
    config_class, unet_config = UNETS[family]
    config = config_class(dict(unet_config))
    config.set_inference_dtype(dtype, None)
    return random_patcher(config.get_model({}))


def counting_model(base) -> tuple[comfy.model_patcher.ModelPatcher, list[int]]:
    """A clone with a function wrapper that a teacher's wrapper must chain to; the list gets one entry per model pass."""
    passes: list[int] = []

    def counting_wrapper(apply_model, args):
        passes.append(1)
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = base.clone()
    counted.set_model_unet_function_wrapper(counting_wrapper)
    return counted, passes


def conditioning(family: str, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, POOLED, generator=generator)} if family == "SDXL" else {}
    return [[torch.randn(1, 7, CONTEXT, generator=generator), extra]]


def sample(model, family: str) -> torch.Tensor:
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():  # as ComfyUI runs every node
        return comfy.sample.sample(model, noise, STEPS, CFG, "euler", "normal", conditioning(family, 3), conditioning(family, 4),
                                   torch.zeros(LATENT), disable_pbar=True, seed=0)


class StandInClipVision:
    """CLIP vision reduced to what the node reads; each image's features follow its mean colour. Records its inputs."""

    image_size = 32

    def __init__(self):
        self.images: list[torch.Tensor] = []

    def encode_image(self, image: torch.Tensor) -> comfy.clip_vision.Output:
        self.images.append(image)
        colour = image.mean(dim=(1, 2))  # (n, 3)
        output = comfy.clip_vision.Output()
        output["image_embeds"] = torch.sin(colour @ torch.ones(3, EMBEDS) * torch.arange(1.0, EMBEDS + 1))
        patches = torch.arange(5.0)[None, :, None] + colour.sum(-1)[:, None, None]
        output["penultimate_hidden_states"] = torch.cos(patches * torch.arange(1.0, HIDDEN + 1))
        return output


def adapter_layers(model) -> dict[str, torch.Tensor]:
    """``ip_adapter.{2i+1}.to_{k,v}_ip.weight`` for the i-th attn2 in diffusers order (down, up, mid), read off the UNet."""
    part = {"input_blocks": 0, "output_blocks": 1, "middle_block": 2}
    attn2 = [(name, module) for name, module in model.get_model_object("diffusion_model").named_modules() if name.endswith(".attn2")]
    number = lambda name: [int(p) for p in name.split(".") if p.isdigit()]
    ordered = sorted(attn2, key=lambda item: (part[item[0].split(".")[0]], number(item[0])))
    generator = torch.Generator().manual_seed(5)
    out = {}
    for i, (_, module) in enumerate(ordered):
        for which in "kv":
            weight = torch.randn(module.to_k.out_features, CONTEXT, generator=generator) / math.sqrt(CONTEXT)
            out[f"ip_adapter.{2 * i + 1}.to_{which}_ip.weight"] = weight
    return out


def projection(kind: str) -> dict[str, torch.Tensor]:
    """IP-Adapter's image projection as torch modules: a linear map + LayerNorm (standard) or a Perceiver resampler (Plus)."""
    torch.manual_seed(6)
    if kind == "standard":
        module = nn.ModuleDict({"proj": nn.Linear(EMBEDS, 4 * CONTEXT), "norm": nn.LayerNorm(CONTEXT)})
    else:
        width = 64  # one 64-d head
        attention = nn.ModuleDict({"norm1": nn.LayerNorm(width), "norm2": nn.LayerNorm(width), "to_q": nn.Linear(width, width, bias=False),
                                   "to_kv": nn.Linear(width, 2 * width, bias=False), "to_out": nn.Linear(width, width, bias=False)})
        feed_forward = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width, bias=False), nn.GELU(),
                                     nn.Linear(4 * width, width, bias=False))
        module = nn.ModuleDict({"proj_in": nn.Linear(HIDDEN, width), "proj_out": nn.Linear(width, CONTEXT),
                                "norm_out": nn.LayerNorm(CONTEXT),
                                "layers": nn.ModuleList([nn.ModuleList([attention, feed_forward])])})
        module.latents = nn.Parameter(torch.randn(1, 6, width) / math.sqrt(width))
    return {f"image_proj.{key}": value.detach() for key, value in module.state_dict().items()}


def write_adapters(model, folder: Path, family: str) -> dict[str, str]:
    names = {}
    for kind in ("standard", "plus"):
        names[kind] = f"ip_adapter_{kind}_{family.replace('.', '')}.safetensors"
        save_file({**projection(kind), **adapter_layers(model)}, str(folder / names[kind]))
    return names


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def patch(model, clip_vision, adapter: str, strength: float = 1.0, layers: str = "style", custom: str = "6", teacher: bool = False):
    style_image = torch.linspace(0, 1, 16 * 16 * 3).reshape(1, 16, 16, 3)
    with torch.inference_mode():
        return StyleStudioCrossAdaIN().patch(model, clip_vision, style_image, adapter, strength, layers, custom, 0.0, 1.0, teacher, 0.4)[0]


def ipadapter(model, callback: ImagePromptCallback):
    """An IPAdapter_plus-style node: clone, then add a collecting patch on each of its keys."""
    patched = model.clone()
    layers = list(unet_cross_attention_layers(patched.get_model_object("diffusion_model")))
    options = patched.model_options["transformer_options"]
    for key in ipadapter_keys(layers):
        options = apply_collecting_patch(options, key, callback, optimized_attention, weight=0.8)
    patched.model_options["transformer_options"] = options
    return patched


def family_report(family: str, folder: Path) -> dict:
    base = tiny_unet(family)
    adapters = write_adapters(base, folder, family)
    clip = StandInClipVision()
    unpatched = sample(base, family)
    report: dict = {"finite_unpatched": bool(unpatched.isfinite().all()), "repeat": distance(sample(base, family), unpatched)}

    report["strength0"] = {f"teacher={t}": distance(sample(patch(base, clip, adapters["standard"], 0.0, teacher=t), family), unpatched)
                           for t in (False, True)}
    report["presets"] = {}
    for preset, custom in (("style", ""), ("all up blocks", ""), ("custom", "0, 6")):
        styled = sample(patch(base, clip, adapters["standard"], layers=preset, custom=custom), family)
        report["presets"][preset] = {"finite": bool(styled.isfinite().all()), "change": distance(styled, unpatched)}

    ours = patch(base, clip, adapters["standard"])
    ours_alone = sample(ours, family)
    ip_callback = ImagePromptCallback(optimized_attention)
    ip_alone = sample(ipadapter(base, ip_callback), family)
    orders = {}
    for order in ("ours first", "theirs first"):
        callback = ImagePromptCallback(optimized_attention)
        model = ipadapter(ours, callback) if order == "ours first" else patch(ipadapter(base, callback), clip, adapters["standard"])
        result = sample(model, family)
        attn2 = model.model_options["transformer_options"]["patches_replace"]["attn2"]
        ours_on = {key[:2] for key, patch_ in attn2.items() if isinstance(patch_, CrossAdaINPatch)}
        style_layers = [layer for layer in callback.calls if layer[:2] in ours_on]
        orders[order] = {"finite": bool(result.isfinite().all()), "vs_ours_alone": distance(result, ours_alone),
                         "vs_ip_alone": distance(result, ip_alone), "layers_with_ip": len(callback.calls),
                         "style_layers_with_ip": len(style_layers), "result": result}
    report["ipadapter"] = {
        "layers": len(unet_cross_attention_layers(base.get_model_object("diffusion_model"))),
        "ip_alone_layers": len(ip_callback.calls), "ip_alone_change": distance(ip_alone, unpatched),
        "order_difference": distance(orders["ours first"].pop("result"), orders["theirs first"].pop("result")),
        "ours_unchanged_after_ip_added": distance(sample(ours, family), ours_alone), **orders,
    }

    counted, passes = counting_model(base)
    teacher_results, unet_calls = {}, {}
    for teacher in (False, True):
        before = len(passes)
        teacher_results[teacher] = sample(patch(counted, clip, adapters["standard"], teacher=teacher), family)
        unet_calls[teacher] = len(passes) - before
    before = len(passes)
    sample(patch(counted, clip, adapters["standard"], 0.0, teacher=True), family)
    report["teacher"] = {"unet_calls_off": unet_calls[False], "unet_calls_on": unet_calls[True], "steps": STEPS,
                         "unet_calls_on_at_strength_0": len(passes) - before,
                         "on_vs_off": distance(teacher_results[True], teacher_results[False]),
                         "finite": bool(teacher_results[True].isfinite().all())}

    uncond = {}
    for kind in ("standard", "plus"):
        clip = StandInClipVision()
        result = sample(patch(base, clip, adapters[kind]), family)
        uncond[kind] = {"images_encoded": [list(image.shape) for image in clip.images],
                        "black_image_encoded": any(torch.count_nonzero(image) == 0 for image in clip.images),
                        "finite": bool(result.isfinite().all()), "change": distance(result, unpatched)}
    report["uncond"] = uncond
    return report


def managed_models(folder: Path) -> dict:
    """TextStyleEncode and StyleFuse as ComfyUI runs them; then what ComfyUI's model management holds."""
    siglip = build_tiny_siglip(folder / "tiny-siglip")
    style_mamba = new_style_mamba(tiny_config(style_dim=TINY_EMBED_DIM), text_encoder=str(siglip))
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))}
    # ComfyUI's own name for each managed model of the pack (its log says "Requested to load <name>")
    loaded = lambda: sorted(type(m.model.model).__name__ for m in comfy.model_management.current_loaded_models
                            if isinstance(getattr(m.model.model, "module", None), nn.Module))
    with torch.inference_mode():
        (style,) = TextStyleEncode().encode(style_mamba, "an oil painting by van gogh")
        after_encode = loaded()
        (styled,) = StyleFuse().fuse(style_mamba, latent, style, 1.0)
        after_fuse = loaded()
        again = StyleFuse().fuse(style_mamba, latent, style, 1.0)[0]
        after_again = loaded()
    comfy.model_management.unload_all_models()
    after_unload = loaded()
    with torch.inference_mode():
        reloaded = StyleFuse().fuse(style_mamba, latent, style, 1.0)[0]
    return {"after_encode": after_encode, "after_fuse": after_fuse, "after_second_fuse": after_again, "after_unload": after_unload,
            "after_reload": loaded(), "repeat_difference": distance(again["samples"], styled["samples"]),
            "reload_difference": distance(reloaded["samples"], styled["samples"]),
            "styled_finite": bool(styled["samples"].isfinite().all())}


def main() -> dict:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        folder_paths.add_model_folder_path("ipadapter", str(folder))
        report = {family: family_report(family, folder) for family in UNETS}
        report["managed"] = managed_models(folder)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
