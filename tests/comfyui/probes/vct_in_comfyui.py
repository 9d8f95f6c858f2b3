"""VCT in-process in a real ComfyUI, on tiny SD1.5-shaped models built from ComfyUI's own classes.

Usage (ComfyUI's venv, cwd = ComfyUI root): ``vct_in_comfyui.py``. Last stdout line: one JSON object with the
reconstruction errors of DDIM / null-text inversion, the concept inversion's losses and what CLIPTextEncode made of
the saved file, the attention probabilities the fusion's target stream used, and chaining results.
``tests/comfyui/test_vct_in_comfyui.py`` asserts on it.

The UNet is ComfyUI's ``UNetModel`` in a ``comfy.model_base.BaseModel`` (``supported_models.SD15`` with small channels
but SD1.5's 768-wide context); the CLIP is ComfyUI's ``SD1ClipModel`` + ``SD1Tokenizer`` (the real CLIP-L vocabulary)
with one 768-wide layer, in a ``comfy.sd.CLIP`` whose embedding directory is a temp folder.
An SDXL-shaped UNet (the StyleStudio probe's) checks inversion, null-text and injection with SDXL's ADM vector and
blocks of two transformer layers, on random contexts; a second one with SDXL's text widths (2048-wide context, 2816-wide
ADM) runs concept inversion, content inversion and fusion through ComfyUI's ``SDXLClipModel`` (clip_l + clip_g, 3 layers
each), and SD1.5 and SDXL concept files crossed over between the two CLIPs.
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

import comfy.model_management  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import comfy.sdxl_clip  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.supported_models_base  # noqa: E402
import folder_paths  # noqa: E402
from comfy.ldm.modules.attention import optimized_attention  # noqa: E402
from nodes import CLIPTextEncode  # noqa: E402

PROBES = Path(__file__).resolve().parent
TESTS = PROBES.parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(PROBES))
from collecting_patch import ImagePromptCallback, apply_collecting_patch, ipadapter_keys  # noqa: E402
from stylestudio_in_comfyui import COMMON, UNETS, random_patcher  # noqa: E402

from comfyui_stylemamba.nodes.vct_nodes import (  # noqa: E402
    ComfyEps, VCTConceptInversion, VCTContentInversion, VCTFusion, encode_text, with_attention_control)
from comfyui_stylemamba.stylestudio.layers import unet_cross_attention_layers  # noqa: E402
from comfyui_stylemamba.vct import ddim  # noqa: E402
from comfyui_stylemamba.vct.fusion import NEGATIVE, POSITIVE, Cond, fuse, paper_control  # noqa: E402
from comfyui_stylemamba.vct.tokens import refine_edit  # noqa: E402

WIDTH = 768  # SD1.5's text width: ComfyUI's SD1 tokenizer loads embeddings of exactly this width
LATENT = (1, 4, 8, 8)
STEPS, CFG, INNER = 6, 7.5, 10
CAPTION = "a photo of a red barn"
TINY_CLIP = {"architectures": ["CLIPTextModel"], "bos_token_id": 0, "eos_token_id": 49407, "hidden_act": "quick_gelu",
             "hidden_size": WIDTH, "intermediate_size": 64, "layer_norm_eps": 1e-5, "max_position_embeddings": 77,
             "model_type": "clip_text_model", "num_attention_heads": 4, "num_hidden_layers": 1, "pad_token_id": 1,
             "projection_dim": WIDTH, "vocab_size": 49408}


def tiny_sd15():
    """Two levels (8×8 and 4×4 latent tokens: 64 and 16 queries), one transformer layer per block: 6 layers."""
    config_class, unet_config = UNETS["SD1.5"]
    config = config_class(dict(unet_config, context_dim=WIDTH, num_res_blocks=[1, 1], channel_mult=[1, 2],
                               transformer_depth=[1, 1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1]))
    config.set_inference_dtype(torch.float32, None)
    patcher = random_patcher(config.get_model({}))
    with torch.no_grad():  # a small, smooth ε like a trained model's near its data, so DDIM inversion is nearly exact
        patcher.model.diffusion_model.out[-1].weight.mul_(0.05)
    return patcher


def tiny_clip(folder: Path) -> comfy.sd.CLIP:
    """ComfyUI's SD1.5 CLIP classes with one layer, seeded random weights, embeddings read from ``folder``."""
    config = folder / "tiny_clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    target.params = {"clip_model": comfy.sd1_clip.SDClipModel, "textmodel_json_config": str(config)}
    return randomised(comfy.sd.CLIP(target, embedding_directory=[str(folder)]))


def tiny_sdxl_clip(folder: Path) -> comfy.sd.CLIP:
    """ComfyUI's SDXL CLIP (``SDXLClipModel``: clip_l + clip_g, SDXL's tokenizers) at full width (768 and 1280: the
    tokenizers load embeddings of exactly those widths) but 3 layers each (SDXL reads the penultimate one, which ComfyUI
    wants inside the depth) with a 64-wide MLP, through ComfyUI's own ``<name>_model_config`` overrides: 0.13 G
    parameters, most in the token tables (full size: 0.8 G)."""
    small = {"num_hidden_layers": 3, "intermediate_size": 64}
    target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    options = {"clip_l_model_config": small, "clip_g_model_config": {**small, "num_attention_heads": 4}}
    return randomised(comfy.sd.CLIP(target, embedding_directory=[str(folder)], model_options=options))


def randomised(clip: comfy.sd.CLIP) -> comfy.sd.CLIP:
    """Seeded random weights (ComfyUI's layers are built uninitialised): unit norms, zero biases, N(0, 1/width)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in clip.cond_stage_model.named_parameters():
            if parameter.ndim <= 1:
                parameter.fill_(1.0 if "norm" in name or parameter.ndim == 0 else 0.0)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(parameter.shape[-1]))
    return clip


class StandInVAE:
    """VAE.encode reduced to a fixed function of the picture: a 4-channel 8×8 latent from an (1, 64, 64, 3) image."""

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(image.movedim(-1, 1), 8)  # (1, 3, 8, 8)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], 1) * 4 - 2


def content_latent() -> torch.Tensor:
    """A smooth content latent in VAE units (what VAE Encode outputs)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    return torch.stack([torch.sin(3 * x), torch.cos(2 * y), x * y, x + y])[None] * 3


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean().sqrt())


def reconstruction(model, clip) -> tuple[dict, object]:
    """(a) DDIM inversion + sampling at CFG 1; at CFG 7.5 plain vs null-text inversion through the content node."""
    eps = ComfyEps(model)
    schedule = ddim.DDIMSchedule.from_table(model.get_model_object("model_sampling").sigmas, STEPS)
    x0 = model.model.process_latent_in(content_latent())
    empty = encode_text(clip, model, clip.tokenize(""), LATENT[-2:])
    caption = encode_text(clip, model, clip.tokenize(CAPTION), LATENT[-2:])
    with torch.inference_mode():
        path = ddim.invert(eps, x0, caption, schedule)
        cfg1 = ddim.sample(eps, path[-1], caption, None, schedule, 1.0)
        plain = ddim.sample(eps, path[-1], caption, empty.as_kind(NEGATIVE), schedule, CFG)
        start = time.perf_counter()
        (inversion,) = VCTContentInversion().invert(model, clip, {"samples": content_latent()}, STEPS, CFG, INNER, CAPTION)
        seconds = time.perf_counter() - start
        nulls = [Cond(n, inversion.null_adm, (NEGATIVE,)) for n in inversion.nulls]
        null_text = ddim.sample(eps, inversion.x_t, caption, nulls, schedule, CFG)
    return {"scale": rms(x0, torch.zeros_like(x0)), "cfg1_rms": rms(cfg1, x0), "cfg1_max": distance(cfg1, x0),
            "plain_cfg_rms": rms(plain, x0), "null_text_rms": rms(null_text, x0), "null_text_seconds": round(seconds, 2),
            "same_noise": distance(inversion.x_t, path[-1]), "inner_losses": list(inversion.reconstruction_losses)}, inversion


def concept(model, clip, folder: Path) -> dict:
    """(b) the concept node lowers its loss, never overwrites, and its file works in CLIPTextEncode as embedding:<name>."""
    reference = torch.linspace(0, 1, 64 * 64 * 3).reshape(1, 64, 64, 3) ** 2
    before = {p.name for p in folder.glob("*.safetensors")}
    with torch.inference_mode():
        (first,) = VCTConceptInversion().learn(model, clip, StandInVAE(), reference, "vct_probe", "painting", 3, 8, 2e-2,
                                               0)["result"]
        first_bytes = (folder / f"{first.removeprefix('embedding:')}.safetensors").read_bytes()
        learned = VCTConceptInversion().learn(model, clip, StandInVAE(), reference, "vct_probe", "painting", 3, 1, 2e-2, 0)
        (second,), shown = learned["result"], learned["ui"]["text"]
        with_concept = CLIPTextEncode().encode(clip, f"a photo of {first}")[0][0][0]
        without = CLIPTextEncode().encode(clip, "a photo of")[0][0][0]
        with_word = CLIPTextEncode().encode(clip, "a photo of painting painting painting")[0][0][0]
    from safetensors import safe_open
    with safe_open(str(folder / f"{first.removeprefix('embedding:')}.safetensors"), "pt") as handle:
        meta = json.loads(handle.metadata()["vct"])
        keys = {key: list(handle.get_tensor(key).shape) for key in handle.keys()}
    return {"names": [first, second], "shown": shown,
            "new_files": sorted({p.name for p in folder.glob("*.safetensors")} - before),
            "first_unchanged": (folder / f"{first.removeprefix('embedding:')}.safetensors").read_bytes() == first_bytes,
            "first_loss": meta["first_loss"], "best_loss": meta["best_loss"], "keys": keys,
            "change_vs_prompt": distance(with_concept, without), "change_vs_initializer": distance(with_concept, with_word),
            "concept_shape": list(with_concept.shape)}


class RecordingAttention:
    """ComfyUI's attention, recording softmax(QKᵀ/√d) per batch chunk of every self-attention call (keys = queries)."""

    def __init__(self) -> None:
        self.self_calls: list[tuple[int, list[torch.Tensor]]] = []

    def __call__(self, q, k, v, heads, **kwargs):
        if k.shape[1] == q.shape[1]:
            split = lambda t: t.float().unflatten(-1, (heads, -1)).transpose(1, 2)
            probs = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(q.shape[-1] // heads), -1)
            self.self_calls.append((q.shape[1], list(probs.chunk(4))))
        return optimized_attention(q, k, v, heads, **kwargs)


def streams(model, clip, inversion):
    target = encode_text(clip, model, clip.tokenize("a watercolour painting of a fox"), LATENT[-2:])
    nulls = [Cond(n, None, (NEGATIVE,)) for n in inversion.nulls]
    return target, nulls


def injection(model, clip, inversion) -> dict:
    """(c) off: the target stream is plain sampling; on: its self-attention probabilities are the source's exactly in
    the injected layers and steps (conditional half only), and its own elsewhere."""
    target, nulls = streams(model, clip, inversion)
    eps = ComfyEps(model)
    off = paper_control(STEPS, 0.0, 0.0)
    with torch.inference_mode():
        _, fused_off = fuse(ComfyEps(with_attention_control(model)), inversion.x_t, nulls, inversion.source, target,
                            inversion.schedule, CFG, off)
        plain = ddim.sample(eps, inversion.x_t, target, nulls, inversion.schedule, CFG)
        recorder = RecordingAttention()
        control = paper_control(STEPS, 0.6, 0.0, self_max_tokens=16)
        source_stream, fused_on = fuse(ComfyEps(with_attention_control(model, recorder)), inversion.x_t, nulls,
                                       inversion.source, target, inversion.schedule, CFG, control)
    layers = len(recorder.self_calls) // STEPS
    injected, untouched = [], []
    for index, (tokens, (u_source, u_target, c_source, c_target)) in enumerate(recorder.self_calls):
        step = index // layers
        entry = {"step": step, "tokens": tokens, "cond": distance(c_target, c_source), "uncond": distance(u_target, u_source)}
        (injected if step < control.self_steps[1] and tokens <= 16 else untouched).append(entry)
    return {"off_vs_plain": distance(fused_off, plain), "on_vs_off": distance(fused_on, fused_off),
            "source_vs_content": rms(model.model.process_latent_out(source_stream), content_latent()),
            "layers": layers, "self_steps": list(control.self_steps), "injected": injected, "untouched": untouched}


def chaining(model, clip, inversion) -> dict:
    """(d) an IPAdapter_plus-style attn2 patch applied before or after ours: the same fused result, and both act."""
    target, nulls = streams(model, clip, inversion)
    tokens = clip.tokenize("a watercolour painting of a fox")
    source_ids = [t for t, _ in clip.tokenize("")["l"][0]]
    target_ids = [t for t, _ in tokens["l"][0]]
    edit = refine_edit(source_ids, target_ids, [i in (5, 6) for i in range(len(target_ids))], 0.5)
    control = paper_control(STEPS, 0.6, 0.5, self_max_tokens=16, cross=edit)

    def ipadapter(base):
        patched = base.clone()
        layers = list(unet_cross_attention_layers(patched.get_model_object("diffusion_model")))
        options = patched.model_options["transformer_options"]
        for key in ipadapter_keys(layers):
            options = apply_collecting_patch(options, key, ImagePromptCallback(optimized_attention), optimized_attention, 0.8)
        patched.model_options["transformer_options"] = options
        return patched

    run = lambda m: fuse(ComfyEps(m), inversion.x_t, nulls, inversion.source, target, inversion.schedule, CFG, control)[1]
    with torch.inference_mode():
        ours = run(with_attention_control(model))
        ours_first = run(ipadapter(with_attention_control(model)))
        theirs_first = run(with_attention_control(ipadapter(model)))
        cross_off = fuse(ComfyEps(with_attention_control(model)), inversion.x_t, nulls, inversion.source, target,
                         inversion.schedule, CFG, paper_control(STEPS, 0.6, 0.0, self_max_tokens=16))[1]
    return {"order_difference": distance(ours_first, theirs_first), "ip_effect": distance(ours_first, ours),
            "cross_effect": distance(ours, cross_off), "finite": bool(ours_first.isfinite().all())}


def tiny_sdxl(**sizes):
    """The SDXL-shaped UNet of the StyleStudio probe (blocks of 1 and 2 transformer layers, ADM input), smooth ε;
    ``sizes`` override its config (SDXL's real text widths for a real SDXL CLIP)."""
    config_class, unet_config = UNETS["SDXL"]
    config = config_class(dict(unet_config, **sizes))
    config.set_inference_dtype(torch.float32, None)
    patcher = random_patcher(config.get_model({}))
    with torch.no_grad():
        patcher.model.diffusion_model.out[-1].weight.mul_(0.05)
    return patcher


def sdxl_core() -> dict:
    """(a) and (c) on SDXL: the ADM vector and blocks of several transformer layers (indexed patch keys)."""
    model = tiny_sdxl()
    generator = torch.Generator().manual_seed(8)
    adm = lambda pooled: model.model.encode_adm(pooled_output=pooled, width=64, height=64, crop_w=0, crop_h=0,
                                                target_width=64, target_height=64)
    caption = Cond(torch.randn(1, 7, 32, generator=generator), adm(torch.randn(1, 32, generator=generator)))
    target = Cond(torch.randn(1, 7, 32, generator=generator), adm(torch.randn(1, 32, generator=generator)))
    null = Cond(torch.zeros(1, 7, 32), adm(torch.zeros(1, 32)), (NEGATIVE,))
    eps, schedule = ComfyEps(model), ddim.DDIMSchedule.from_table(model.get_model_object("model_sampling").sigmas, STEPS)
    x0 = model.model.process_latent_in(content_latent())
    with torch.inference_mode():
        path = ddim.invert(eps, x0, caption, schedule)
        cfg1 = ddim.sample(eps, path[-1], caption, None, schedule, 1.0)
        plain = ddim.sample(eps, path[-1], caption, null, schedule, CFG)
        nulls, _ = ddim.null_text_optimise(eps, path, caption, null.context, lambda e: Cond(e, null.adm, (NEGATIVE,)),
                                           schedule, CFG, ddim.NullTextSettings(inner_steps=INNER))
        null_conds = [Cond(n, null.adm, (NEGATIVE,)) for n in nulls]
        null_text = ddim.sample(eps, path[-1], caption, null_conds, schedule, CFG)
        off = fuse(ComfyEps(with_attention_control(model)), path[-1], null_conds, caption, target, schedule, CFG,
                   paper_control(STEPS, 0.0, 0.0))[1]
        plain_target = ddim.sample(eps, path[-1], target, null_conds, schedule, CFG)
        recorder = RecordingAttention()
        fuse(ComfyEps(with_attention_control(model, recorder)), path[-1], null_conds, caption, target, schedule, CFG,
             paper_control(STEPS, 0.6, 0.0, self_max_tokens=16))
    layers = len(recorder.self_calls) // STEPS
    injected = [distance(c_t, c_s) for i, (tokens, (_, _, c_s, c_t)) in enumerate(recorder.self_calls)
                if i // layers < round(0.6 * STEPS) and tokens <= 16]
    attn1 = with_attention_control(model).model_options["transformer_options"]["patches_replace"]["attn1"]
    return {"scale": rms(x0, torch.zeros_like(x0)), "cfg1_rms": rms(cfg1, x0), "plain_cfg_rms": rms(plain, x0),
            "null_text_rms": rms(null_text, x0), "off_vs_plain": distance(off, plain_target), "layers": layers,
            "injected": len(injected), "injected_max_difference": max(injected), "indexed_keys": sum(len(k) == 3 for k in attn1)}


def message(call) -> str:
    """What the user would see from ``call()`` run as a node runs: the error's type and text, or "accepted"."""
    try:
        with torch.inference_mode():
            call()
    except Exception as error:  # noqa: BLE001 - the probe reports what the user would see
        return f"{type(error).__name__}: {error}"
    return "accepted"


SDXL_TEXT = {"context_dim": 768 + 1280, "adm_in_channels": 1280 + 6 * 256}  # clip_l + clip_g; pooled clip_g + sizes


def sdxl_concept(folder: Path, sd15: tuple) -> dict:
    """(e) SDXL concept inversion through ComfyUI's SDXL CLIP: loss, the file's clip_l/clip_g, CLIPTextEncode reading it
    into both encoders, the fusion on it; and what core ComfyUI and our nodes make of SD1.5/SDXL files crossed over."""
    sd15_model, sd15_clip, sd15_inversion, sd15_concept = sd15
    model, clip = tiny_sdxl(**SDXL_TEXT), tiny_sdxl_clip(folder)
    null_text, inversion = reconstruction(model, clip)  # the content node with the SDXL CLIP's conditioning
    reference = torch.linspace(0, 1, 64 * 64 * 3).reshape(1, 64, 64, 3) ** 2
    start = time.perf_counter()
    with torch.inference_mode():
        (name,) = VCTConceptInversion().learn(model, clip, StandInVAE(), reference, "vct_sdxl", "painting", 3, 8, 2e-2,
                                              0)["result"]
    seconds = time.perf_counter() - start
    path = folder / f"{name.removeprefix('embedding:')}.safetensors"
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["vct"])
        keys = {key: list(handle.get_tensor(key).shape) for key in handle.keys()}
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, str(folder / "foreign_sdxl.safetensors"))

    def encode(c, text):
        ((context, extra),) = CLIPTextEncode().encode(c, text)[0]
        return context, extra["pooled_output"]

    with torch.inference_mode():
        (with_concept, pooled_concept), (without, pooled_without) = encode(clip, f"a photo of {name}"), encode(clip, "a photo of")
        # core ComfyUI with crossed files: an SD1.5 file in the SDXL CLIP, an SDXL file in the SD1.5 CLIP
        (sd15_in_xl, _) = encode(clip, f"a photo of {sd15_concept}")
        sdxl_in_15, plain_15 = encode(sd15_clip, f"a photo of {name}")[0], encode(sd15_clip, "a photo of")[0]
        translated, _ = VCTFusion().fuse(model, clip, inversion, name, "a painting of {concept}", 0.9, 0.2, 1024, 0.5)

    fuse_with = lambda m, c, inv, concept: lambda: VCTFusion().fuse(m, c, inv, concept, "{concept}", 0.9, 0.2, 1024, 0.5)
    return {
        "reconstruction": null_text, "seconds": round(seconds, 1), "first_loss": meta["first_loss"],
        "best_loss": meta["best_loss"], "keys": keys,
        "context_shape": list(with_concept.shape),
        "clip_l_change": distance(with_concept[..., :768], without[..., :768]),
        "clip_g_change": distance(with_concept[..., 768:], without[..., 768:]),
        "pooled_change": distance(pooled_concept, pooled_without),
        "translated_finite": bool(translated["samples"].isfinite().all()),
        "core": {"sd15_file_in_sdxl_clip_l_change": distance(sd15_in_xl[..., :768], without[..., :768]),
                 "sd15_file_in_sdxl_clip_g_change": distance(sd15_in_xl[..., 768:], without[..., 768:]),
                 "sdxl_file_in_sd15_clip_change": distance(sdxl_in_15, plain_15)},
        "errors": {
            "sd15_concept_on_sdxl": message(fuse_with(model, clip, inversion, sd15_concept)),
            "sdxl_concept_on_sd15": message(fuse_with(sd15_model, sd15_clip, sd15_inversion, name)),
            "foreign_sdxl_file_on_sd15": message(fuse_with(sd15_model, sd15_clip, sd15_inversion, "embedding:foreign_sdxl")),
            "missing_concept": message(fuse_with(model, clip, inversion, "embedding:no_such_concept")),
            "sd15_clip_with_sdxl_model": message(fuse_with(model, sd15_clip, inversion, "a fox")),
            "sd15_clip_concept_inversion_on_sdxl": message(lambda: VCTConceptInversion().learn(
                model, sd15_clip, StandInVAE(), reference, "x", "painting", 3, 1, 1e-3, 0)),
            "sdxl_clip_content_inversion_on_sd15": message(lambda: VCTContentInversion().invert(
                sd15_model, clip, {"samples": content_latent()}, STEPS, CFG, 0)),
        },
    }


def nodes(model, clip, inversion, concept_name: str) -> dict:
    """The fusion node end to end, and the bad inputs each node must refuse with a clear message."""
    fusion = lambda m=model, inv=inversion, c=concept_name: VCTFusion().fuse(m, clip, inv, c, "a painting of {concept}",
                                                                              0.9, 0.2, 1024, 0.5)
    with torch.inference_mode():
        translated, reconstruction = fusion()
    other = tiny_sd15()
    reference = torch.rand(2, 64, 64, 3)
    nan_latent = {"samples": torch.full(LATENT, float("nan"))}
    return {
        "translated_finite": bool(translated["samples"].isfinite().all()),
        "reconstruction_rms": rms(reconstruction["samples"], content_latent()),
        "translated_vs_content": rms(translated["samples"], content_latent()),
        "errors": {
            "other_model": message(lambda: fusion(m=other)),
            "nan_latent": message(lambda: VCTContentInversion().invert(model, clip, nan_latent, STEPS, CFG, 1)),
            "batch_latent": message(lambda: VCTContentInversion().invert(model, clip, {"samples": torch.zeros(2, 4, 8, 8)},
                                                                         STEPS, CFG, 1)),
            "reference_batch": message(lambda: VCTConceptInversion().learn(model, clip, StandInVAE(), reference, "x",
                                                                           "painting", 3, 1, 1e-3, 0)),
            "bad_name": message(lambda: VCTConceptInversion().learn(model, clip, StandInVAE(), reference[:1], "../x",
                                                                    "painting", 3, 1, 1e-3, 0)),
        },
    }


def main() -> dict:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        folder_paths.folder_names_and_paths["embeddings"] = ([str(folder)], folder_paths.supported_pt_extensions)
        model, clip = tiny_sd15(), tiny_clip(folder)
        report = {}
        timed = lambda name, call: (print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr), call())[1]
        report["reconstruction"], inversion = timed("reconstruction", lambda: reconstruction(model, clip))
        report["concept"] = timed("concept", lambda: concept(model, clip, folder))
        report["injection"] = timed("injection", lambda: injection(model, clip, inversion))
        report["chaining"] = timed("chaining", lambda: chaining(model, clip, inversion))
        report["nodes"] = timed("nodes", lambda: nodes(model, clip, inversion, report["concept"]["names"][0]))
        report["sdxl"] = timed("sdxl", sdxl_core)
        report["sdxl_concept"] = timed("sdxl_concept", lambda: sdxl_concept(
            folder, (model, clip, inversion, report["concept"]["names"][0])))
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
