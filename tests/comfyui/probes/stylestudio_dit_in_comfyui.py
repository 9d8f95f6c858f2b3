"""StyleStudio (DiT) in-process in a real ComfyUI, on a tiny Flux built from ComfyUI's own classes, with a Redux style model.

Usage (ComfyUI's venv, cwd = ComfyUI root): ``stylestudio_dit_in_comfyui.py``. Last stdout line: one JSON object that
``tests/comfyui/test_stylestudio_dit_in_comfyui.py`` asserts on.

The model is ``comfy.model_base.Flux`` built through ``comfy.supported_models.Flux`` with small widths (2 double and
4 single blocks), sampled with ``comfy.sample``; the style model is ComfyUI's ``ReduxImageEncoder`` in its
``StyleModel``, narrowed to the tiny widths; CLIP vision is a stand-in whose hidden states follow the image (all three
from ``benchmarks/comfy_standins.py``, which the overhead benchmark measures on too).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from comfy.cli_args import args

args.cpu = True

import torch  # noqa: E402

import comfy.sample  # noqa: E402
import comfy.sd  # noqa: E402
import nodes  # noqa: E402
from stylestudio_in_comfyui import counting_model, distance, tiny_unet  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))  # the ComfyUI stand-ins benchmarks share
from comfy_standins import CONTEXT, POOLED, StandInSiglip, image, tiny_flux, tiny_redux  # noqa: E402

import comfyui_stylemamba.stylestudio.dit as dit  # noqa: E402
from comfyui_stylemamba.nodes.stylestudio_dit_nodes import StyleStudioCrossAdaINDiT  # noqa: E402

LATENT = (1, 16, 8, 8)  # 16 image tokens
STEPS, TEXT_TOKENS = 4, 7


def conditioning(seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, TEXT_TOKENS, CONTEXT, generator=generator), {"pooled_output": torch.randn(1, POOLED, generator=generator)}]]


def sample(model, positive, negative, cfg: float = 1.0) -> torch.Tensor:
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, STEPS, cfg, "euler", "simple", positive, negative, torch.zeros(LATENT),
                                   disable_pbar=True, seed=0)


def patch(model, strength=1.0, layers="all blocks", custom="0", teacher=False, negative_image=None, clip=None, redux=None):
    with torch.inference_mode():
        return StyleStudioCrossAdaINDiT().patch(model, conditioning(3), conditioning(4), redux or tiny_redux(), clip or StandInSiglip(),
                                               image(1.0), strength, layers, custom, 0.0, 1.0, teacher, 0.5, negative_image)


class OtherPack:
    """Another pack's DiT block patch: chains to what it displaced, adds to the image stream, and routes attention through
    its own override (as packs with custom attention kernels do), chaining an override already there; counts its calls."""

    def __init__(self, previous=None):
        self.previous, self.calls = previous, 0

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone() deep-copies model_options: keep one counter

    def __call__(self, args, extra):
        earlier = args["transformer_options"].get("optimized_attention_override")

        def override(func, *call_args, **kwargs):
            self.calls += 1
            return earlier(func, *call_args, **kwargs) if earlier is not None else func(*call_args, **kwargs)

        options = {**args["transformer_options"], "optimized_attention_override": override}
        run = self.previous if self.previous is not None else lambda a, e: e["original_block"](a)
        out = dict(run({**args, "transformer_options": options}, extra))
        ramp = torch.linspace(-0.5, 0.5, out["img"].shape[-1], dtype=out["img"].dtype)  # a constant would vanish in the LayerNorms
        out["img"] = out["img"] + ramp
        return out


def other_pack(model, block=("double_block", 1)):
    patched = model.clone()
    previous = patched.model_options["transformer_options"].get("patches_replace", {}).get("dit", {}).get(block)
    pack = OtherPack(previous)
    patched.set_model_patch_replace(pack, "dit", *block)
    return patched, pack


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.float().mean(1), x.float().std(1, correction=0)


def adain_statistics(base) -> dict:
    """Record every cross-modal AdaIN call in the real blocks: shapes, and how far its output's statistics are from the style's."""
    model, positive, negative = patch(base, layers="custom", custom="1, 5")  # double block 1 and single block 3
    return recorded_adain(lambda: sample(model, positive, negative))[0]


def recorded_adain(run) -> tuple[dict, torch.Tensor]:
    """``run()``'s result, and a summary of every cross-modal AdaIN call it made: shapes, and how far each output's
    per-channel statistics are from the style's (and the text's from the style's, to show they moved)."""
    calls = []
    original = dit.cross_modal_adain

    def recorder(text, style, strength=1.0, eps=1e-5):
        out = original(text, style, strength, eps)
        (o_mean, o_std), (s_mean, s_std), (t_mean, _) = channel_stats(out), channel_stats(style), channel_stats(text)
        calls.append({"shape": list(text.shape), "mean_error": distance(o_mean, s_mean), "std_error": distance(o_std, s_std),
                      "text_vs_style_mean": distance(t_mean, s_mean)})
        return out

    dit.cross_modal_adain = recorder
    try:
        result = run()
    finally:
        dit.cross_modal_adain = original
    return {"calls": len(calls), "shapes": sorted({str(c["shape"]) for c in calls}),
            "max_mean_error": max(c["mean_error"] for c in calls), "max_std_error": max(c["std_error"] for c in calls),
            "min_text_vs_style_mean": min(c["text_vs_style_mean"] for c in calls)}, result


def teacher_handover(base) -> dict:
    """One model call through the real wrapper and blocks at a teacher sigma. The teacher's recorded image queries/keys
    must be those of a text-only pass of the unpatched model, and the styled pass's image rows must equal the explicit
    float64 formula with them and the styled pass's own values."""
    model, positive, _ = patch(base, teacher=True, layers="custom", custom="0")
    context, pooled = positive[0][0], positive[0][1]["pooled_output"]
    n_style = context.shape[1] - TEXT_TOKENS
    x = torch.randn(LATENT, generator=torch.Generator().manual_seed(9))
    sigma = torch.tensor([1.0])
    inner = base.model.apply_model
    handed = []
    original = dit.styled_image_attention

    def recorder(q, k, v, txt_len, n, styled, strength, attend=dit.sdpa, teacher_qk=None):
        out = original(q, k, v, txt_len, n, styled, strength, attend, teacher_qk)
        reference = original(*(t.double() for t in (q, k, v)), txt_len, n, styled, strength, dit.sdpa,
                             tuple(t.double() for t in teacher_qk) if teacher_qk is not None else None)
        handed.append({"teacher_qk": teacher_qk, "error": distance(out, reference)})
        return out

    plain_qk = []

    def plain_recorder(func, q, k, v, heads, *args, **kwargs):
        plain_qk.append((q[:, :, TEXT_TOKENS:], k[:, :, TEXT_TOKENS:]))
        return func(q, k, v, heads, *args, **kwargs)

    c = {"c_crossattn": context, "y": pooled, "guidance": torch.tensor([3.5]),
         "transformer_options": {**model.model_options["transformer_options"], "sigmas": sigma, "cond_or_uncond": [0]}}
    dit.styled_image_attention = recorder
    try:
        with torch.inference_mode():
            model.model_options["model_function_wrapper"](inner, {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": [0]})
            plain = {"c_crossattn": context[:, :TEXT_TOKENS], "y": pooled, "guidance": torch.tensor([3.5]),
                     "transformer_options": {"optimized_attention_override": plain_recorder}}
            inner(x, sigma, **plain)
    finally:
        dit.styled_image_attention = original
    blocks = len(plain_qk)
    matches = [distance(h["teacher_qk"][0], p[0]) + distance(h["teacher_qk"][1], p[1])
               for h, p in zip(handed, plain_qk) if h["teacher_qk"] is not None]
    return {"blocks": blocks, "styled_calls": len(handed), "with_teacher": len(matches), "n_style": n_style,
            "max_teacher_vs_text_only_pass": max(matches), "max_formula_error": max(h["error"] for h in handed)}


def message(call) -> str:
    """What ``call()`` raised, as the user would read it (``"no error"`` if nothing)."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the probe reports what the user would read
        return f"{type(error).__name__}: {error}"
    return "no error"


def errors() -> dict:
    flux = tiny_flux()
    return {
        "sdxl_model": message(lambda: patch(tiny_unet("SDXL"))),
        "redux_of_another_family": message(lambda: patch(flux, redux=tiny_redux(context=64))),
        "clip_vision_of_wrong_size": message(lambda: patch(flux, clip=StandInSiglip(width=16))),
        "not_a_redux_model": message(lambda: patch(flux, redux=comfy.sd.StyleModel(torch.nn.Linear(2, 2)))),
    }


def step_seconds(model, positive, negative, repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        sample(model, positive, negative)
        best = min(best, time.perf_counter() - start)
    return best / STEPS


def main() -> dict:
    start = time.perf_counter()
    base = tiny_flux()
    report: dict = {}
    plain_redux = nodes.StyleModelApply().apply_stylemodel(conditioning(3), tiny_redux(), StandInSiglip().encode_image(image(1.0)), 1.0, "multiply")[0]
    model0, positive0, negative0 = patch(base, strength=0.0, teacher=True)
    unpatched = sample(base, positive0, negative0)
    report["same_tokens_as_core_redux"] = bool(torch.equal(plain_redux[0][0], positive0[0][0]))
    report["style_tokens"] = positive0[0][0].shape[1] - TEXT_TOKENS
    report["repeat"] = distance(sample(base, positive0, negative0), unpatched)
    report["strength0"] = {f"teacher={t}": distance(sample(patch(base, 0.0, teacher=t)[0], positive0, negative0), unpatched)
                           for t in (False, True)}
    report["presets"] = {}
    for preset in ("style", "double blocks", "single blocks", "all blocks"):
        styled = sample(*patch(base, layers=preset))
        report["presets"][preset] = {"finite": bool(styled.isfinite().all()), "change": distance(styled, unpatched)}

    report["adain"] = adain_statistics(base)
    report["handover"] = teacher_handover(base)

    counted, passes = counting_model(base)
    teacher = {}
    for on in (False, True):
        before = len(passes)
        result = sample(*patch(counted, teacher=on))
        teacher[f"passes_teacher={on}"] = len(passes) - before
        teacher[f"result_teacher={on}"] = result
    teacher["on_vs_off"] = distance(teacher.pop("result_teacher=True"), teacher.pop("result_teacher=False"))
    report["teacher"] = {**teacher, "steps": STEPS}

    ours, positive, negative = patch(base)
    ours_alone = sample(ours, positive, negative)
    theirs_alone_model, _ = other_pack(base)
    theirs_alone = sample(theirs_alone_model, positive, negative)
    orders = {}
    for order in ("ours first", "theirs first"):
        if order == "ours first":
            model, pack = other_pack(ours)
        else:
            theirs, pack = other_pack(base)
            model = patch(theirs)[0]
        result = sample(model, positive, negative)
        orders[order] = {"vs_ours_alone": distance(result, ours_alone), "vs_theirs_alone": distance(result, theirs_alone),
                         "their_attention_calls": pack.calls, "result": result}
    report["chaining"] = {"order_difference": distance(orders["ours first"].pop("result"), orders["theirs first"].pop("result")),
                          "theirs_alone_change": distance(theirs_alone, unpatched), **orders}

    cfg = {}
    for scale in (1.0, 3.0):
        without = sample(*patch(base), cfg=scale)
        with_negative = sample(*patch(base, negative_image=image(0.2)), cfg=scale)
        cfg[f"cfg={scale:g}"] = {"negative_style_effect": distance(with_negative, without), "finite": bool(with_negative.isfinite().all())}
    report["style_cfg"] = cfg
    report["errors"] = errors()
    report["seconds_per_step"] = {"unpatched": step_seconds(base, positive0, negative0),
                                  "all blocks, no teacher": step_seconds(*patch(base)),
                                  "all blocks, teacher": step_seconds(*patch(base, teacher=True))}
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
