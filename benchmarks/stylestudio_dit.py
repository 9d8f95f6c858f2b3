"""StyleStudio (DiT) on Flux: the per-step overhead on a random-weight Flux, and a block sweep on a real one.

Run in ComfyUI's python with cwd = the ComfyUI root (``PYTHONPATH=.``); both build models with ComfyUI's own classes.

``overhead``: a Flux-shaped model from ``comfy.supported_models.Flux`` with random weights, called once per
step as a sampler calls it at cfg 1 (median of round-robin repeats): CPU seconds per step unpatched, with
StyleStudio, and with StyleStudio and the teacher active on every step; and the bytes the teacher hands
over per call (each block's image queries and keys), measured, beside the same count for Flux.1. With
``--adapter xlabs|instantx`` the style comes from a Flux IP-Adapter file of that layout at the model's widths
instead of Redux, and the plain adapter (strength 0) is measured too.

``sweep``: on a real Flux.1 checkpoint, Redux model and SigLIP, samples the prompt once unstyled and then
with StyleStudio on each block group, and reports per group the style similarity (cosine of SigLIP image
embeddings, styled image vs style image) and the layout kept (SSIM of the grey images, styled vs unstyled).
Groups whose style similarity rises most while SSIM stays high are the DiT analogue of InstantStyle's
style layer. Nothing here has been run on a real checkpoint yet: the presets in ``stylestudio/dit_blocks.py``
are reasoned, not measured.

    PYTHONPATH=. python .../benchmarks/stylestudio_dit.py overhead --width 256 --side 32
    PYTHONPATH=. python .../benchmarks/stylestudio_dit.py overhead --width 256 --side 32 --adapter instantx
    PYTHONPATH=. python .../benchmarks/stylestudio_dit.py sweep --unet flux1-dev.safetensors --clip-l clip_l.safetensors \\
        --t5 t5xxl_fp16.safetensors --vae ae.safetensors --redux flux1-redux-dev.safetensors \\
        --clip-vision sigclip_vision_patch14_384.safetensors --style style.png --prompt "a lighthouse at dusk"
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

GROUPS = {"double 0-6": "0-6", "double 7-12": "7-12", "double 13-18": "13-18", "single 0-9": "19-28",
          "single 10-19": "29-38", "single 20-29": "39-48", "single 30-37": "49-56"}


def overhead(args: argparse.Namespace) -> None:
    import comfy_standins as standins  # sets ComfyUI's --cpu before comfy.model_management loads
    import torch

    import comfy.supported_models
    import comfyui_stylemamba.stylestudio.dit as dit
    from comfyui_stylemamba.nodes.stylestudio_dit_nodes import StyleStudioCrossAdaINDiT
    from dit_overhead import count_handover, print_table, round_robin_medians, seconds_per_call

    torch.set_num_threads(args.threads)  # CPU time of idle-spinning worker threads would count as work on a busy machine
    heads = args.width // 64
    config = comfy.supported_models.Flux({**standins.FLUX, "hidden_size": args.width, "num_heads": heads, "axes_dim": [16, 24, 24],
                                          "context_in_dim": args.context, "depth": args.double, "depth_single_blocks": args.single})
    config.set_inference_dtype(torch.float32, None)
    base = standins.random_patcher(config.get_model({}))
    generator = torch.Generator().manual_seed(3)
    text = [[torch.randn(1, args.text_tokens, args.context, generator=generator),
             {"pooled_output": torch.randn(1, standins.POOLED, generator=generator)}]]
    latent = (1, 16, args.side, args.side)
    handed = count_handover(dit)
    x = torch.randn(latent, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([1.0])  # the teacher is on at every sigma (teacher_end_percent 1.0)

    def per_step(model, positive, negative) -> float:
        """As a sampler calls the model at cfg 1 (calling it directly leaves out ComfyUI's model loading in between)."""
        (context, options), = positive
        c = {"c_crossattn": context, "y": options["pooled_output"], "guidance": torch.tensor([3.5])}
        return seconds_per_call(model, x, sigma, c, [0], args.steps)

    def styled(teacher: bool):
        with torch.inference_mode():
            return StyleStudioCrossAdaINDiT().patch(base, text, text, standins.tiny_redux(context=args.context), standins.StandInSiglip(),
                                                   standins.image(1.0), 1.0, args.layers, "0", 0.0, 1.0, teacher, 1.0)

    if args.adapter == "redux":
        configurations = {"unpatched (plain Redux)": (base, styled(False)[1], text),
                          f"StyleStudio, {args.layers}": styled(False),
                          f"StyleStudio, {args.layers}, teacher on every step": styled(True)}
    else:
        with_adapter = ip_adapter_patcher(args, base)
        configurations = {"unpatched (no adapter)": (base, text, text), "plain IP-Adapter (strength 0)": (with_adapter(0.0, False), text, text),
                          f"StyleStudio, {args.layers}": (with_adapter(1.0, False), text, text),
                          f"StyleStudio, {args.layers}, teacher on every step": (with_adapter(1.0, True), text, text)}
    rows = round_robin_medians({name: lambda c=configuration: per_step(*c) for name, configuration in configurations.items()},
                               args.repeats)
    blocks = args.double + args.single
    flux_bytes = 57 * 2 * 3072 * (args.flux_side // 16) ** 2 * 2
    print(f"# StyleStudio (DiT) overhead, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    style = f"{standins.REDUX_PATCHES} Redux tokens" if args.adapter == "redux" else f"a {args.adapter} IP-Adapter ({args.ip_tokens} tokens)"
    print(f"model: hidden {args.width}, {heads} heads, {args.double} double + {args.single} single blocks; "
          f"{(args.side // 2) ** 2} image tokens, {args.text_tokens} text tokens, {style}; {args.steps} steps, cfg 1\n")
    print_table(rows, "unpatched")
    print(f"\nhand-over per model call: {max(handed) / 2**20:.2f} MiB measured ({blocks} blocks, fp32); "
          f"Flux.1 at {args.flux_side}² in bf16, batch 1: 57 blocks × 2 × 3072 × {(args.flux_side // 16) ** 2} × 2 B "
          f"= {flux_bytes / 2**30:.2f} GiB")


def ip_adapter_patcher(args: argparse.Namespace, base):
    """``with_adapter(strength, teacher) -> MODEL``: the IP-Adapter node with an XLabs or InstantX file at this model's widths."""
    import atexit
    import shutil
    import tempfile

    import comfy_standins as standins
    import torch
    from adapter_layouts import instantx_flux_ip_adapter, xlabs_flux_ip_adapter

    import folder_paths
    from comfyui_stylemamba.nodes.stylestudio_dit_ipadapter_nodes import StyleStudioCrossAdaINDiTIPAdapter

    folder = Path(tempfile.mkdtemp(prefix="stylestudio_dit_bench_"))
    atexit.register(shutil.rmtree, folder, True)  # the adapter files are read when patched; gone when the run ends
    folder_paths.add_model_folder_path("ipadapter", str(folder))
    generator, clip_width = torch.Generator().manual_seed(4), standins.CLIP_WIDTH[args.adapter]
    if args.adapter == "xlabs":
        name = "xlabs.safetensors"
        from safetensors.torch import save_file

        save_file(xlabs_flux_ip_adapter(generator, args.width, args.context, clip_width, args.double, args.ip_tokens), str(folder / name))
    else:
        name = "instantx.bin"
        torch.save(instantx_flux_ip_adapter(generator, args.width, args.context, clip_width, args.double + args.single, args.ip_tokens),
                   folder / name)

    def with_adapter(strength: float, teacher: bool):
        with torch.inference_mode():
            return StyleStudioCrossAdaINDiTIPAdapter().patch(base, name, standins.StandInClipVision(clip_width), standins.image(1.0),
                                                            strength, args.layers, "0", 0.0, 1.0, teacher, 1.0)[0]

    return with_adapter


def sweep(args: argparse.Namespace) -> None:
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = args.device == "cpu"
    import numpy as np
    import torch
    from PIL import Image

    import comfy.clip_vision
    import comfy.sample
    import comfy.sd
    import comfy.utils
    import nodes
    from comfyui_stylemamba.nodes.stylestudio_dit_nodes import StyleStudioCrossAdaINDiT

    model = comfy.sd.load_diffusion_model(args.unet)
    clip = comfy.sd.load_clip([args.clip_l, args.t5], clip_type=comfy.sd.CLIPType.FLUX)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(args.vae))
    redux = comfy.sd.load_style_model(args.redux)
    vision = comfy.clip_vision.load(args.clip_vision)
    style = torch.from_numpy(np.asarray(Image.open(args.style).convert("RGB"), dtype=np.float32) / 255)[None]
    positive = nodes.CLIPTextEncode().encode(clip, args.prompt)[0]
    positive = [[t, {**o, "guidance": args.guidance}] for t, o in positive]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    side = args.side // 8
    noise = torch.randn((1, 16, side, side), generator=torch.Generator().manual_seed(args.seed))

    def render(patched, pos, neg) -> torch.Tensor:
        latent = comfy.sample.sample(patched, noise, args.steps, 1.0, "euler", "simple", pos, neg, torch.zeros_like(noise),
                                     disable_pbar=True, seed=args.seed)
        return vae.decode(latent)

    def embedding(image: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(vision.encode_image(image)["image_embeds"].float(), dim=-1)

    def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
        grey = lambda x: x.mean(-1, keepdim=True).permute(0, 3, 1, 2).float()
        a, b = grey(a), grey(b)
        pool = lambda x: torch.nn.functional.avg_pool2d(x, 7, 1, 3)
        mu_a, mu_b = pool(a), pool(b)
        var_a, var_b, cov = pool(a * a) - mu_a**2, pool(b * b) - mu_b**2, pool(a * b) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        return float(((2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean())

    with torch.inference_mode():
        reference = render(model, positive, negative)
        style_embedding = embedding(style)
        print("| blocks | style similarity | SSIM to unstyled |\n|---|---|---|")
        print(f"| none | {float(embedding(reference) @ style_embedding.T):.3f} | 1.000 |")
        for name, custom in GROUPS.items():
            patched, pos, neg = StyleStudioCrossAdaINDiT().patch(model, positive, negative, redux, vision, style, 1.0, "custom",
                                                                custom, 0.0, 1.0, False, 0.4)
            image = render(patched, pos, neg)
            Image.fromarray((image[0].clamp(0, 1).numpy() * 255).astype(np.uint8)).save(f"sweep_{custom}.png")
            print(f"| {name} | {float(embedding(image) @ style_embedding.T):.3f} | {ssim(image, reference):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tiny = commands.add_parser("overhead")
    tiny.add_argument("--width", type=int, default=256)
    tiny.add_argument("--context", type=int, default=64)
    tiny.add_argument("--double", type=int, default=2)
    tiny.add_argument("--single", type=int, default=4)
    tiny.add_argument("--side", type=int, default=32, help="latent side (image tokens = (side/2)²)")
    tiny.add_argument("--text-tokens", type=int, default=64)
    tiny.add_argument("--steps", type=int, default=4)
    tiny.add_argument("--repeats", type=int, default=5)
    tiny.add_argument("--layers", default="all blocks")
    tiny.add_argument("--threads", type=int, default=1)
    tiny.add_argument("--flux-side", type=int, default=1024, help="image side for the Flux.1 hand-over estimate")
    tiny.add_argument("--adapter", choices=("redux", "xlabs", "instantx"), default="redux",
                      help="where the style comes from: Redux tokens, or an XLabs / InstantX Flux IP-Adapter file")
    tiny.add_argument("--ip-tokens", type=int, default=16, help="IP-Adapter image tokens (XLabs: 4 or 16, InstantX: 128)")
    real = commands.add_parser("sweep")
    for name in ("unet", "clip-l", "t5", "vae", "redux", "clip-vision", "style"):
        real.add_argument(f"--{name}", required=True)
    real.add_argument("--prompt", required=True)
    real.add_argument("--side", type=int, default=1024)
    real.add_argument("--steps", type=int, default=20)
    real.add_argument("--guidance", type=float, default=3.5)
    real.add_argument("--seed", type=int, default=0)
    real.add_argument("--device", default="cuda")
    args = parser.parse_args()
    overhead(args) if args.command == "overhead" else sweep(args)


if __name__ == "__main__":
    main()
