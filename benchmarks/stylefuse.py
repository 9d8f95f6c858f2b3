"""Time StyleFuse's model (the default StyleMambaConfig) on real latent shapes, per scan backend.

Weights are random with the zero-initialised gates opened, so every block does its full work; the time
does not depend on the values. Prints the median of repeats after a warm-up and each backend's speed-up
over ``reference``.

    python benchmarks/stylefuse.py                       # SD 512 px latent on CPU, torch vs reference
    python benchmarks/stylefuse.py --device cuda --sizes 512 1024 --backends reference torch triton mamba_ssm
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
from tqdm import tqdm

from comfyui_stylemamba.kernels import BACKENDS, resolve_backend
from comfyui_stylemamba.stylemamba.config import StyleMambaConfig
from comfyui_stylemamba.stylemamba.model import StyleFusionModel


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512], help="image sides in pixels (latent = side / 8)")
    parser.add_argument("--channels", type=int, default=4, help="latent channels: 4 SD/SDXL, 16 SD3/Flux.1, 32 Flux.2")
    parser.add_argument("--batch", type=int, default=1, help="latents per call")
    parser.add_argument("--backends", nargs="+", default=["torch", "reference"], choices=[b for b in BACKENDS if b != "auto"])
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (default: %(default)s)")
    args = parser.parse_args()
    if any(s < 8 or s % 8 for s in args.sizes):
        parser.error("--sizes must be positive multiples of 8")
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be at least 1")
    return args


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = StyleMambaConfig(latent_channels=args.channels)
    torch.manual_seed(0)
    model = StyleFusionModel(config).to(device).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.modulation.bias.fill_(0.1)  # open the AdaLN-Zero gates
        model.head.weight.normal_(std=0.01)
    style = torch.randn(1, config.style_dim, device=device)
    backends = []
    for name in args.backends:
        try:
            resolve_backend(name, device)
            backends.append(name)
        except RuntimeError as error:
            print(f"skipping {name}: {error}")
    params = sum(p.numel() for p in model.parameters())
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}, "
          f"device {device}, threads {args.threads}, default config ({params:,} parameters), batch {args.batch}, median of {args.repeats}")
    print("| image | latent | backend | forward s | × reference |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        latent = torch.randn(args.batch, args.channels, size // 8, size // 8, device=device)
        seconds = {}
        for name in tqdm(backends, desc=f"{size}px", leave=False):
            model.set_scan_backend(name)
            with torch.inference_mode():
                model(latent, style)  # warm-up
                seconds[name] = statistics.median(timed(lambda: model(latent, style), device) for _ in range(args.repeats))
        for name, value in seconds.items():
            ratio = f"{seconds['reference'] / value:.1f}" if "reference" in seconds else "–"
            print(f"| {size}² | {args.channels}×{size // 8}² | {name} | {value:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
