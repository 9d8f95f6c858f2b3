"""Training-decoder choice for a per-style fit: the full VAE vs the matching tiny autoencoder.

Two latent families, each fitted twice on the same photo, encoder, style and seed, once decoding
through the full VAE architecture and once through the TAESD-family decoder:

* SD1.5 (4 channels): diffusers' AutoencoderKL at SD's VAE shape vs a TAESD-shape decoder;
* Flux.2 (32 channels): AutoencoderKL at Flux.2's VAE shape vs the real TAEF2 weights.

Only TAEF2 has real weights here (no VAE download is possible from the project machines), so
time per step is exact for all four, while the quality columns (SSIM of the final decode to the
photo, final global directional loss 1 − cos) are meaningful only for the TAEF2 row; the others
show that the fit runs and optimises through each decoder. The encoder is the random SigLIP of
``benchmarks/fit.py`` (``--encoder tiny``: isolates the decoder cost).

    python benchmarks/fit_decoder.py --resolution 256 --iterations 6
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import torch

from comfyui_stylemamba.stylemamba.checkpoint import new_style_mamba
from comfyui_stylemamba.stylemamba.config import StyleMambaConfig
from comfyui_stylemamba.stylemamba.training.fit import FitSettings, fit_style
from comfyui_stylemamba.stylemamba.training.losses import LossWeights
from comfyui_stylemamba.stylemamba.training.metrics import ssim
from fit import ASSETS, FULL_VAES, StepTimer, full_vae, load_content, random_siglip, random_style, tiny_autoencoder


def run_fit(encode, decode, content, image_encoder, style, channels: int, iterations: int, label: str) -> dict:
    model = new_style_mamba(StyleMambaConfig(latent_channels=channels, style_dim=style.target.shape[-1]), seed=0)
    settings = FitSettings(iterations=iterations, lr=5e-3, weights=LossWeights(num_crops=8, crop_size=128))
    timer = StepTimer(iterations, label)
    result = fit_style(model, content, style, encode, decode, image_encoder, settings, timer)
    speed = 1 / timer.seconds_per_iteration()[1]  # iterations per CPU second
    with torch.no_grad():
        final = decode(result.style_mamba.model(encode(content), style.target))
    return {
        "label": label, "it/s": speed, "ssim": ssim(final, content).item(),
        "directional": result.evaluations[result.kept_step]["directional"] / settings.weights.directional,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--photo", default="boat.jpg")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "fit-decoder-choice.md")
    args = parser.parse_args()
    content = load_content(ASSETS / "images" / args.photo, args.resolution)
    image_encoder = random_siglip("tiny")
    style = random_style(image_encoder.model.config.hidden_size)
    rows = []
    for family in ("flux2", "sd15"):
        vae, tiny = full_vae(family), tiny_autoencoder(family)
        # Content latents always come from the full VAE in real use; the TAEF2 row uses TAEF2's own
        # encoder because only its weights are real, so that its SSIM measures a real latent path.
        encode = tiny.encode if family == "flux2" else vae.encode
        channels = FULL_VAES[family]["latent_channels"]
        rows.append(run_fit(encode, vae.decode, content, image_encoder, style, channels, args.iterations, f"{family}: full VAE decoder"))
        rows.append(run_fit(encode, tiny.decode, content, image_encoder, style, channels, args.iterations, f"{family}: tiny AE decoder"))
    lines = [
        "# Training decoder: full VAE vs tiny autoencoder (per-style fit)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU",
        f"- command: `python benchmarks/fit_decoder.py --resolution {args.resolution} --iterations {args.iterations}`",
        f"- photo: {args.photo} at {args.resolution}² px; encoder: random tiny SigLIP; 8 patch crops; default model config",
        "",
        "| fit | it/s | SSIM to photo | directional 1 − cos (kept weights, fixed evaluation) |",
        "|---|---|---|---|",
        *[f"| {r['label']} | {r['it/s']:.3f} | {r['ssim']:.3f} | {r['directional']:.3f} |" for r in rows],
    ]
    for family in ("flux2", "sd15"):
        full, tiny = [r for r in rows if r["label"].startswith(family)]
        lines.append(f"\n{family}: the tiny autoencoder fits {tiny['it/s'] / full['it/s']:.1f}× faster than the full VAE.")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
