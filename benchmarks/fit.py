"""Time per style of a per-style StyleMamba fit against the CLIPstyler baseline, side by side in one run.

Every combination of ``--encoders`` (random SigLIP shapes) and ``--sizes`` (square training resolution) runs
CLIPstyler at its defaults (200 steps; global + 64 thresholded patch crops encoded at the encoder's input size +
content + TV; StyleNet in pixel space) and the StyleMamba fit at its defaults (40 steps; the paper's global, masked
and second-order directional losses + content + TV; weights kept on the fixed evaluation after every update)
through each of ``--decoders``. Both methods see the same photo, text direction and encoder. A few steps of each
are timed after one warm-up step; time per style is time per step × the method's default step count.
Each fit row also gives its isolated stage costs, so a missed goal names the stage that holds it.

Real SigLIP weights are not reachable from the project machines, so the encoder is a SigLIP with
random weights: ``tiny`` (2 layers, 32 px, 32-d: isolates everything but the encoder) or ``base``
(SigLIP-base/16-224's exact shape: the real per-step compute). Random weights change the loss values,
not the time per step. ``--siglip FOLDER`` uses real weights instead.

Decoders: the real TAEF2 (``taef2``), an SD-VAE-sized AutoencoderKL (``sd-vae``, random weights: SD's exact decoder
compute, the fit's default decoder for the README's main command) or its TAESD-shaped tiny proxy (``taesd``). On a
GPU the figures are wall-clock (the device drained at each step); on a CPU they are process CPU time, which other
jobs on a shared machine do not stretch.

    python benchmarks/fit.py --threads 1                                        # the whole grid, CPU
    python benchmarks/fit.py --encoders base --sizes 256 --decoders sd-vae      # one cell
    python benchmarks/fit.py --device cuda --sizes 512 --decoders sd-vae
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
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
from comfyui_stylemamba.stylemamba.training.fit import FitSettings, FixedEvaluation, StyleObjective, StyledBatch, fit_style
from comfyui_stylemamba.stylemamba.images import load_image, square
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


def median_seconds(run, device: str, repeats: int) -> float:
    """Median of ``repeats`` timings of ``run()``, one stage's cost per step: process CPU time on a CPU,
    wall time with the device drained on a GPU (where CPU time only counts launches)."""
    cuda = torch.device(device).type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        run()
        synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def forward_backward_seconds(run, device: str, repeats: int) -> float:
    """``median_seconds`` of ``run().sum().backward()``: a differentiable stage's cost per training step."""
    return median_seconds(lambda: run().sum().backward(), device, repeats)


def stage_costs(
    config: StyleMambaConfig, tae, image_encoder: ImageEncoder, style: StyleEmbedding, content: torch.Tensor,
    device: str, repeats: int,
) -> dict[str, float]:
    """Where a fit step's time goes: each stage timed on its own (forward + backward, the evaluation forward only)."""
    latents = tae.encode(content).detach().requires_grad_()
    model = new_style_mamba(config).model.to(device).train().requires_grad_(True)
    condition = style.target.to(device)
    with torch.no_grad():
        reference = tae.decode(latents)
    images = reference.clone().requires_grad_()
    settings = FitSettings()
    objective = StyleObjective(image_encoder, style, latents.detach(), reference, settings)
    evaluate = FixedEvaluation(objective, latents.detach(), condition, tae.decode, None, settings)
    batch = StyledBatch(latents.detach(), images.detach(), None)
    generator = torch.Generator().manual_seed(0)
    return {
        "fusion model": forward_backward_seconds(lambda: model(latents, condition), device, repeats),
        "decode": forward_backward_seconds(lambda: tae.decode(latents), device, repeats),
        "losses": forward_backward_seconds(lambda: objective(latents, images, objective.reference, generator)["total"], device, repeats),
        "evaluation": median_seconds(lambda: evaluate(model, batch), device, repeats),
    }


def load_content(path: Path, size: int) -> torch.Tensor:
    return square(load_image(path), size)


@dataclass
class Row:
    """One method in one cell of the grid: seconds per step on the robust clock, and what they add up to."""

    size: int
    encoder: str
    method: str
    wall: float
    cpu: float
    default_steps: int
    robust: float
    stages: dict[str, float]

    @property
    def per_style(self) -> float:
        return self.default_steps * self.robust


def time_fit(config, tae, content, style, image_encoder, iterations: int, label: str, device: str) -> tuple[float, float]:
    """(wall, CPU) seconds per step of the fit at its default settings, through ``tae``."""
    timer = StepTimer(iterations, label)
    fit_style(new_style_mamba(config), content, style, tae.encode, tae.decode, image_encoder,
              FitSettings(iterations=iterations), callback=timer, device=device)
    return timer.seconds_per_iteration()


def time_clipstyler(content, style, image_encoder, iterations: int, label: str) -> tuple[float, float]:
    """(wall, CPU) seconds per step of CLIPstyler at its default settings."""
    timer = StepTimer(iterations, label)
    train_clipstyler(content, style, image_encoder, ClipStylerSettings(iterations=iterations), progress=timer)
    return timer.seconds_per_iteration()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=ASSETS / "images" / "boat.jpg", help="content photo (default: %(default)s)")
    parser.add_argument("--taef2", type=Path, default=ASSETS / "taef2", help="folder with taef2_encoder.pth / taef2_decoder.pth")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square training resolutions, multiples of 8 (default: %(default)s)")
    parser.add_argument("--encoders", choices=tuple(ENCODERS), nargs="+", default=list(ENCODERS), help="random SigLIP shapes (default: %(default)s)")
    parser.add_argument("--decoders", choices=tuple(DECODERS), nargs="+", default=["taef2", "sd-vae"], help="what the fit decodes through (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=3, help="steps timed per method and cell, first is warm-up (default: %(default)s)")
    parser.add_argument("--stage-repeats", type=int, default=1, help="timings per isolated stage, median taken (default: %(default)s)")
    parser.add_argument("--siglip", help="a real SigLIP folder or hub id instead of the random ones (one encoder)")
    parser.add_argument("--style", default="oil painting of flowers", help="style text, used with --siglip (default: %(default)r)")
    parser.add_argument("--width", type=int, default=StyleMambaConfig.width, help="fusion model width (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=StyleMambaConfig.depth, help="fusion model depth (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.iterations < 2:
        parser.error("--iterations must be at least 2 (one warm-up step is not timed)")
    if args.stage_repeats < 1:
        parser.error(f"--stage-repeats must be at least 1, got {args.stage_repeats}")
    for size in args.sizes:
        if size < 32 or size % 8:
            parser.error(f"--sizes must be multiples of 8 and at least 32, got {size}")
    taef2_files = (args.taef2 / "taef2_encoder.pth", args.taef2 / "taef2_decoder.pth") if "taef2" in args.decoders else ()
    for needed in (args.image, *taef2_files):
        if not needed.is_file():
            parser.error(f"{needed} not found (the shared assets live in ../shared/assets)")

    device = args.device
    clock = "wall" if torch.device(device).type == "cuda" else "CPU"  # CPU time on a shared CPU, wall on a GPU
    decoders = {kind: load_decoder(kind, args.taef2, device) for kind in args.decoders}
    fit_steps, clipstyler_steps = FitSettings().iterations, ClipStylerSettings().iterations
    print_header(args, clock, device)
    for encoder_kind in ([args.siglip] if args.siglip else args.encoders):
        image_encoder = ImageEncoder.from_pretrained(encoder_kind) if args.siglip else random_siglip(encoder_kind)
        image_encoder.model.to(device)
        dim = image_encoder.model.config.hidden_size
        style = encode_text_style(TextEncoder.from_pretrained(args.siglip), args.style) if args.siglip else random_style(dim)
        for size in args.sizes:
            content = load_content(args.image, size).to(device)
            cell = f"{encoder_kind} {size}px"
            wall, cpu = time_clipstyler(content, style, image_encoder, args.iterations, f"CLIPstyler {cell}")
            baseline = Row(size, encoder_kind, "CLIPstyler", wall, cpu, clipstyler_steps, wall if clock == "wall" else cpu, {})
            print_row(baseline, baseline)
            for kind, tae in decoders.items():
                config = StyleMambaConfig(latent_channels=tae.latent_channels, style_dim=dim, width=args.width, depth=args.depth)
                wall, cpu = time_fit(config, tae, content, style, image_encoder, args.iterations, f"fit {kind} {cell}", device)
                stages = stage_costs(config, tae, image_encoder, style, content, device, args.stage_repeats)
                print_row(Row(size, encoder_kind, f"StyleMamba fit, {kind} decoder", wall, cpu, fit_steps, wall if clock == "wall" else cpu, stages), baseline)
    print(f"done {datetime.datetime.now(datetime.timezone.utc):%H:%M UTC}, load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def print_header(args: argparse.Namespace, clock: str, device: str) -> None:
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, device {device}, "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"content {args.image.name}, StyleMamba width {args.width} depth {args.depth}, {args.iterations} steps timed per row "
          f"(first is warm-up); decoders: {'; '.join(f'{k} = {DECODERS[k]}' for k in args.decoders)}")
    print(f"stage costs: {clock} s, forward + backward; the fit's evaluation forward only (it reuses the step's decode)")
    print()
    print(f"| size | encoder | method | wall s/step | CPU s/step | default steps | {clock} s per style | CLIPstyler / this | stage costs |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)


def print_row(row: Row, baseline: Row) -> None:
    """One table row as soon as it is measured: a long grid on a shared machine keeps what it finished."""
    stages = ", ".join(f"{name} {seconds:.2f}" for name, seconds in row.stages.items())
    print(f"| {row.size} | {row.encoder} | {row.method} | {row.wall:.2f} | {row.cpu:.2f} | {row.default_steps} | "
          f"{row.per_style:.0f} | {baseline.per_style / row.per_style:.2f}× | {stages} |", flush=True)


if __name__ == "__main__":
    main()
