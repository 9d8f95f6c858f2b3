"""Time StyleFuse's apply path (``stylize_latents``) with one style against mixes: global and regional.

The model is stylefuse.py's (the default StyleMambaConfig, gates opened). Cases run interleaved, one
repeat of each in turn, so a busy shared machine slows them alike. Printed per case: the median and the
fastest wall time, and the median CPU time of this process (all its threads), which other programs on a
shared machine disturb far less than the wall time; ratios are to the single style's.

    python benchmarks/stylefuse_mix.py                          # 512 px SD latent (4×64×64) on CPU
    python benchmarks/stylefuse_mix.py --device cuda --sizes 512 1024
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from stylefuse import build_model, synchronize

from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba
from comfyui_stylemamba.stylemamba.mixing import mix_styles
from comfyui_stylemamba.stylemamba.style import StyleEmbedding
from comfyui_stylemamba.stylemamba.stylize import stylize_latents


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512], help="image sides in pixels (latent = side / 8)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (default: %(default)s)")
    args = parser.parse_args()
    if any(s < 8 or s % 8 for s in args.sizes) or args.repeats < 1:
        parser.error("--sizes must be positive multiples of 8 and --repeats at least 1")
    args.device = torch.device(args.device)
    return args


def styles(count: int, width: int) -> list[StyleEmbedding]:
    generator = torch.Generator().manual_seed(1)
    return [
        StyleEmbedding(F.normalize(torch.randn(1, width, generator=generator), dim=-1), torch.zeros(1, width), f"style {i}", "bench")
        for i in range(count)
    ]


def vertical_bands(count: int, size: int, edge: int = 32) -> list[torch.Tensor]:
    """``count`` pixel masks side by side that sum to 1, each step between neighbours softened over ``edge`` px."""
    x = torch.arange(size, dtype=torch.float32) + 0.5
    steps = [torch.ones(size)] + [((x - j * size / count) / edge + 0.5).clamp(0, 1) for j in range(1, count)] + [torch.zeros(size)]
    return [(steps[i] - steps[i + 1]).expand(1, size, size) for i in range(count)]


def measure(run: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(4, args.device, torch.float32)
    style_mamba = StyleMamba(model=model, text_encoder="bench")
    two, four = styles(2, model.config.style_dim), styles(4, model.config.style_dim)
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, device {args.device}, threads {args.threads}, default config, load average "
          f"{os.getloadavg()[0]:.2f} at start, median of {args.repeats} (interleaved) after one warm-up")
    print("| image | latent | style | wall ms, median | wall ms, fastest | CPU ms, median | × single style (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        latent = torch.randn(1, 4, size // 8, size // 8, device=args.device)
        cases = {
            "single style": two[0],
            "2 styles, global mix": mix_styles(two, [1.0, 1.0]),
            "2 styles, regional (2 masks)": mix_styles(two, [1.0, 1.0], vertical_bands(2, size)),
            "4 styles, regional (4 masks)": mix_styles(four, [1.0] * 4, vertical_bands(4, size)),
        }
        runs = {name: (lambda style=style: stylize_latents(style_mamba, latent, style, device=args.device)) for name, style in cases.items()}
        for run in runs.values():
            run()  # warm-up
        seconds = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                seconds[name].append(measure(run, args.device))
        single = statistics.median(cpu for _, cpu in seconds["single style"])
        for name, values in seconds.items():
            walls, cpus = [wall for wall, _ in values], [cpu for _, cpu in values]
            cpu = statistics.median(cpus)
            print(f"| {size}² | 4×{size // 8}² | {name} | {statistics.median(walls) * 1e3:.1f} | {min(walls) * 1e3:.1f} | "
                  f"{cpu * 1e3:.1f} | {cpu / single:.2f} |")


if __name__ == "__main__":
    main()
