"""Text styles through a ComfyUI CLIP paired with its CLIP_VISION, in-process, on random-weight stand-ins in the
released files' layouts.

Usage (ComfyUI's venv, cwd = ComfyUI root): ``clip_text_pairs_in_comfyui.py``. Files (in a temporary folder removed
however the probe ends):

- ``clip_l`` as Flux's/SD3.5's ``text_encoders/clip_l.safetensors`` holds it (Hugging Face ``CLIPTextModelWithProjection``
  keys, ``text_projection.weight`` included), full size, loaded by core ``CLIPLoader``;
- the same layout without ``text_projection.weight``: what ComfyUI builds from an SD1.5 or SDXL checkpoint's clip_l
  (an ``SD1ClipModel`` whose projection stays uninitialised);
- ``clip_g`` at full size (SDXL's/SD3.5's 1280-wide, 32-layer tower), for the refusal of a CLIP of another family;
- the ViT-L/14 CLIP_VISION stand-in of the CLIP_VISION probe, and a copy whose ``visual_projection`` is solved by least
  squares so that the six colour pictures' projected features (ComfyUI's vision tower) equal the six colour prompts'
  projected text features (ComfyUI's ``CLIP.encode_from_tokens``): a true pair for the colour probe, written and loaded
  through ``CLIPVisionLoader``.

Measured: TextStyleEncode's style vs transformers' ``CLIPModel.get_text_features`` on the same weights (template-averaged
the same way), each refusal's message and accuracy, and a one-step text fit through TrainStyleMamba with clip and
clip_vision → SaveStyleMamba → LoadStyleMamba → TextStyleEncode → StyleFuse. Last stdout line: one JSON object.
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
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import folder_paths  # noqa: E402
import nodes  # noqa: E402

PROBES = Path(__file__).resolve().parent
sys.path.insert(0, str(PROBES))
import clip_vision_styles_in_comfyui as vision_probe  # noqa: E402
import make_standins  # noqa: E402

from comfyui_stylemamba.nodes import training_nodes  # noqa: E402
from comfyui_stylemamba.nodes.stylemamba_nodes import NEW_MODEL, LoadStyleMamba, StyleFuse, TextStyleEncode  # noqa: E402
from comfyui_stylemamba.stylemamba.encoders import STYLE_TEMPLATES  # noqa: E402
from comfyui_stylemamba.stylemamba.text_towers import ClipPairTextEncoder, text_towers  # noqa: E402
from comfyui_stylemamba.stylemamba.text_vision_pairs import colour_pictures, colour_prompts, measure_colours  # noqa: E402
from comfyui_stylemamba.stylemamba.training.losses import LossWeights  # noqa: E402
from comfyui_stylemamba.stylemamba.vision_towers import clip_vision_encoder  # noqa: E402

#: comfy/sd1_clip_config.json (OpenAI CLIP ViT-L/14's text tower) and comfy/clip_config_bigg.json (OpenCLIP bigG's).
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
              vocab_size=49408, projection_dim=768, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
              vocab_size=49408, projection_dim=1280, hidden_act="gelu")
STYLE, SOURCE = "an oil painting by Van Gogh", "a photo"


def write_text_encoder(folder: Path, name: str, config: dict, seed: int, projection: bool = True) -> str:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    shapes = make_standins.shapes_of(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**config)))
    shapes = {key: shape for key, shape in shapes.items() if "position_ids" not in key and (projection or key != "text_projection.weight")}
    return Path(make_standins.write(folder / name, make_standins.random_weights(shapes, seed))).name


def load_clip(name: str):
    return nodes.CLIPLoader().load_clip(name, "stable_diffusion")[0]


def pooled_image_features(clip_vision) -> torch.Tensor:
    """ComfyUI's vision tower's input to its projection for the colour pictures (its own preprocessing)."""
    seen = []
    handle = clip_vision.model.visual_projection.register_forward_pre_hook(lambda _, inputs: seen.append(inputs[0].float()))
    with torch.no_grad():
        clip_vision_encoder(clip_vision).encode(colour_pictures())
    handle.remove()
    return seen[0]


def comfy_text_features(clip, prompts: list[str]) -> torch.Tensor:
    """ComfyUI's own pooled text output (CLIP.encode_from_tokens, as CLIPTextEncode runs it), through the tower's
    projection: a CLIP loaded as SD1.5's returns the unprojected pooled output (SD1CheckpointClipModel)."""
    projection = clip.cond_stage_model.clip_l.transformer.text_projection
    with torch.no_grad():
        pooled = torch.cat([clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True)[1] for prompt in prompts])
        return projection(pooled.float()).float()


def write_paired_vision(folder: Path, unpaired: Path, clip_vision, clip) -> tuple[str, dict]:
    """The stand-in with its visual projection solved so the colour pictures land on the colour prompts."""
    pooled = pooled_image_features(clip_vision)  # (6, 1024)
    target = comfy_text_features(clip, colour_prompts())  # (6, 768)
    solution = torch.linalg.lstsq(pooled.double(), target.double()).solution.T.float()
    weights = load_file(str(unpaired))
    weights["visual_projection.weight"] = solution.half()  # as the released file stores it
    save_file(weights, str(folder / "clip_vision_l_paired.safetensors"))
    fit = (pooled @ solution.half().float().T - target).norm() / target.norm()
    return "clip_vision_l_paired.safetensors", {"lstsq_relative_residual_fp16": fit.item(),
                                                "pooled_singular_values": torch.linalg.svdvals(pooled).tolist()}


def transformers_style(text_path: Path, vision_path: Path, text: str) -> torch.Tensor:
    """CLIPModel.get_text_features on the same weights, template-averaged as the pack does (unit mean of unit vectors)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    config = CLIPConfig(text_config=CLIP_L, vision_config=make_standins.CLIP_VISION, projection_dim=768)
    model = CLIPModel(config).eval()
    weights = {**load_file(str(text_path)), **{k: v for k, v in load_file(str(vision_path)).items()}}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    assert not unexpected and set(missing) <= {"logit_scale", "text_model.embeddings.position_ids",
                                               "vision_model.embeddings.position_ids"}, (missing, unexpected)
    tokenizer = CLIPTokenizer.from_pretrained(str(Path(nodes.__file__).parent / "comfy" / "sd1_tokenizer"))
    features = []
    with torch.no_grad():
        for template in STYLE_TEMPLATES:
            ids = tokenizer([template.format(text)], return_tensors="pt")["input_ids"]
            output = model.get_text_features(input_ids=ids)
            features.append(F.normalize(getattr(output, "pooler_output", output).float(), dim=-1))
    return F.normalize(torch.cat(features).mean(dim=0, keepdim=True), dim=-1)


def refusal(model, clip_vision, clip) -> dict:
    try:
        with torch.inference_mode():
            TextStyleEncode().encode(model, STYLE, SOURCE, clip_vision=clip_vision, clip=clip)
    except ValueError as error:
        return {"message": str(error)}
    return {"message": None}


def text_fit(clip_vision, clip, content: torch.Tensor) -> dict:
    """A one-step text fit through the pair → save → load → TextStyleEncode → StyleFuse."""
    (vae,) = nodes.VAELoader().load_vae("sd_vae_standin.safetensors")
    with torch.inference_mode():
        (fitted,) = training_nodes.TrainStyleMamba().train(
            vae, content, STYLE, SOURCE, 1, 5e-3, 0, training_nodes.FULL_VAE, vision_probe.SIDE,
            clip_vision=clip_vision, clip=clip)["result"]
        saved = training_nodes.SaveStyleMamba().save(fitted, "probe_clip_pair")["ui"]["text"][0]
        (loaded,) = LoadStyleMamba().load(saved, "from checkpoint", clip_vision=clip_vision)
        (style,) = TextStyleEncode().encode(loaded, STYLE, SOURCE, clip_vision=clip_vision, clip=clip)
        (latent,) = nodes.VAEEncode().encode(vae, content)
        (fused,) = StyleFuse().fuse(loaded, latent, style, 1.0)
    same = all(torch.equal(a, b) for a, b in zip(fitted.model.state_dict().values(), loaded.model.state_dict().values()))
    return {"steps": fitted.training.get("steps_run", 0), "trained_style": fitted.training.get("style"),
            "loaded_encoder": loaded.text_encoder, "round_trip_equal": same, "style_encoder": style.encoder,
            "fused_shape": list(fused["samples"].shape), "fused_finite": bool(torch.isfinite(fused["samples"]).all()),
            "fused_change": (fused["samples"] - latent["samples"]).abs().max().item()}


def run(base: Path) -> dict:
    models = base / "models"
    folder_paths.set_output_directory(str(base / "output"))
    for name in ("clip_vision", "text_encoders", "vae", "stylemamba"):
        folder_paths.folder_names_and_paths[name] = ([str(models / name)], folder_paths.supported_pt_extensions)
    make_standins.write(models / "vae" / "sd_vae_standin.safetensors", make_standins.random_weights(make_standins.vae_shapes(), 2))
    start = time.perf_counter()
    unpaired_path = vision_probe.write_standin(models / "clip_vision", "vit-l-14", seed=20)
    (unpaired,) = nodes.CLIPVisionLoader().load_clip(unpaired_path.name)
    with torch.inference_mode():
        (unpaired_model,) = LoadStyleMamba().load(NEW_MODEL, "from checkpoint", 4, clip_vision=unpaired)
    report = {}
    # first, before any projection of this trunk exists in the process (a freed one could be reused by torch.empty):
    # the same clip_l trunk without its projection, which ComfyUI leaves uninitialised as for an SD1.5 checkpoint
    no_projection = load_clip(write_text_encoder(models / "text_encoders", "sd15_clip_l_standin.safetensors", CLIP_L, 30, False))
    clip_g = load_clip(write_text_encoder(models / "text_encoders", "clip_g_standin.safetensors", CLIP_G, 32))
    report["clip_g_with_vit_l"] = refusal(unpaired_model, unpaired, clip_g) | {
        "towers": [name for name, _ in clip_g.cond_stage_model.named_children()]}
    del clip_g
    (models / "text_encoders" / "clip_g_standin.safetensors").unlink()

    clip_name = write_text_encoder(models / "text_encoders", "clip_l_standin.safetensors", CLIP_L, 30)
    clip = load_clip(clip_name)
    report["unaligned"] = refusal(unpaired_model, unpaired, clip)
    paired_name, solve = write_paired_vision(models / "clip_vision", unpaired_path, unpaired, clip)
    (paired,) = nodes.CLIPVisionLoader().load_clip(paired_name)
    with torch.inference_mode():
        (model,) = LoadStyleMamba().load(NEW_MODEL, "from checkpoint", 4, clip_vision=paired)
        (style,) = TextStyleEncode().encode(model, STYLE, SOURCE, clip_vision=paired, clip=clip)
    reference = transformers_style(models / "text_encoders" / clip_name, models / "clip_vision" / paired_name, STYLE)
    trunk = [c.cond_stage_model.clip_l.transformer.text_model.embeddings.token_embedding.weight for c in (clip, no_projection)]
    report["no_projection"] = refusal(model, paired, no_projection) | {"same_trunk": torch.equal(*trunk)}
    report["pair"] = solve | {
        "probe": vars(measure_colours(clip_vision_encoder(paired).encode, ClipPairTextEncoder("", text_towers(clip)[0]).encode)),
        "clip_towers": [name for name, _ in clip.cond_stage_model.named_children()],
        "clip_dtype": str(next(clip.cond_stage_model.parameters()).dtype),
        "style_encoder": style.encoder, "model_encoder": model.text_encoder,
        "style_norm": style.target.norm().item(), "source_norm": style.source.norm().item(),
        "ours_vs_transformers": vision_probe.relative_error(style.target, reference),
        "style_width": style.target.shape[-1],
    }
    report["fit"] = text_fit(paired, clip, vision_probe.pictures(1))
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def main() -> dict:
    """Stand-ins of about 2.5 GB go to a temporary folder that is removed however the probe ends."""
    with tempfile.TemporaryDirectory(prefix="clip_text_pairs_") as temp:
        return run(Path(temp))


if __name__ == "__main__":
    training_nodes.LossWeights = functools.partial(LossWeights, num_crops=1, masked=0.0)  # full-size towers on 2 CPU cores
    print(json.dumps(main()))
