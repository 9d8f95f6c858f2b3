"""Time StyleFuse's model (the default StyleMambaConfig) on real latent shapes, per scan backend.

Weights are random with the zero-initialised gates opened, so every block does its full work; the time
does not depend on the values. Prints the median of repeats after a warm-up and each backend's speed-up
over ``reference``.

``--breakdown`` adds where one forward spends its time: the scan (each ``cross_scan_2d`` call),
projections (``linear`` and ``einsum``), the depthwise conv, the norms, and the rest (activations, AdaLN,
reshapes). Each timed op runs alone (the device drained before and after), so the parts add up to more
than the plain forward on a GPU, by the launch latency per op; the plain forward is the figure to quote.
``--compile`` runs the non-scan parts through ``torch.compile`` (the scan stays eager, a graph break);
``reduce-overhead`` also replays them as CUDA graphs.

    python benchmarks/stylefuse.py                       # SD 512 px latent on CPU, torch vs reference
    python benchmarks/stylefuse.py --device cuda --sizes 1024 --channels 4 16 --dtype bfloat16 \\
        --backends torch triton mamba_ssm --breakdown --compile none reduce-overhead
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from collections import defaultdict
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

from comfyui_stylemamba.kernels import BACKENDS, resolve_backend
from comfyui_stylemamba.stylemamba import model as model_module
from comfyui_stylemamba.stylemamba.config import StyleMambaConfig
from comfyui_stylemamba.stylemamba.model import StyleFusionModel

#: Torch functions by breakdown part; everything else outside the scan is "other".
PARTS = {F.linear: "projections", torch.einsum: "projections", F.conv2d: "conv", F.layer_norm: "norms"}
SPLIT = ("scan", "projections", "conv", "norms", "other", "total (parts timed alone)")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512], help="image sides in pixels (latent = side / 8)")
    parser.add_argument("--channels", type=int, nargs="+", default=[4],
                        help="latent channels, one model each: 4 SD/SDXL, 16 SD3/Flux.1, 32 Flux.2 (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="latents per call")
    parser.add_argument("--backends", nargs="+", default=["torch", "reference"], choices=[b for b in BACKENDS if b != "auto"])
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="model weights and latent (default: %(default)s)")
    parser.add_argument("--breakdown", action="store_true", help="also time scan / projections / conv / norms / other")
    parser.add_argument("--compile", nargs="+", default=["none"], choices=COMPILE_MODES,
                        help="torch.compile modes for the non-scan parts, each timed (default: none)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (default: %(default)s)")
    args = parser.parse_args()
    if any(s < 8 or s % 8 for s in args.sizes):
        parser.error("--sizes must be positive multiples of 8")
    if args.repeats < 1 or args.batch < 1 or min(args.channels) < 1:
        parser.error("--repeats, --batch and --channels must be at least 1")
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch build or machine has no CUDA device")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class Breakdown(TorchFunctionMode):
    """Seconds per part of a forward: each projection, conv and norm call, and each whole scan, timed alone."""

    def __init__(self, device: torch.device, scan: Callable[..., torch.Tensor]):
        super().__init__()
        self.device, self.scan_fn = device, scan
        self.seconds: dict[str, float] = defaultdict(float)
        self.in_scan = False

    def timed_part(self, part: str, fn: Callable[[], object]) -> object:
        synchronize(self.device)
        start = time.perf_counter()
        result = fn()
        synchronize(self.device)
        self.seconds[part] += time.perf_counter() - start
        return result

    def scan(self, *args, **kwargs) -> torch.Tensor:
        """Stands in for the model's ``cross_scan_2d``: the whole call is "scan", nothing inside it is split."""
        self.in_scan = True
        try:
            return self.timed_part("scan", lambda: self.scan_fn(*args, **kwargs))
        finally:
            self.in_scan = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        part = None if self.in_scan else PARTS.get(func)
        if part is None:
            return func(*args, **kwargs)
        return self.timed_part(part, lambda: func(*args, **kwargs))


def breakdown(model: StyleFusionModel, latent: torch.Tensor, style: torch.Tensor, device: torch.device) -> dict[str, float]:
    """One eager forward split into parts; "other" is the rest of that same (synchronised) forward."""
    original = model_module.cross_scan_2d
    mode = Breakdown(device, original)
    model_module.cross_scan_2d = mode.scan
    try:
        with torch.inference_mode(), mode:
            total = timed(lambda: model(latent, style), device)
    finally:
        model_module.cross_scan_2d = original
    parts = {name: mode.seconds.get(name, 0.0) for name in SPLIT[:4]}
    return {**parts, "other": max(total - sum(parts.values()), 0.0), SPLIT[-1]: total}


def build_model(channels: int, device: torch.device, dtype: torch.dtype) -> StyleFusionModel:
    config = StyleMambaConfig(latent_channels=channels)
    torch.manual_seed(0)
    model = StyleFusionModel(config).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.modulation.bias.fill_(0.1)  # open the AdaLN-Zero gates
        model.head.weight.normal_(std=0.01)
    return model


def compiled(model: StyleFusionModel, mode: str) -> Callable[..., torch.Tensor]:
    """The model with its non-scan parts compiled; the scan is left to its own kernels (a graph break)."""
    if mode == "none":
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = args.device, getattr(torch, args.dtype)
    backends = []
    for name in args.backends:
        try:
            resolve_backend(name, device, dtype)  # runs a compiled backend's self-check
            backends.append(name)
        except RuntimeError as error:
            print(f"skipping {name}: {error}")
    if any(mode != "none" for mode in args.compile):
        # Dynamo must not trace the scan dispatch (self-check, locks): keep it eager between compiled graphs.
        model_module.cross_scan_2d = torch.compiler.disable(model_module.cross_scan_2d)
    gpu = f", GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, torch {torch.__version__}{gpu}, "
          f"device {device}, threads {args.threads}, dtype {args.dtype}, default config, batch {args.batch}, "
          f"median of {args.repeats} after one warm-up")
    print("| image | latent | backend | compile | forward ms | × reference |")
    print("|---|---|---|---|---|---|")
    splits = []
    for channels in args.channels:
        model = build_model(channels, device, dtype)
        style = torch.randn(1, model.config.style_dim, device=device, dtype=dtype)
        for size in args.sizes:
            latent = torch.randn(args.batch, channels, size // 8, size // 8, device=device, dtype=dtype)
            seconds = {}
            for name in tqdm(backends, desc=f"{channels}×{size // 8}²", leave=False):
                model.set_scan_backend(name)
                for mode in args.compile:
                    run = compiled(model, mode)
                    with torch.inference_mode():
                        run(latent, style)  # warm-up (and compilation)
                        seconds[name, mode] = statistics.median(
                            timed(lambda: run(latent, style), device) for _ in range(args.repeats)
                        )
                if args.breakdown:
                    splits.append((f"{size}² {channels}×{size // 8}² {name}", breakdown(model, latent, style, device)))
            for (name, mode), value in seconds.items():
                reference = seconds.get(("reference", mode))
                ratio = f"{reference / value:.1f}" if reference else "–"
                print(f"| {size}² | {channels}×{size // 8}² | {name} | {mode} | {value * 1e3:.1f} | {ratio} |")
    if splits:
        print("\nbreakdown of one eager forward, ms (each part timed alone):")
        print("| case | " + " | ".join(SPLIT) + " |")
        print("|---|" + "---|" * len(SPLIT))
        for case, parts in splits:
            print(f"| {case} | " + " | ".join(f"{parts[name] * 1e3:.1f}" for name in SPLIT) + " |")


if __name__ == "__main__":
    main()
