"""StyleStudio (DiT IP-Adapter) on SD3.5 in-process in a real ComfyUI: a tiny MM-DiT from ComfyUI's own classes with InstantX's
SD3.5 IP-Adapter layout at tiny widths.

Usage (ComfyUI's venv, cwd = ComfyUI root): ``stylestudio_mmdit_in_comfyui.py``. Last stdout line: one JSON object that
``tests/comfyui/test_stylestudio_mmdit_in_comfyui.py`` asserts on.

The model is ``comfy.model_base.SD3`` built through ``comfy.supported_models.SD3`` (ComfyUI's MMDiT: 128 wide, 2 heads of
64, 3 joint blocks, the last one ``pre_only``, RMS q/k norm as SD3.5) with random weights and random q/k-norm weights,
sampled with ``comfy.sample`` (real CFG, as SD3.5 runs). The adapter file is the released ``.bin`` layout (nested
``image_proj``/``ip_adapter``) written by ``benchmarks/adapter_layouts.sd35_ip_adapter_layout``; CLIP vision is a stand-in
whose penultimate hidden states follow the image.
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

import comfy.clip_vision  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.ops  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import folder_paths  # noqa: E402
from comfy.ldm.chroma.model import Chroma  # noqa: E402
from stylestudio_dit_in_comfyui import message, other_pack, recorded_adain  # noqa: E402
from stylestudio_in_comfyui import counting_model, distance, tiny_unet  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))  # the ComfyUI stand-ins benchmarks share
from adapter_layouts import sd35_ip_adapter_layout  # noqa: E402
from comfy_standins import (CONTEXT, POOLED, SD3_BLOCKS as BLOCKS, SD3_DEPTH as DEPTH, SD3_FEATURES as FEATURES,  # noqa: E402
                            StandInSiglipHidden, image, tiny_flux, tiny_sd3)

import comfyui_stylemamba.stylestudio.dit as dit  # noqa: E402
from comfyui_stylemamba.nodes.stylestudio_dit_ipadapter_nodes import ADAPTER_WEIGHTS_KEY, StyleStudioCrossAdaINDiTIPAdapter  # noqa: E402
from comfyui_stylemamba.stylestudio import sd3_ip_adapter as sd3  # noqa: E402
from comfyui_stylemamba.stylestudio.dit_blocks import flux_blocks  # noqa: E402
from comfyui_stylemamba.stylestudio.dit_adapters import load_dit_adapter  # noqa: E402

WIDTH, HEADS = 64 * DEPTH, DEPTH  # ComfyUI's MMDiT: 64·depth wide, depth heads of 64
LATENT = (1, 16, 8, 8)  # 16 image tokens
STEPS, TEXT_TOKENS, CFG = 4, 7, 3.0
ADAPTER, NARROW, FLUX_ADAPTER, SDXL_ADAPTER = "sd35-ip-adapter.bin", "sd35-narrow.bin", "flux-ip.bin", "sdxl-ip.bin"


def write_adapters(folder: Path) -> None:
    torch.save(sd35_ip_adapter_layout(WIDTH, HEADS, BLOCKS, FEATURES), folder / ADAPTER)
    torch.save(sd35_ip_adapter_layout(64, 1, BLOCKS, FEATURES), folder / NARROW)
    g = torch.Generator().manual_seed(3)
    flux = {"image_proj": {"proj.0.weight": torch.randn(16, 12, generator=g), "proj.0.bias": torch.zeros(16),
                           "proj.2.weight": torch.randn(16, 16, generator=g), "proj.2.bias": torch.zeros(16),
                           "norm.weight": torch.ones(8), "norm.bias": torch.zeros(8)},
            "ip_adapter": {f"{n}.to_{kv}_ip.weight": torch.randn(32, 8, generator=g) for n in range(2) for kv in "kv"}}
    torch.save(flux, folder / FLUX_ADAPTER)
    sdxl = {"image_proj": {"proj.weight": torch.randn(4 * 2048, 16, generator=g), "proj.bias": torch.zeros(4 * 2048),
                           "norm.weight": torch.ones(2048), "norm.bias": torch.zeros(2048)},
            "ip_adapter": {f"{n}.to_{kv}_ip.weight": torch.randn(8, 2048, generator=g) for n in (1, 3) for kv in "kv"}}
    torch.save(sdxl, folder / SDXL_ADAPTER)


def conditioning(seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, TEXT_TOKENS, CONTEXT, generator=generator), {"pooled_output": torch.randn(1, POOLED, generator=generator)}]]


def sample(model, cfg: float = CFG) -> torch.Tensor:
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", conditioning(3), conditioning(4), torch.zeros(LATENT),
                                   disable_pbar=True, seed=0)


def patch(model, strength=1.0, layers="all blocks", custom="0", teacher=False, negative_image=None, clip=None, file=ADAPTER,
          window=(0.0, 1.0)):
    with torch.inference_mode():
        return StyleStudioCrossAdaINDiTIPAdapter().patch(model, file, clip or StandInSiglipHidden(), image(1.0), strength, layers, custom,
                                                         window[0], window[1], teacher, 0.5, negative_image)[0]


def heads_first(t: torch.Tensor) -> torch.Tensor:
    """SD3's ``(B, L, H·D)`` or ``(B, L, H, D)`` -> ``(B, H, L, D)``."""
    return t.reshape(t.shape[0], t.shape[1], HEADS, -1).transpose(1, 2)


def softmax_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def formula_branch(adapter, features, index: int, attention, q, k, v, timestep) -> tuple[torch.Tensor, torch.Tensor]:
    """InstantX's IP branch ``B`` and its IP-keys-only part ``S`` for the image rows ``(B, H, L, D)``, in float64, written out."""
    tokens, time_emb = sd3.resample(adapter.image_proj, features, timestep.expand(features.shape[0]))
    weights = {key: value.double() for key, value in adapter.blocks[index].items()}
    k_ip, v_ip = sd3.block_keys_values(weights, tokens.flatten(0, 1)[None].double(), time_emb[:1].double())
    norms = (attention.ln_q.weight.detach().double(), attention.ln_k.weight.detach().double())
    return sd3.ip_branch(q.double(), k.double(), v.double(), k_ip, v_ip, weights, norms, softmax_attention)


class ReferenceAdapter:
    """The plain IP-Adapter written out in float64 for every joint block: ``J + B`` on the image rows, ``B`` per CFG half
    from the style image (positive) or zero features (negative), at timestep ``model_sampling.timestep(sigma)``."""

    def __init__(self, base, adapter, features):
        self.sampling, self.adapter, self.features = base.get_model_object("model_sampling"), adapter, features
        self.blocks = base.get_model_object("diffusion_model").joint_blocks

    def patched(self, base):
        model = base.clone()
        for index in range(BLOCKS):
            model.set_model_patch_replace(lambda a, e, i=index: self.block(i, a, e), "dit", "double_block", index)
        return model

    def block(self, index: int, args: dict, extra: dict) -> dict:
        options = args["transformer_options"]
        txt_len, halves = args["txt"].shape[1], options["cond_or_uncond"]
        timestep = self.sampling.timestep(options["sigmas"][:1]).float()

        def override(func, q, k, v, heads, **kwargs):
            out = func(q, k, v, heads, **kwargs)
            chunk = q.shape[0] // len(halves)
            added = []
            for number, half in enumerate(halves):
                rows = slice(number * chunk, (number + 1) * chunk)
                features = self.features if half == 0 else torch.zeros_like(self.features)
                q_, k_, v_ = (heads_first(t[rows])[:, :, txt_len:] for t in (q, k, v))
                added.append(formula_branch(self.adapter, features, index, self.blocks[index].x_block.attn, q_, k_, v_, timestep)[0])
            image_rows = out[:, txt_len:].double() + torch.cat(added).transpose(1, 2).flatten(2)
            return torch.cat((out[:, :txt_len], image_rows.to(out.dtype)), 1)

        return extra["original_block"]({**args, "transformer_options": {**options, "optimized_attention_override": override}})


def strength_zero(base, adapter) -> dict:
    unpatched = sample(base)
    plain = sample(patch(base, 0.0))
    reference = sample(ReferenceAdapter(base, adapter, StandInSiglipHidden().encode_image(image(1.0))["penultimate_hidden_states"]).patched(base))
    return {"repeat": distance(sample(base), unpatched), "plain_vs_unpatched": distance(plain, unpatched),
            "teacher_on_vs_off": distance(sample(patch(base, 0.0, teacher=True)), plain),
            "outside_window_vs_strength0": distance(sample(patch(base, 1.0, window=(1.0, 1.0))), plain),
            "plain_vs_float64_reference": distance(plain, reference)}


def adain_statistics(base) -> dict:
    """Every cross-modal AdaIN call in the real blocks (1 and the pre_only 2): shapes, output statistics vs the style's."""
    model = patch(base, layers="custom", custom="1, 2")
    summary, styled = recorded_adain(lambda: sample(model))
    return {**summary, "finite": bool(styled.isfinite().all())}


def formula_and_handover(base, adapter) -> dict:
    """One model call (CFG batch) through the node's wrapper at a teacher sigma, strength 0.6 on block 1. Recorded in the
    real block: the branch and its style part against InstantX's formula in float64 from the block's own q/k/v, the block's
    image rows against the float64 StyleStudio formula, and the teacher's q/k against the unpatched model's."""
    model = patch(base, 0.6, layers="custom", custom="1", teacher=True)
    features = StandInSiglipHidden().encode_image(image(1.0))["penultimate_hidden_states"]
    sampling = base.get_model_object("model_sampling")
    attention = base.get_model_object("diffusion_model").joint_blocks[1].x_block.attn
    x = torch.randn((2,) + LATENT[1:], generator=torch.Generator().manual_seed(9))
    sigma = torch.tensor([1.0, 1.0])
    context = torch.cat([conditioning(3)[0][0], conditioning(4)[0][0]])
    pooled = torch.cat([conditioning(3)[0][1]["pooled_output"], conditioning(4)[0][1]["pooled_output"]])
    recorded = []
    original = dit.branch_image_attention

    def recorder(q, k, v, txt_len, branch, into_attention, strength, attend=dit.sdpa, teacher_qk=None, style=None):
        recorded.append((q, k, v, txt_len, branch, strength, teacher_qk, style))
        return original(q, k, v, txt_len, branch, into_attention, strength, attend, teacher_qk, style)

    plain_qk = []

    def plain_recorder(func, q, k, v, heads, **kwargs):
        if q.shape[1] == TEXT_TOKENS + 16:
            plain_qk.append((heads_first(q)[:, :, TEXT_TOKENS:], heads_first(k)[:, :, TEXT_TOKENS:]))
        return func(q, k, v, heads, **kwargs)

    halves = [0, 1]
    c = {"c_crossattn": context, "y": pooled,
         "transformer_options": {**model.model_options["transformer_options"], "sigmas": sigma, "cond_or_uncond": halves}}
    inner = base.model.apply_model
    dit.branch_image_attention = recorder
    try:
        with torch.inference_mode():
            model.model_options["model_function_wrapper"](inner, {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": halves})
            inner(x, sigma, c_crossattn=context, y=pooled, transformer_options={"optimized_attention_override": plain_recorder})
    finally:
        dit.branch_image_attention = original
    (q, k, v, txt_len, branch, strength, teacher_qk, style), = recorded
    timestep = sampling.timestep(sigma[:1]).float()
    qi, ki, vi = (t[:, :, txt_len:] for t in (q, k, v))
    branch_errors, style_errors = [], []
    for rows, features_half in ((slice(0, 1), features), (slice(1, 2), torch.zeros_like(features))):
        expected_branch, expected_style = formula_branch(adapter, features_half, 1, attention, qi[rows], ki[rows], vi[rows], timestep)
        branch_errors.append(distance(branch[rows], expected_branch))
        style_errors.append(distance(style[rows], expected_style))
    f64 = lambda t: t.double()  # noqa: E731
    expected_rows = original(f64(q), f64(k), f64(v), txt_len, f64(branch), True, strength, softmax_attention,
                             tuple(map(f64, teacher_qk)), f64(style))
    return {"calls": len(recorded), "strength": strength, "txt_len": txt_len, "max_branch_vs_instantx_formula": max(branch_errors),
            "max_style_vs_formula": max(style_errors), "branch_vs_style": distance(branch, style),
            "rows_vs_float64_formula": distance(original(q, k, v, txt_len, branch, True, strength, dit.sdpa, teacher_qk, style),
                                                expected_rows),
            "teacher_vs_unpatched_pass": distance(teacher_qk[0], plain_qk[1][0]) + distance(teacher_qk[1], plain_qk[1][1]),
            "teacher_vs_other_block": distance(teacher_qk[0], plain_qk[0][0])}


def teacher_passes(base) -> dict:
    counted, passes = counting_model(base)
    out = {}
    results = {}
    for on in (False, True):
        before = len(passes)
        results[on] = sample(patch(counted, teacher=on))
        out[f"passes_teacher={on}"] = len(passes) - before
    return {**out, "steps": STEPS, "on_vs_off": distance(results[True], results[False])}


def chaining(base) -> dict:
    ours_alone = sample(patch(base))
    theirs_alone_model, _ = other_pack(base)
    theirs_alone = sample(theirs_alone_model)
    orders = {}
    results = {}
    for order in ("ours first", "theirs first"):
        if order == "ours first":
            model, pack = other_pack(patch(base))
        else:
            theirs, pack = other_pack(base)
            model = patch(theirs)
        results[order] = sample(model)
        orders[order] = {"vs_ours_alone": distance(results[order], ours_alone), "vs_theirs_alone": distance(results[order], theirs_alone),
                         "their_attention_calls": pack.calls}
    return {"order_difference": distance(results["ours first"], results["theirs first"]),
            "theirs_alone_change": distance(theirs_alone, sample(base)), **orders}


def style_cfg(base) -> dict:
    out = {}
    for scale in (1.0, CFG):
        without = sample(patch(base), cfg=scale)
        with_negative = sample(patch(base, negative_image=image(0.2)), cfg=scale)
        out[f"cfg={scale:g}"] = {"negative_style_effect": distance(with_negative, without), "finite": bool(with_negative.isfinite().all())}
    return out


def medium_like() -> dict:
    """SD3.5 Medium's blocks have a second, image-only attention: it must pass through; the joint one is styled."""
    base = tiny_sd3(x_self_attention=True)
    calls = []
    original = dit.branch_image_attention

    def recorder(*call_args, **kwargs):
        calls.append(call_args[0].shape[2])
        return original(*call_args, **kwargs)

    dit.branch_image_attention = recorder
    try:
        styled = sample(patch(base))
    finally:
        dit.branch_image_attention = original
    return {"styled_calls_per_step": len(calls) / STEPS, "joint_lengths": sorted(set(calls)), "finite": bool(styled.isfinite().all()),
            "change": distance(styled, sample(base))}


def chroma_blocks() -> list:
    """ComfyUI's Chroma (tiny): Flux-shaped, so the Flux block list takes it."""
    chroma = Chroma(in_channels=16, out_channels=16, context_in_dim=32, hidden_size=32, mlp_ratio=4.0, num_heads=2, depth=2,
                    depth_single_blocks=3, axes_dim=[4, 6, 6], theta=10000, patch_size=2, qkv_bias=True, in_dim=64, out_dim=32,
                    hidden_dim=32, n_layers=1, operations=comfy.ops.disable_weight_init)
    return [list(block) for block in flux_blocks(chroma)]


def errors(base) -> dict:
    return {
        "sd35_adapter_on_flux": message(lambda: patch(tiny_flux())),
        "sd35_adapter_on_sdxl": message(lambda: patch(tiny_unet("SDXL"))),
        "flux_adapter_on_sd3": message(lambda: patch(base, file=FLUX_ADAPTER)),
        "sdxl_adapter_on_sd3": message(lambda: patch(base, file=SDXL_ADAPTER)),
        "adapter_of_another_width": message(lambda: patch(base, file=NARROW)),
        "clip_vision_of_wrong_size": message(lambda: patch(base, clip=StandInSiglipHidden(width=16))),
        "single_blocks_preset": message(lambda: patch(base, layers="single blocks")),
    }


def managed_weights(base, folder: Path) -> dict:
    """The adapter's weights under ComfyUI's model management: how often ComfyUI lists the patcher the node attached,
    before sampling and after sampling twice, where its weights sit and what ComfyUI counts for them (vs the file's
    tensors); and what a second StyleStudio DiT node on the same MODEL says."""
    def listed(patchers: list) -> list[int]:
        entries = [loaded.model for loaded in comfy.model_management.current_loaded_models]
        return [sum(entry is patcher for entry in entries) for patcher in patchers]

    model = patch(base)
    attached = model.get_additional_models_with_key(ADAPTER_WEIGHTS_KEY)
    before = listed(attached)
    first, second = sample(model), sample(model)
    after = listed(attached)
    file_bytes = sum(t.numel() * t.element_size() for group in torch.load(folder / ADAPTER).values() for t in group.values())
    return {"attached": len(attached), "listed_before_sampling": before, "listed_after_sampling_twice": after,
            "weights_at": [sorted({f"{p.device} {p.dtype}" for p in patcher.model.parameters()}) for patcher in attached],
            "counted_bytes": [patcher.model_size() for patcher in attached], "file_bytes": file_bytes,
            "twice_equal": bool(torch.equal(first, second)),
            "second_node": message(lambda: patch(patch(base, 0.5)))}


def step_seconds(model, repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        sample(model)
        best = min(best, time.perf_counter() - start)
    return best / STEPS


def main() -> dict:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as temp:
        write_adapters(Path(temp))
        folder_paths.add_model_folder_path("ipadapter", temp)
        base = tiny_sd3()
        adapter = load_dit_adapter(str(Path(temp) / ADAPTER))
        blocks = base.get_model_object("diffusion_model").joint_blocks
        report: dict = {"model": {"blocks": len(blocks), "last_pre_only": bool(blocks[-1].context_block.pre_only),
                                  "layout": adapter.layout}}
        report["strength0"] = strength_zero(base, adapter)
        report["presets"] = {preset: distance(sample(patch(base, layers=preset)), sample(patch(base, 0.0, layers=preset)))
                             for preset in ("style", "double blocks", "all blocks")}
        report["adain"] = adain_statistics(base)
        report["formula"] = formula_and_handover(base, adapter)
        report["teacher"] = teacher_passes(base)
        report["chaining"] = chaining(base)
        report["style_cfg"] = style_cfg(base)
        report["medium_like"] = medium_like()
        report["errors"] = errors(base)
        report["managed_weights"] = managed_weights(base, Path(temp))
        report["chroma_blocks"] = chroma_blocks()
        report["seconds_per_step"] = {"unpatched": step_seconds(base), "plain IP-Adapter (strength 0)": step_seconds(patch(base, 0.0)),
                                      "all blocks, no teacher": step_seconds(patch(base)),
                                      "all blocks, teacher": step_seconds(patch(base, teacher=True))}
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
