"""Image styles through ComfyUI's own CLIP_VISION, in-process, on random-weight stand-ins of each family's real file.

Usage (ComfyUI's venv, cwd = ComfyUI root): ``clip_vision_styles_in_comfyui.py FAMILY [FAMILY …]`` with families from
``STANDINS``. Each stand-in is written in the layout its public file has (Hugging Face ``CLIPVisionModelWithProjection``
for the IP-Adapter and XLabs encoders, ``SiglipVisionModel`` for Redux's ``sigclip_vision_patch14_384``) at full size,
since ComfyUI fixes each family's size from a config it picks by layer count. For each family, loaded through
``nodes.CLIPVisionLoader`` with no models/siglip folder and no network:

- what ComfyUI detected and what it returns (``image_embeds`` shape: one vector per image, or tokens),
- our embedding vs ComfyUI's own ``encode_image`` (same model, same pixels), and vs transformers on the same weights,
- the gradient of the style embedding with respect to the picture, through (a copy of) ComfyUI's model, against a
  finite difference,
- with ``fit``: TrainStyleMamba (cut to 1 step and 1 crop: full-size towers on 2 CPU cores) → SaveStyleMamba →
  LoadStyleMamba with the same CLIP_VISION → ImageStyleEncode → StyleFuse; else LoadStyleMamba's new model, saved and
  loaded, with the same styles; plus the refusal of another family's CLIP_VISION,
- CLIPVisionEncode (what IPAdapter nodes run) and ImageStyleEncode on one CLIP_VISION: how often ComfyUI's model
  management lists its weights.

Last stdout line: one JSON object keyed by family.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from pathlib import Path

from comfy.cli_args import args

args.cpu = True

import torch  # noqa: E402

import comfy.model_management  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402

PROBES = Path(__file__).resolve().parent
sys.path.insert(0, str(PROBES))
import make_standins  # noqa: E402

from comfyui_stylemamba.nodes import training_nodes  # noqa: E402
from comfyui_stylemamba.nodes.style_mix_nodes import ImageStyleEncode  # noqa: E402
from comfyui_stylemamba.nodes.stylemamba_nodes import NEW_MODEL, LoadStyleMamba, StyleFuse  # noqa: E402
from comfyui_stylemamba.stylemamba.training.losses import LossWeights  # noqa: E402
from comfyui_stylemamba.stylemamba.vision_towers import clip_vision_encoder, differentiable_copy, tower_identity  # noqa: E402

#: comfy/clip_vision_config_h.json and _g.json (IPAdapter_plus's CLIP-ViT-H-14 and ViT-bigG-14 image encoders).
#: Both use exact GELU (the LAION models; OpenAI's ViT-L uses quick GELU), as ComfyUI's configs and the released config.json say.
CLIP_VISION_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
                     image_size=224, projection_dim=1024, hidden_act="gelu")
CLIP_VISION_G = dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16, patch_size=14,
                     image_size=224, projection_dim=1280, hidden_act="gelu")
#: family -> (file name, transformers class name, config)
STANDINS = {
    "vit-l-14": ("clip_vision_l_standin.safetensors", "CLIPVisionModelWithProjection", make_standins.CLIP_VISION),
    "vit-h-14": ("CLIP-ViT-H-14_standin.safetensors", "CLIPVisionModelWithProjection", CLIP_VISION_H),
    "vit-bigg-14": ("CLIP-ViT-bigG-14_standin.safetensors", "CLIPVisionModelWithProjection", CLIP_VISION_G),
    "siglip-so400m-384": ("sigclip_vision_384_standin.safetensors", "SiglipVisionModel", make_standins.SIGLIP_384),
}
SIDE = 64  # content and style pictures: the towers resize them to their input size anyway


def transformers_model(class_name: str, config: dict) -> torch.nn.Module:
    import transformers

    config_class = transformers.SiglipVisionConfig if class_name.startswith("Siglip") else transformers.CLIPVisionConfig
    return getattr(transformers, class_name)(config_class(**config)).eval()


def write_standin(folder: Path, family: str, seed: int) -> Path:
    name, class_name, config = STANDINS[family]
    shapes = make_standins.shapes_of(lambda: transformers_model(class_name, config))
    if class_name.startswith("Siglip"):  # released files keep SiglipVisionModel's keys under vision_model.
        shapes = {"vision_model." + key.removeprefix("vision_model."): shape for key, shape in shapes.items()}
    make_standins.write(folder / name, make_standins.random_weights(shapes, seed))
    return folder / name


def transformers_embedding(path: Path, family: str, pixels: torch.Tensor) -> torch.Tensor:
    """The same weights through transformers: CLIP's projected ``image_embeds``; SigLIP's post-norm tokens, averaged."""
    from safetensors.torch import load_file

    _, class_name, config = STANDINS[family]
    model = transformers_model(class_name, config)
    stored = load_file(str(path))
    # transformers 5's SiglipVisionModel names its keys without the vision_model. that released files carry
    state = {key: stored[key if key in stored else "vision_model." + key].float() for key in model.state_dict()}
    assert len(state) == len(stored), sorted(set(stored) - {k if k in stored else "vision_model." + k for k in state})
    model.load_state_dict(state)
    with torch.no_grad():
        output = model(pixel_values=pixels)
    return output.image_embeds if class_name.startswith("CLIP") else output.last_hidden_state.mean(dim=1)


def pictures(seed: int, count: int = 1) -> torch.Tensor:
    """Smooth random pictures as a ComfyUI IMAGE (b, H, W, 3)."""
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 3, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(small, size=(SIDE, SIDE), mode="bilinear").movedim(1, -1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def gradient_check(encoder, image: torch.Tensor) -> dict:
    """Autograd through ComfyUI's model (pixels in, style embedding · w out) vs a central difference along a random
    direction of the model's input, and the gradient's norm back at the picture (through the straight-through
    8-bit rounding, which a finite difference on the picture would see as a staircase)."""
    generator = torch.Generator().manual_seed(3)
    picture = image.movedim(-1, 1).clone().requires_grad_(True)
    weights = torch.randn(encoder.encode(picture.detach()).shape[-1], generator=generator)
    (encoder.encode(picture) @ weights).sum().backward()
    pixels = encoder.preprocess(picture.detach()).requires_grad_(True)

    def projected(values: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.normalize(encoder.model(pixel_values=values).pooler_output.float(), dim=-1) @ weights).sum()

    projected(pixels).backward()
    direction = torch.randn(pixels.shape, generator=generator)
    direction /= direction.norm()
    step = 1e-2
    with torch.no_grad():
        difference = (projected(pixels + step * direction) - projected(pixels - step * direction)) / (2 * step)
    return {"gradient_norm": picture.grad.norm().item(), "analytic": (pixels.grad * direction).sum().item(),
            "finite_difference": difference.item()}


def run_family(family: str, folder: Path, fit: bool) -> dict:
    start = time.perf_counter()
    path = write_standin(folder / "models" / "clip_vision", family, seed=20 + list(STANDINS).index(family))
    (clip_vision,) = nodes.CLIPVisionLoader().load_clip(path.name)
    identity = tower_identity(clip_vision)
    content, style_pictures = pictures(1), pictures(2, count=2)
    with torch.inference_mode():
        comfy_output = clip_vision.encode_image(content)
    encoder = clip_vision_encoder(clip_vision)
    with torch.no_grad():
        ours = encoder.encode(content.movedim(-1, 1))
        pixels = encoder.preprocess(content.movedim(-1, 1))
    comfy_embeds = comfy_output["image_embeds"]
    comfy_style = comfy_embeds.mean(dim=1) if comfy_embeds.dim() == 3 else comfy_embeds
    comfy_unit = torch.nn.functional.normalize(comfy_style.float(), dim=-1)
    transformers_unit = torch.nn.functional.normalize(transformers_embedding(path, family, pixels), dim=-1)
    result = {
        "detected": identity.family, "width": identity.width, "fingerprint": identity.fingerprint,
        "weights_dtype": str(next(clip_vision.model.parameters()).dtype),
        "image_embeds_shape": list(comfy_embeds.shape), "tokens_shape": list(comfy_output["last_hidden_state"].shape),
        "ours_vs_comfy": relative_error(ours, comfy_unit),
        "ours_vs_transformers": relative_error(ours, transformers_unit),
        "gradient": gradient_check(differentiable_copy(encoder), content),
    }
    result.update(pipeline(clip_vision, identity, content, style_pictures, fit))
    result["shared_load"] = shared_load(clip_vision, content)
    result["seconds"] = round(time.perf_counter() - start, 1)
    path.unlink()
    return result


def pipeline(clip_vision, identity, content: torch.Tensor, style_pictures: torch.Tensor, fit: bool) -> dict:
    """Style fit (or a new model) → save → load with the CLIP_VISION → ImageStyleEncode → StyleFuse."""
    (vae,) = nodes.VAELoader().load_vae("sd_vae_standin.safetensors")
    with torch.inference_mode():
        if fit:
            (style_mamba,) = training_nodes.TrainStyleMamba().train(
                vae, content, "", "a photo", 1, 5e-3, 0, training_nodes.FULL_VAE, SIDE,
                style_images=style_pictures, clip_vision=clip_vision)["result"]
        else:
            (style_mamba,) = LoadStyleMamba().load(NEW_MODEL, "from checkpoint", 4, clip_vision=clip_vision)
        saved = training_nodes.SaveStyleMamba().save(style_mamba, f"probe_{identity.family}")["ui"]["text"][0]
        (loaded,) = LoadStyleMamba().load(saved, "from checkpoint", clip_vision=clip_vision)
        (style,) = ImageStyleEncode().encode(loaded, style_pictures, content=content, clip_vision=clip_vision)
        (latent,) = nodes.VAEEncode().encode(vae, content)
        (fused,) = StyleFuse().fuse(loaded, latent, style, 1.0)
    same = all(torch.equal(a, b) for a, b in zip(style_mamba.model.state_dict().values(), loaded.model.state_dict().values()))
    return {"fitted": fit, "saved": saved, "loaded_encoder": loaded.text_encoder, "round_trip_equal": same,
            "style_width": style.target.shape[-1], "fused_shape": list(fused["samples"].shape),
            "fused_finite": bool(torch.isfinite(fused["samples"]).all()),
            "fused_change": (fused["samples"] - latent["samples"]).abs().max().item(),
            "train_steps": style_mamba.training.get("steps_run", 0)}


def shared_load(clip_vision, content: torch.Tensor) -> dict:
    """CLIPVisionEncode (as IPAdapter nodes call the CLIP_VISION) then ImageStyleEncode: ComfyUI holds its weights once."""
    comfy.model_management.unload_all_models()
    with torch.inference_mode():
        nodes.CLIPVisionEncode().encode(clip_vision, content, "center")
        (model,) = LoadStyleMamba().load(NEW_MODEL, "from checkpoint", 4, clip_vision=clip_vision)
        ImageStyleEncode().encode(model, content, content=content, clip_vision=clip_vision)
    loaded = comfy.model_management.current_loaded_models
    tower_parameters = {id(p) for p in clip_vision.model.parameters()}
    holding = [entry for entry in loaded if entry.model is not None
               and any(id(p) in tower_parameters for p in entry.model.model.parameters())]
    return {"entries_holding_the_tower": len(holding), "entries": len(loaded),
            "is_comfyuis_patcher": [entry.model is clip_vision.patcher for entry in holding]}


def refusal(folder: Path) -> dict:
    """A model of one family with a CLIP_VISION of another: the error names both."""
    (first,) = nodes.CLIPVisionLoader().load_clip(write_standin(folder / "models" / "clip_vision", "vit-l-14", 40).name)
    other_path = write_standin(folder / "models" / "clip_vision", "siglip-so400m-384", 41)
    (second,) = nodes.CLIPVisionLoader().load_clip(other_path.name)
    with torch.inference_mode():
        (model,) = LoadStyleMamba().load(NEW_MODEL, "from checkpoint", 4, clip_vision=first)
        try:
            ImageStyleEncode().encode(model, pictures(1), content=pictures(1), clip_vision=second)
        except ValueError as error:
            return {"message": str(error)}
    return {"message": None}


def main(families: list[str], fit_families: set[str]) -> dict:
    """Stand-ins of up to 1.6 GB go to a temporary folder that is removed however the probe ends."""
    with tempfile.TemporaryDirectory(prefix="clip_vision_styles_") as temp:
        return run_families(Path(temp), families, fit_families)


def run_families(base: Path, families: list[str], fit_families: set[str]) -> dict:
    folder_paths.set_output_directory(str(base / "output"))
    for name, default in (("clip_vision", "clip_vision"), ("vae", "vae"), ("stylemamba", "stylemamba")):
        folder_paths.folder_names_and_paths[name] = ([str(base / "models" / default)], folder_paths.supported_pt_extensions)
    make_standins.write(base / "models" / "vae" / "sd_vae_standin.safetensors",
                        make_standins.random_weights(make_standins.vae_shapes(), 2))
    report = {family: run_family(family, base, family in fit_families) for family in families}
    report["refusal"] = refusal(base)
    report["siglip_folders"] = folder_paths.folder_names_and_paths.get("siglip", ([], set()))[0]
    return report


if __name__ == "__main__":
    chosen = [name.removesuffix("+fit") for name in sys.argv[1:]]
    fitted = {name.removesuffix("+fit") for name in sys.argv[1:] if name.endswith("+fit")}
    training_nodes.LossWeights = functools.partial(LossWeights, num_crops=1, masked=0.0)  # full-size towers on 2 CPU cores
    print(json.dumps(main(chosen, fitted)))
