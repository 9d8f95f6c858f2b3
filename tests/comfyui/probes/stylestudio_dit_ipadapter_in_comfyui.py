"""StyleStudio (DiT IP-Adapter) in-process in a real ComfyUI, on the tiny Flux of ``stylestudio_dit_in_comfyui.py``, with
XLabs- and InstantX-layout Flux IP-Adapter files at tiny widths (written by ``benchmarks/adapter_layouts.py``'s builders).

Usage (ComfyUI's venv, cwd = ComfyUI root): ``stylestudio_dit_ipadapter_in_comfyui.py``. Last stdout line: one JSON
object that ``tests/comfyui/test_stylestudio_dit_ipadapter_in_comfyui.py`` asserts on.

The plain adapter it compares against is written here, independently of the pack: each block's forward re-done the way
the released ComfyUI ports do it (the block's own modules, the query taken before RoPE, the branch added where the
adapter adds it), with the image tokens projected straight from the file's tensors.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from stylestudio_dit_in_comfyui import (LATENT, STEPS, TEXT_TOKENS, conditioning, message, other_pack, recorded_adain,  # noqa: I001
                                        sample)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import comfy.clip_vision  # noqa: E402
import comfy.ldm.flux.math as flux_math  # noqa: E402
import comfy.model_management  # noqa: E402
import folder_paths  # noqa: E402
from comfy.ldm.flux.layers import apply_mod  # noqa: E402
from adapter_layouts import instantx_flux_ip_adapter, xlabs_flux_ip_adapter  # noqa: E402  (benchmarks/, on sys.path from the Flux probe)
from comfy_standins import CLIP_WIDTH, CONTEXT, HIDDEN, SIGLIP, VIT_L, StandInClipVision, image, tiny_flux  # noqa: E402
from stylestudio_in_comfyui import counting_model, distance, tiny_unet  # noqa: E402

import comfyui_stylemamba.stylestudio.dit as dit  # noqa: E402
from comfyui_stylemamba.nodes.stylestudio_dit_ipadapter_nodes import ADAPTER_WEIGHTS_KEY, StyleStudioCrossAdaINDiTIPAdapter  # noqa: E402

HEADS = 2
FILES = {"xlabs": "flux-ip-adapter-tiny.safetensors", "instantx": "flux1-dev-ip-adapter-tiny.bin"}
BLOCKS = 6  # the tiny Flux: 2 double + 4 single


def write_files(folder: Path) -> dict:
    """The two adapters (tiny widths, real key layouts and containers) and an SDXL one; returns their raw tensors."""
    generator = torch.Generator().manual_seed(21)
    xlabs = xlabs_flux_ip_adapter(generator, HIDDEN, CONTEXT, VIT_L, doubles=2)
    instantx = instantx_flux_ip_adapter(generator, HIDDEN, CONTEXT, SIGLIP, blocks=BLOCKS, tokens=6)
    save_file(xlabs, str(folder / FILES["xlabs"]))
    torch.save(instantx, folder / FILES["instantx"])
    save_file(xlabs_flux_ip_adapter(generator, 2 * HIDDEN, CONTEXT, VIT_L, doubles=2), str(folder / "flux-ip-adapter-wide.safetensors"))
    sdxl = {"image_proj.proj.weight": torch.zeros(4 * 2048, 1280), "image_proj.proj.bias": torch.zeros(4 * 2048),
            "image_proj.norm.weight": torch.ones(2048), "image_proj.norm.bias": torch.zeros(2048),
            "ip_adapter.1.to_k_ip.weight": torch.zeros(640, 2048), "ip_adapter.1.to_v_ip.weight": torch.zeros(640, 2048)}
    save_file(sdxl, str(folder / "ip-adapter_sdxl_vit-h.safetensors"))
    return {"xlabs": xlabs, "instantx": instantx}


def patch(model, layout: str, strength=1.0, layers="all blocks", custom="0", teacher=False, negative_image=None, file=None, clip=None):
    with torch.inference_mode():
        return StyleStudioCrossAdaINDiTIPAdapter().patch(
            model, file or FILES[layout], clip or StandInClipVision(CLIP_WIDTH[layout]), image(1.0), strength, layers, custom,
            0.0, 1.0, teacher, 0.5, negative_image)[0]


# --- the plain adapter, as the released ports compute it ---------------------------------------------------------

def reference_tokens(layout: str, raw: dict) -> torch.Tensor:
    embeds = StandInClipVision(CLIP_WIDTH[layout]).encode_image(image(1.0))["image_embeds"]
    if layout == "xlabs":
        p = {k.removeprefix("ip_adapter_proj_model."): v for k, v in raw.items() if k.startswith("ip_adapter_proj_model.")}
        flat = F.linear(embeds, p["proj.weight"], p["proj.bias"])
    else:
        p = raw["image_proj"]
        flat = F.linear(F.gelu(F.linear(embeds, p["proj.0.weight"], p["proj.0.bias"])), p["proj.2.weight"], p["proj.2.bias"])
    return F.layer_norm(flat.reshape(1, -1, CONTEXT), (CONTEXT,), p["norm.weight"], p["norm.bias"], 1e-5)


def reference_kv(layout: str, raw: dict, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block ``index``'s (K_ip, V_ip) as ``(1, heads, N, D)``: XLabs' biased projections, InstantX's RMS-normed ones."""
    tokens = reference_tokens(layout, raw)
    heads = lambda x: x.unflatten(-1, (HEADS, -1)).transpose(1, 2)
    if layout == "xlabs":
        w = lambda kv, part: raw[f"double_blocks.{index}.processor.ip_adapter_double_stream_{kv}_proj.{part}"]
        return tuple(heads(F.linear(tokens, w(kv, "weight"), w(kv, "bias"))) for kv in "kv")
    rms = lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    return tuple(rms(heads(F.linear(tokens, raw["ip_adapter"][f"{index}.to_{kv}_ip.weight"]))) for kv in "kv")


def ip_attention(query: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    k, v = (t.to(query.dtype).expand(query.shape[0], -1, -1, -1) for t in kv)
    return F.scaled_dot_product_attention(query, k, v).transpose(1, 2).flatten(2)


def reference_double(block, args: dict, kv, layout: str) -> dict:
    img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)

    def qkv(stream, norm, attn, mod):
        q, k, v = attn.qkv(apply_mod(norm(stream), 1 + mod.scale, mod.shift)).unflatten(-1, (3, HEADS, -1)).permute(2, 0, 3, 1, 4)
        return (*attn.norm(q, k, v), v)

    img_q, img_k, img_v = qkv(img, block.img_norm1, block.img_attn, img_mod1)
    txt_q, txt_k, txt_v = qkv(txt, block.txt_norm1, block.txt_attn, txt_mod1)
    attn = flux_math.attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2), pe=pe)
    txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
    branch = ip_attention(img_q, kv)  # the query before RoPE
    if layout == "instantx":
        img_attn = img_attn + branch
    img = img + apply_mod(block.img_attn.proj(img_attn), img_mod1.gate)
    img = img + apply_mod(block.img_mlp(apply_mod(block.img_norm2(img), 1 + img_mod2.scale, img_mod2.shift)), img_mod2.gate)
    txt = txt + apply_mod(block.txt_attn.proj(txt_attn), txt_mod1.gate)
    txt = txt + apply_mod(block.txt_mlp(apply_mod(block.txt_norm2(txt), 1 + txt_mod2.scale, txt_mod2.shift)), txt_mod2.gate)
    if layout == "xlabs":
        img = img + branch  # after the block
    return {"img": img, "txt": txt}


def reference_single(block, args: dict, kv) -> dict:
    x, vec, pe = args["img"], args["vec"], args["pe"]
    mod, _ = block.modulation(vec)
    qkv, mlp = torch.split(block.linear1(apply_mod(block.pre_norm(x), 1 + mod.scale, mod.shift)), [3 * HIDDEN, block.mlp_hidden_dim], -1)
    q, k, v = qkv.unflatten(-1, (3, HEADS, -1)).permute(2, 0, 3, 1, 4)
    q, k = block.norm(q, k, v)
    attn = flux_math.attention(q, k, v, pe=pe) + ip_attention(q, kv)  # every row, text included
    return {"img": x + apply_mod(block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2)), mod.gate)}


def reference_adapter(base, layout: str, raw: dict):
    """The plain adapter on every block it has weights for, as dit replace patches that redo the block."""
    model = base.clone()
    flux = model.get_model_object("diffusion_model")
    blocks = [("double_block", i) for i in range(len(flux.double_blocks))]
    if layout == "instantx":
        blocks += [("single_block", i) for i in range(len(flux.single_blocks))]
    for index, (kind, i) in enumerate(blocks):
        kv = reference_kv(layout, raw, index)
        if kind == "double_block":
            run = lambda args, extra, block=flux.double_blocks[i], kv=kv: reference_double(block, args, kv, layout)
        else:
            run = lambda args, extra, block=flux.single_blocks[i], kv=kv: reference_single(block, args, kv)
        model.set_model_patch_replace(run, "dit", kind, i)
    return model


# --- measurements -----------------------------------------------------------------------------------------------

def one_call(model, sigma: float = 0.8) -> torch.Tensor:
    """One model call through ComfyUI's apply_model (with the function wrapper) at ``sigma``."""
    positive = conditioning(3)
    x = torch.randn(LATENT, generator=torch.Generator().manual_seed(9))
    options = {**model.model_options["transformer_options"], "cond_or_uncond": [0], "sigmas": torch.tensor([sigma])}
    c = {"c_crossattn": positive[0][0], "y": positive[0][1]["pooled_output"], "guidance": torch.tensor([3.5]),
         "transformer_options": options}
    apply = model.model.apply_model
    wrapper = model.model_options.get("model_function_wrapper")
    with torch.inference_mode():
        if wrapper is None:
            return apply(x, torch.tensor([sigma]), **c)
        return wrapper(apply, {"input": x, "timestep": torch.tensor([sigma]), "c": c, "cond_or_uncond": [0]})


def unrope_error(base) -> float:
    """Undoing RoPE on the queries the attention override gets, against the pre-RoPE queries the block computed."""
    flux = base.get_model_object("diffusion_model")
    before, after = [], []
    hooks = [block.img_attn.norm.register_forward_hook(lambda m, i, out: before.append(out[0])) for block in flux.double_blocks]
    hooks += [block.norm.register_forward_hook(lambda m, i, out: before.append(out[0])) for block in flux.single_blocks]

    def recording_block(args, extra):
        def override(func, q, k, v, heads, *rest, **kwargs):
            after.append(dit.unrope(q[:, :, -16:], args["pe"][:, :, -16:]))  # the 16 image tokens
            return func(q, k, v, heads, *rest, **kwargs)
        return extra["original_block"]({**args, "transformer_options": {**args["transformer_options"], "optimized_attention_override": override}})

    model = base.clone()
    for kind, count in (("double_block", len(flux.double_blocks)), ("single_block", len(flux.single_blocks))):
        for i in range(count):
            model.set_model_patch_replace(recording_block, "dit", kind, i)
    try:
        one_call(model)
    finally:
        for hook in hooks:
            hook.remove()
    return max(distance(a, b[:, :, -16:]) for a, b in zip(after, before))


def adain_statistics(base, layout: str) -> dict:
    model = patch(base, layout, layers="custom", custom="1, 5")  # double block 1 and single block 3
    return recorded_adain(lambda: sample(model, conditioning(3), conditioning(4)))[0]


def teacher_handover(base, layout: str) -> dict:
    """One call at a teacher sigma: the teacher's image queries/keys are those of the model without the adapter, and the
    styled pass's image rows equal the float64 formula with them."""
    model = patch(base, layout, teacher=True, layers="custom", custom="0")
    handed, plain_qk = [], []
    original = dit.branch_image_attention

    def recorder(q, k, v, txt_len, branch, into, strength, attend=dit.sdpa, teacher_qk=None, *rest):
        out = original(q, k, v, txt_len, branch, into, strength, attend, teacher_qk, *rest)
        double = lambda t: None if t is None else (tuple(x.double() for x in t) if isinstance(t, tuple) else t.double())
        reference = original(*(t.double() for t in (q, k, v)), txt_len, branch.double(), into, strength, dit.sdpa,
                             double(teacher_qk), *(double(r) for r in rest))
        handed.append({"teacher_qk": teacher_qk, "error": distance(out, reference)})
        return out

    def plain_recorder(func, q, k, v, heads, *args, **kwargs):
        plain_qk.append((q[:, :, TEXT_TOKENS:], k[:, :, TEXT_TOKENS:]))
        return func(q, k, v, heads, *args, **kwargs)

    dit.branch_image_attention = recorder
    try:
        one_call(model)
    finally:
        dit.branch_image_attention = original
    plain = base.clone()
    plain.model_options["transformer_options"]["optimized_attention_override"] = plain_recorder
    one_call(plain)
    matches = [distance(h["teacher_qk"][0], p[0]) + distance(h["teacher_qk"][1], p[1])
               for h, p in zip(handed, plain_qk) if h["teacher_qk"] is not None]
    return {"blocks": len(plain_qk), "styled_calls": len(handed), "with_teacher": len(matches),
            "max_teacher_vs_no_adapter_pass": max(matches), "max_formula_error": max(h["error"] for h in handed)}


def chaining(base, layout: str, unpatched: torch.Tensor) -> dict:
    positive, negative = conditioning(3), conditioning(4)
    ours_alone = sample(patch(base, layout), positive, negative)
    theirs_model, _ = other_pack(base)
    theirs_alone = sample(theirs_model, positive, negative)
    orders = {}
    for order in ("ours first", "theirs first"):
        if order == "ours first":
            model, pack = other_pack(patch(base, layout))
        else:
            theirs, pack = other_pack(base)
            model = patch(theirs, layout)
        result = sample(model, positive, negative)
        orders[order] = {"vs_ours_alone": distance(result, ours_alone), "vs_theirs_alone": distance(result, theirs_alone),
                         "their_attention_calls": pack.calls, "result": result}
    return {"order_difference": distance(orders["ours first"].pop("result"), orders["theirs first"].pop("result")),
            "theirs_alone_change": distance(theirs_alone, unpatched), **orders}


def managed_kv(base, layout: str, raw: dict) -> dict:
    """The style keys/values under ComfyUI's model management: how often ComfyUI lists the patcher the node attached, before
    sampling and after sampling twice, where its tensors sit and the bytes ComfyUI counts for it, against the keys/values
    the reference projects in the MODEL's dtype (one copy without a negative style image, the halves' own with one)."""
    model = patch(base, layout)
    attached = model.get_additional_models_with_key(ADAPTER_WEIGHTS_KEY)
    loaded = lambda: [sum(entry.model is patcher for entry in comfy.model_management.current_loaded_models) for patcher in attached]
    before = loaded()
    first = sample(model, conditioning(3), conditioning(4))
    second = sample(model, conditioning(3), conditioning(4))
    blocks = BLOCKS if layout == "instantx" else len(base.get_model_object("diffusion_model").double_blocks)
    elements = sum(t.numel() for index in range(blocks) for t in reference_kv(layout, raw, index))
    with_negative = patch(base, layout, negative_image=image(0.2)).get_additional_models_with_key(ADAPTER_WEIGHTS_KEY)
    return {"attached": len(attached), "listed_before_sampling": before, "listed_after_sampling_twice": loaded(),
            "weights_at": [sorted({f"{p.device} {p.dtype}" for p in patcher.model.parameters()}) for patcher in attached],
            "counted_bytes": [patcher.model_size() for patcher in attached],
            "kv_bytes": elements * torch.empty((), dtype=base.model_dtype()).element_size(),
            "counted_bytes_with_negative_image": [patcher.model_size() for patcher in with_negative],
            "twice_equal": bool(torch.equal(first, second)), "finite": bool(first.isfinite().all())}


def step_seconds(model, repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        sample(model, conditioning(3), conditioning(4))
        best = min(best, time.perf_counter() - start)
    return best / STEPS


def layout_report(base, layout: str, raw: dict, unpatched: torch.Tensor) -> dict:
    report: dict = {}
    reference = reference_adapter(base, layout, raw)
    plain = patch(base, layout, strength=0.0)
    report["strength0_vs_reference_one_call"] = distance(one_call(plain), one_call(reference))
    plain_sampled = sample(plain, conditioning(3), conditioning(4))
    report["strength0_vs_reference_sampled"] = distance(plain_sampled, sample(reference, conditioning(3), conditioning(4)))
    report["strength0_teacher_on_vs_off"] = distance(sample(patch(base, layout, strength=0.0, teacher=True), conditioning(3),
                                                            conditioning(4)), plain_sampled)
    report["plain_adapter_change"] = distance(plain_sampled, unpatched)
    report["presets"] = {}
    for preset in ("style", "double blocks", "single blocks", "all blocks"):
        try:
            styled = sample(patch(base, layout, layers=preset), conditioning(3), conditioning(4))
            report["presets"][preset] = {"finite": bool(styled.isfinite().all()), "vs_plain_adapter": distance(styled, plain_sampled)}
        except Exception as error:  # noqa: BLE001 - XLabs has no single-block weights: the probe reports the message
            report["presets"][preset] = f"{type(error).__name__}: {error}"
    report["adain"] = adain_statistics(base, layout)
    report["handover"] = teacher_handover(base, layout)
    counted, passes = counting_model(base)
    teacher = {}
    for on in (False, True):
        before = len(passes)
        result = sample(patch(counted, layout, teacher=on), conditioning(3), conditioning(4))
        teacher[f"passes_teacher={on}"] = len(passes) - before
        teacher[f"result_teacher={on}"] = result
    teacher["on_vs_off"] = distance(teacher.pop("result_teacher=True"), teacher.pop("result_teacher=False"))
    report["teacher"] = {**teacher, "steps": STEPS}
    report["chaining"] = chaining(base, layout, unpatched)
    cfg = {}
    for scale in (1.0, 3.0):
        without = sample(patch(base, layout), conditioning(3), conditioning(4), cfg=scale)
        with_negative = sample(patch(base, layout, negative_image=image(0.2)), conditioning(3), conditioning(4), cfg=scale)
        cfg[f"cfg={scale:g}"] = {"negative_style_effect": distance(with_negative, without), "finite": bool(with_negative.isfinite().all())}
    report["style_cfg"] = cfg
    report["managed_kv"] = managed_kv(base, layout, raw)
    report["seconds_per_step"] = {"unpatched": step_seconds(base), "plain adapter": step_seconds(plain),
                                  "all blocks, no teacher": step_seconds(patch(base, layout)),
                                  "all blocks, teacher": step_seconds(patch(base, layout, teacher=True))}
    return report


def errors() -> dict:
    flux = tiny_flux()
    return {
        "sdxl_model": message(lambda: patch(tiny_unet("SDXL"), "xlabs")),
        "sdxl_adapter_on_flux": message(lambda: patch(flux, "xlabs", file="ip-adapter_sdxl_vit-h.safetensors")),
        "clip_vision_of_wrong_size": message(lambda: patch(flux, "xlabs", clip=StandInClipVision(SIGLIP))),
        "adapter_for_a_wider_model": message(lambda: patch(flux, "xlabs", file="flux-ip-adapter-wide.safetensors")),
        "xlabs_with_single_blocks_only": message(lambda: patch(flux, "xlabs", layers="single blocks")),
    }


def main() -> dict:
    start = time.perf_counter()
    base = tiny_flux()
    report: dict = {}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        folder_paths.add_model_folder_path("ipadapter", str(folder))
        raw = write_files(folder)
        unpatched = sample(base, conditioning(3), conditioning(4))
        report["unrope_max_error"] = unrope_error(base)
        for layout in FILES:
            report[layout] = layout_report(base, layout, raw[layout], unpatched)
        report["errors"] = errors()
        report["managed_kv_bf16"] = managed_kv(tiny_flux(torch.bfloat16), "instantx", raw["instantx"])
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
