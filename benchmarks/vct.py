"""VCT on a tiny SD1.5-shaped UNet and CLIP (ComfyUI's classes, random weights): time and memory of each stage, and the
null-text inner-step count against the reconstruction error at CFG 7.5.

Run in ComfyUI's python with cwd = the ComfyUI root (``PYTHONPATH=.``); the model, CLIP, stand-in VAE and content
latent are the tier probe's (``tests/comfyui/probes/vct_in_comfyui.py``), the stages are the nodes' own calls. Per
stage: wall seconds, CPU seconds of this process, and the peak resident memory above the level before the stage
(sampled every 2 ms from /proc/self/statm; on a GPU, torch's peak allocated bytes instead).

    PYTHONPATH=. python .../benchmarks/vct.py --steps 10 --side 16
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

PROBES = Path(__file__).resolve().parents[1] / "tests" / "comfyui" / "probes"


class PeakRSS:
    """Peak resident set size above the level at entry, sampled from /proc/self/statm by a thread."""

    def __enter__(self) -> "PeakRSS":
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2 ** 20


def measure(call: Callable[[], object]) -> tuple[object, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    with PeakRSS() as memory:
        result = call()
    return result, {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "peak_mib": memory.mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps of the chain")
    parser.add_argument("--side", type=int, default=16, help="latent side (pixels / 8)")
    parser.add_argument("--concept-steps", type=int, default=10)
    parser.add_argument("--inner", type=int, nargs="+", default=[0, 1, 3, 10, 30], help="null-text inner-step counts")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    sys.path.insert(0, str(PROBES))
    import torch

    import vct_in_comfyui as probe  # noqa: E402 (sets ComfyUI to CPU)
    from comfyui_stylemamba.vct import ddim
    from comfyui_stylemamba.vct.fusion import NEGATIVE, Cond

    torch.manual_seed(0)
    side = args.side
    content = torch.nn.functional.interpolate(probe.content_latent(), size=(side, side), mode="bilinear")
    reference = torch.rand(1, side * 8, side * 8, 3, generator=torch.Generator().manual_seed(1))
    rows, sweep = [], []
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        probe.folder_paths.folder_names_and_paths["embeddings"] = ([str(folder)], probe.folder_paths.supported_pt_extensions)
        model, clip = probe.tiny_sd15(), probe.tiny_clip(folder)
        eps = probe.ComfyEps(model)
        with torch.inference_mode():
            learned, stats = measure(lambda: probe.VCTConceptInversion().learn(
                model, clip, StandInVAE(side), reference, "bench", "painting", 3, args.concept_steps, 2e-3, 0))
            (concept,) = learned["result"]
            rows.append((f"concept inversion, {args.concept_steps} steps", stats, args.concept_steps))
            (inversion,), stats = measure(lambda: probe.VCTContentInversion().invert(
                model, clip, {"samples": content}, args.steps, 7.5, 0, probe.CAPTION))
            rows.append((f"DDIM inversion, {args.steps} steps", stats, args.steps))
            caption = probe.encode_text(clip, model, clip.tokenize(probe.CAPTION), (side, side))
            x0 = model.model.process_latent_in(content)
            for inner in args.inner:
                (inv,), stats = measure(lambda: probe.VCTContentInversion().invert(
                    model, clip, {"samples": content}, args.steps, 7.5, inner, probe.CAPTION))
                nulls = [Cond(n, None, (NEGATIVE,)) for n in inv.nulls]
                rebuilt = ddim.sample(eps, inv.x_t, caption, nulls, inv.schedule, 7.5)
                sweep.append((inner, probe.rms(rebuilt, x0) / probe.rms(x0, torch.zeros_like(x0)), stats))
            _, stats = measure(lambda: probe.VCTFusion().fuse(model, clip, inversion, concept, "a painting of {concept}",
                                                             0.9, 0.2, 1024, 0.5))
            rows.append((f"fusion (2 streams × CFG = batch 4), {args.steps} steps", stats, args.steps))
    print_report(args, rows, sweep)


class StandInVAE:
    """The probe's stand-in VAE at any size: the picture average-pooled to the latent side."""

    def __init__(self, side: int) -> None:
        self.side = side

    def encode(self, image):
        import torch

        pooled = torch.nn.functional.adaptive_avg_pool2d(image.movedim(-1, 1), self.side)
        return torch.cat([pooled, pooled.mean(1, keepdim=True)], 1) * 4 - 2


def print_report(args: argparse.Namespace, rows: list, sweep: list) -> None:
    import torch

    print(f"# VCT stages, tiny SD1.5-shaped UNet (ComfyUI classes), latent {args.side}², {args.steps} DDIM steps\n")
    print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print("| stage | wall s | CPU s | per step (CPU s) | peak RSS above start (MiB) |\n|---|---|---|---|---|")
    for name, stats, steps in rows:
        print(f"| {name} | {stats['wall_s']:.2f} | {stats['cpu_s']:.2f} | {stats['cpu_s'] / steps:.3f} | {stats['peak_mib']:.1f} |")
    print("\n| null-text inner steps (max per DDIM step) | content inversion wall s | CPU s | peak MiB | "
          "reconstruction RMS error at CFG 7.5 / content RMS |\n|---|---|---|---|---|")
    for inner, error, stats in sweep:
        print(f"| {inner} | {stats['wall_s']:.2f} | {stats['cpu_s']:.2f} | {stats['peak_mib']:.1f} | {error:.4f} |")


if __name__ == "__main__":
    main()
