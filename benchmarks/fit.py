"""Iterations per second of a per-style StyleMamba fit against the CLIPstyler baseline, in one run.

Both train on the same photo, prompt direction, SigLIP image encoder and loss weights (CLIPstyler's
defaults: global + 64 thresholded patch crops + content + TV; StyleMamba adds its masked and
second-order terms). StyleMamba decodes its latent through the real TAEF2 decoder every step;
CLIPstyler runs its StyleNet in pixel space. Throughput is measured after one warm-up step.

Real SigLIP weights are not reachable from the project machines, so the encoder is a SigLIP with
random weights: ``--encoder tiny`` (2 layers, 32 px, 32-d: isolates everything but the encoder)
or ``--encoder base`` (SigLIP-base/16-224's exact shape: the real per-step compute). Random
weights change the loss values, not the time per step. ``--siglip FOLDER`` uses real weights.

``--decoder`` picks what the fit decodes through: the real TAEF2 (default), an SD-VAE-sized
AutoencoderKL (random weights: SD's exact decoder compute) or its TAESD-shaped tiny proxy. On a
GPU the per-step and whole-fit figures are wall-clock (the device drained at each step's loss);
on a CPU they are process CPU time, which other jobs on a shared machine do not stretch.

    python benchmarks/fit.py                                  # tiny encoder, 256 px, CPU
    python benchmarks/fit.py --encoder base --iterations 3    # real SigLIP-base cost per step
    python benchmarks/fit.py --device cuda --size 512 --encoder base --decoder sd-vae
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from comfyui_stylemamba.stylemamba.checkpoint import new_style_mamba
from comfyui_stylemamba.stylemamba.training.clipstyler import (
    ClipStylerSettings, StyleNet, clipstyler_losses, synchronize, train_clipstyler,
)
from comfyui_stylemamba.stylemamba.config import StyleMambaConfig
from comfyui_stylemamba.stylemamba.encoders import ImageEncoder, TextEncoder
from comfyui_stylemamba.stylemamba.training.fit import FitSettings, StyleObjective, fit_style
from comfyui_stylemamba.stylemamba.images import load_image, square
from comfyui_stylemamba.stylemamba.training.losses import LossWeights
from comfyui_stylemamba.stylemamba.style import StyleEmbedding, encode_text_style
from comfyui_stylemamba.stylemamba.training.taesd import (
    FAMILIES, TinyAutoencoder, build_decoder, build_encoder, load_tiny_autoencoder,
)
from comfyui_stylemamba.stylemamba.vae import DiffusersVAE

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"

#: Vision-tower shapes of the random SigLIPs: (hidden, intermediate, layers, heads, image size, patch).
ENCODERS = {"tiny": (32, 64, 2, 2, 32, 8), "base": (768, 3072, 12, 12, 224, 16)}

#: Full-VAE shapes (diffusers AutoencoderKL arguments) of the two latent families.
FULL_VAES = {
    "sd15": dict(latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2),
    "flux2": dict(latent_channels=32, block_out_channels=(128, 256, 512, 512), layers_per_block=2),
}

#: ``--decoder`` choices: what each one is, for the printed header.
DECODERS = {
    "taef2": "TAEF2 (real weights, 32-channel Flux.2 latents)",
    "sd-vae": "AutoencoderKL at SD's VAE shape (random weights, 4-channel latents)",
    "taesd": "TAESD-shaped tiny autoencoder (random weights, 4-channel latents), the SD VAE's fast proxy",
}


def full_vae(family: str) -> DiffusersVAE:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = len(FULL_VAES[family]["block_out_channels"])
    model = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks, **FULL_VAES[family]
    )
    return DiffusersVAE(f"random AutoencoderKL ({family} shape)", model.eval().requires_grad_(False))


def tiny_autoencoder(family: str, taef2: Path = ASSETS / "taef2") -> TinyAutoencoder:
    """TAEF2 with its real weights from ``taef2``, or a TAESD-shaped one with random weights for SD."""
    if family == "flux2":
        return load_tiny_autoencoder(taef2 / "taef2_decoder.pth", taef2 / "taef2_encoder.pth")
    torch.manual_seed(0)
    return TinyAutoencoder(FAMILIES["taesd"], build_decoder(4).eval(), build_encoder(4).eval()).requires_grad_(False)


def load_decoder(kind: str, taef2: Path, device: str) -> TinyAutoencoder | DiffusersVAE:
    """The autoencoder a ``--decoder`` choice names, on ``device``: encodes the content, decodes every step."""
    if kind == "sd-vae":
        vae = full_vae("sd15")
        vae.model.to(device)
        return vae
    return tiny_autoencoder("flux2" if kind == "taef2" else "sd15", taef2).to(device)


def random_siglip(kind: str) -> ImageEncoder:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    hidden, intermediate, layers, heads, size, patch = ENCODERS[kind]
    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, image_size=size, patch_size=patch,
    )
    model = SiglipVisionModel(config).eval().requires_grad_(False)
    return ImageEncoder(f"random-siglip-{kind}", model, size, (0.5,) * 3, (0.5,) * 3)


def random_style(dim: int) -> StyleEmbedding:
    """A fixed random text direction: with random encoder weights any direction is as good."""
    generator = torch.Generator().manual_seed(1)
    target, source = F.normalize(torch.randn(2, dim, generator=generator), dim=-1).chunk(2)
    return StyleEmbedding(target=target, source=source, description="benchmark style", encoder="random")


class StepTimer:
    """Callback recording when each step ended, in wall and process-CPU time; the first step is warm-up.

    CPU seconds per step are the robust number on a shared machine: other processes stretch
    the wall clock, not the work this process does (exactly so with ``--threads 1``).
    """

    def __init__(self, total: int, label: str):
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.bar = tqdm(total=total, desc=label, unit="it")

    def __call__(self, step: int, loss: float, *_: object) -> bool:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.bar.update()
        self.bar.set_postfix(loss=f"{loss:.1f}")
        return False

    def seconds_per_iteration(self) -> tuple[float, float]:
        """(wall, CPU) seconds per step after the warm-up step."""
        self.bar.close()
        steps = len(self.wall) - 1
        return (self.wall[-1] - self.wall[0]) / steps, (self.cpu[-1] - self.cpu[0]) / steps


def forward_backward_seconds(run, device: str, repeats: int = 3) -> float:
    """Median seconds of ``run().sum().backward()``, one differentiable stage's cost per step: process
    CPU time on a CPU, wall time with the device drained on a GPU (where CPU time only counts launches)."""
    cuda = torch.device(device).type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        run().sum().backward()
        synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def stage_costs(
    config: StyleMambaConfig, tae, decoder: str, image_encoder: ImageEncoder, style: StyleEmbedding, content: torch.Tensor,
    weights: LossWeights, device: str,
) -> dict[str, float]:
    """Where a step's time goes: each differentiable stage of both methods timed on its own."""
    latents = tae.encode(content).detach().requires_grad_()
    model = new_style_mamba(config).model.to(device).train().requires_grad_(True)
    condition = style.target.to(device)
    with torch.no_grad():
        reference = tae.decode(latents)
    images = reference.clone().requires_grad_()
    objective = StyleObjective(image_encoder, style, latents.detach(), reference, FitSettings(weights=weights))
    net = StyleNet().to(device)
    features = image_encoder.encode(content)
    generator = torch.Generator().manual_seed(0)
    direction = style.direction.to(device)
    return {
        "StyleMamba fusion model": forward_backward_seconds(lambda: model(latents, condition), device),
        f"StyleMamba {decoder} decode": forward_backward_seconds(lambda: tae.decode(latents), device),
        "StyleMamba losses": forward_backward_seconds(lambda: objective(latents, images, generator)["total"], device),
        "CLIPstyler StyleNet": forward_backward_seconds(lambda: net(content), device),
        "CLIPstyler losses": forward_backward_seconds(
            lambda: clipstyler_losses(images, content, features, direction, image_encoder, weights, None, generator)["total"],
            device,
        ),
    }


def load_content(path: Path, size: int) -> torch.Tensor:
    return square(load_image(path), size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=ASSETS / "images" / "boat.jpg", help="content photo (default: %(default)s)")
    parser.add_argument("--taef2", type=Path, default=ASSETS / "taef2", help="folder with taef2_encoder.pth / taef2_decoder.pth")
    parser.add_argument("--size", type=int, default=256, help="square training resolution, a multiple of 8 (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=10, help="steps timed per method, first is warm-up (default: %(default)s)")
    parser.add_argument("--encoder", choices=tuple(ENCODERS), default="tiny", help="random SigLIP shape (default: %(default)s)")
    parser.add_argument("--siglip", help="a real SigLIP folder or hub id instead of a random one")
    parser.add_argument("--style", default="oil painting of flowers", help="style text, used with --siglip (default: %(default)r)")
    parser.add_argument("--width", type=int, default=StyleMambaConfig.width, help="fusion model width (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=StyleMambaConfig.depth, help="fusion model depth (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--decoder", choices=tuple(DECODERS), default="taef2", help="what the fit decodes through (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.iterations < 2:
        parser.error("--iterations must be at least 2 (one warm-up step is not timed)")
    if args.size < 32 or args.size % 8:
        parser.error(f"--size must be a multiple of 8 and at least 32, got {args.size}")
    taef2_files = (args.taef2 / "taef2_encoder.pth", args.taef2 / "taef2_decoder.pth") if args.decoder == "taef2" else ()
    for needed in (args.image, *taef2_files):
        if not needed.is_file():
            parser.error(f"{needed} not found (the shared assets live in ../shared/assets)")

    device = args.device
    image_encoder = ImageEncoder.from_pretrained(args.siglip) if args.siglip else random_siglip(args.encoder)
    image_encoder.model.to(device)
    style = encode_text_style(TextEncoder.from_pretrained(args.siglip), args.style) if args.siglip else random_style(
        image_encoder.model.config.hidden_size
    )
    tae = load_decoder(args.decoder, args.taef2, device)
    content = load_content(args.image, args.size).to(device)
    weights = LossWeights()

    config = StyleMambaConfig(latent_channels=tae.latent_channels, style_dim=style.target.shape[1], width=args.width, depth=args.depth)
    timer = StepTimer(args.iterations, "StyleMamba fit")
    fit_style(
        new_style_mamba(config), content, style, tae.encode, tae.decode, image_encoder,
        FitSettings(iterations=args.iterations, weights=weights, train_decoder=args.decoder), callback=timer, device=device,
    )
    stylemamba_wall, stylemamba_cpu = timer.seconds_per_iteration()

    timer = StepTimer(args.iterations, "CLIPstyler")
    train_clipstyler(content, style, image_encoder, ClipStylerSettings(iterations=args.iterations, weights=weights), progress=timer)
    clipstyler_wall, clipstyler_cpu = timer.seconds_per_iteration()

    stages = stage_costs(config, tae, args.decoder, image_encoder, style, content, weights, device)

    fit_default, baseline_default = FitSettings().iterations, ClipStylerSettings().iterations
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {device}")
    print(f"content {args.image.name} at {args.size}² px, encoder {image_encoder.name}, StyleMamba width {args.width} depth {args.depth}, "
          f"decoder {DECODERS[args.decoder]}, {weights.num_crops} crops of {weights.crop_size} px, {args.iterations} iterations each")
    # The robust clock: CPU time on a shared CPU machine, wall time on a GPU (CPU time there only counts launches).
    clock = "wall" if torch.device(device).type == "cuda" else "CPU"
    print(f"| method | wall s/iteration | CPU s/iteration | iterations/s ({clock}) | default iterations | {clock} time to default (s) |")
    print("|---|---|---|---|---|---|")
    rows = (("StyleMamba fit", stylemamba_wall, stylemamba_cpu, fit_default), ("CLIPstyler", clipstyler_wall, clipstyler_cpu, baseline_default))
    robust = {}
    for name, wall, cpu, default in rows:
        robust[name] = wall if clock == "wall" else cpu
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {1 / robust[name]:.3f} | {default} | {default * robust[name]:.1f} |")
    print(f"speed ratio StyleMamba / CLIPstyler (iterations/s): {clipstyler_cpu / stylemamba_cpu:.2f}× by CPU time, "
          f"{clipstyler_wall / stylemamba_wall:.2f}× by wall time")
    print(f"time-to-default ratio CLIPstyler / StyleMamba ({clock}): "
          f"{baseline_default * robust['CLIPstyler'] / (fit_default * robust['StyleMamba fit']):.2f}×")
    print(f"isolated stage costs, forward + backward, median of 3 ({clock} s):")
    for name, seconds in stages.items():
        print(f"  {name}: {seconds:.2f}")


if __name__ == "__main__":
    main()
