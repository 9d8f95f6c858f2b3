"""Time every available selective-scan backend side by side on StyleFuse's shapes.

It times the 1D scan over L = G² tokens (``selective_scan``, grid sides from ``--grids-1d``) and the
K-direction cross scan of a G×G grid (``cross_scan_2d``, ``--grids-2d``), forward and forward+backward,
as the median of repeats after warm-up, with peak memory, the speed-up over ``reference`` and over a
plain sequential loop (one vectorised update over batch × dim × d_state per step, forward only), and the
forward's achieved bytes/s (bytes of u, Δ, B, C, z read and y written; ``--peak-gbs`` turns it into a
fraction of the memory-bandwidth peak). On CPU the peak memory is the resident-set growth of one call,
allocator slack included. The slow sequential baselines get ``--baseline-repeats`` runs.

``--grids-temporal`` times the scan along time (``temporal_scan``) of a (batch, dim, ``--frames``, G, G)
video chunk from a carried initial state, as the video model runs it; where Triton runs, its fused
temporal kernel (reading the video in place) is timed beside ``triton (copies)``, Triton's 1D kernel
over the re-laid-out copy that the other backends use (``kernels.temporal.temporal_scan_by_copies``).

The same run measures the device-to-device copy bandwidth (``torch.Tensor.copy_`` of ``--copy-mib``,
read + write bytes per second), the practical ceiling a scan's bytes/s is shown against. Each compiled
backend passes its self-check before it is timed (one that fails is skipped, with the check's numbers);
the check's cost is printed beside the first call and a steady call.

    python benchmarks/scan.py        # CPU default: 1D at L = 64² (the CPU target), 2D at the model's 32² grid
    python benchmarks/scan.py --device cuda --grids-1d --grids-2d 32 64 128 --dim 512 --batch 2 --dtype bfloat16
    TRITON_INTERPRET=1 python benchmarks/scan.py --grids-1d --grids-2d 8 --dim 32 --backends torch triton  # CPU smoke run
    python benchmarks/scan.py --device cuda --grids-1d --grids-2d --grids-temporal 60 --frames 4 --dim 512  # video chunk
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from typing import Callable

import torch
from tqdm import tqdm

from comfyui_stylemamba.kernels import (
    BACKENDS, IMPLEMENTATIONS, cross_scan_2d, resolve_backend, selective_scan, self_check, temporal_scan,
)
from comfyui_stylemamba.kernels.temporal import temporal_scan_by_copies

#: The temporal scan of Triton's 1D kernel over re-laid-out copies: what the fused temporal kernel replaces.
TRITON_COPIES = "triton (copies)"


def sequential_loop(u, delta, A, B, C):
    """The plain baseline: one vectorised update over (batch, dim, d_state) per time step, nothing else."""
    state = u.new_zeros((u.shape[0], u.shape[1], A.shape[1]), dtype=torch.float32)
    ys = []
    for dt, ut, Bt, Ct in zip(delta.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)):
        state = torch.exp(dt[..., None] * A) * state + (dt * ut)[..., None] * Bt[:, None]
        ys.append((state * Ct[:, None]).sum(-1))
    return torch.stack(ys, dim=-1)


def make_inputs(
    kind: str, batch: int, dim: int, d_state: int, grid: int, directions: int, device, dtype, frames: int = 1
) -> dict:
    """Random inputs with the model's statistics (Δ after softplus around 0.01–0.1, A = −exp(A_log)).

    ``temporal``: a chunk of ``frames`` frames of a G×G video, from a random fp32 initial state.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device=device, dtype=dtype)

    a = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1)
    if kind == "1d":
        length = grid * grid
        return dict(u=rand(batch, dim, length), delta=rand(batch, dim, length, scale=0.5, shift=-3.0), A=a.to(device),
                    B=rand(batch, d_state, length), C=rand(batch, d_state, length), D=torch.ones(dim, device=device),
                    z=rand(batch, dim, length), delta_softplus=True)
    if kind == "temporal":
        video = (frames, grid, grid)
        return dict(u=rand(batch, dim, *video), delta=rand(batch, directions, dim, *video, scale=0.5, shift=-3.0),
                    A=a.repeat(directions, 1, 1).to(device), B=rand(batch, directions, d_state, *video),
                    C=rand(batch, directions, d_state, *video), D=torch.ones(directions, dim, device=device),
                    initial_state=(torch.randn(batch, directions, dim, grid, grid, d_state, generator=gen) * 0.1).to(device))
    return dict(u=rand(batch, dim, grid, grid), delta=rand(batch, directions, dim, grid, grid, scale=0.5, shift=-3.0),
                A=a.repeat(directions, 1, 1).to(device), B=rand(batch, directions, d_state, grid, grid),
                C=rand(batch, directions, d_state, grid, grid), D=torch.ones(directions, dim, device=device))


def moved_bytes(x: dict) -> int:
    """Bytes of u, Δ, B, C, z read and y (shaped like u) written: the scan's compulsory traffic."""
    read = sum(x[k].numel() * x[k].element_size() for k in ("u", "delta", "B", "C", "z") if k in x)
    return read + x["u"].numel() * x["u"].element_size()


def call(kind: str, backend: str, x: dict) -> Callable[[], torch.Tensor]:
    if backend == "loop":
        if kind == "2d":
            raise ValueError("the plain loop baseline is 1D only")
        return lambda: sequential_loop(
            x["u"].float(), torch.nn.functional.softplus(x["delta"].float()), x["A"], x["B"].float(), x["C"].float()
        )
    if kind == "temporal":
        if backend == TRITON_COPIES:
            return lambda: temporal_scan_by_copies(IMPLEMENTATIONS["triton"]()[0], **x)[0]
        return lambda: temporal_scan(**x, backend=backend)[0]
    scan = selective_scan if kind == "1d" else cross_scan_2d
    return lambda: scan(**x, backend=backend)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def run_with_peak(fn: Callable[[], None], device: torch.device) -> int | None:
    """Run once and return the peak memory it added: the CUDA allocator's counter, or on Linux CPUs the
    resident-set high-water mark (reset through /proc/self/clear_refs, so no profiler slows the run)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        base = _status_kib("VmRSS")
    except OSError:  # not Linux: time without a memory figure
        fn()
        return None
    fn()
    return (_status_kib("VmHWM") - base) * 1024


def seconds(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall seconds of one call, the device drained before and after, and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def timed(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> tuple[float, int | None, float]:
    """Median seconds over ``repeats`` after ``warmup`` calls, plus the first call's peak memory and its
    seconds (which include any kernel compilation)."""
    first, peak = seconds(lambda: run_with_peak(fn, device), device)
    for _ in range(warmup - 1):
        fn()
    return statistics.median(seconds(fn, device)[0] for _ in range(repeats)), peak, first


def measure(kind: str, backend: str, x: dict, device, warmup: int, repeats: int) -> dict:
    """Forward and forward+backward timings and peaks; the plain loop is a forward-only baseline."""
    forward = call(kind, backend, x)
    leaves = {k: v.detach().requires_grad_(v.is_floating_point()) if torch.is_tensor(v) else v for k, v in x.items()}
    grad_inputs = [v for v in leaves.values() if torch.is_tensor(v) and v.requires_grad]
    train = call(kind, backend, leaves)

    def forward_backward():
        torch.autograd.grad(train().float().sum(), grad_inputs, allow_unused=True)

    with torch.no_grad():
        fwd, fwd_mem, first = timed(forward, device, warmup, repeats)
    if backend == "loop":
        return dict(fwd=fwd, both=None, fwd_mem=fwd_mem, both_mem=None, first=first)
    both, both_mem, _ = timed(forward_backward, device, warmup, repeats)
    return dict(fwd=fwd, both=both, fwd_mem=fwd_mem, both_mem=both_mem, first=first)


def available(device: torch.device, dtype: torch.dtype, wanted: list[str]) -> list[str]:
    """The named backends that can run here and passed their self-check (run now), with why the others not."""
    usable = []
    for name in wanted:
        try:
            resolve_backend(name, device, dtype)
        except RuntimeError as error:  # unavailable, or SelfCheckError with the check's numbers
            tqdm.write(f"skipping {name}: {error}")
            continue
        usable.append(name)
    return usable


def copy_bandwidth(device: torch.device, mebibytes: int, repeats: int) -> float:
    """Device-to-device copy GB/s (bytes read + written), median of ``repeats`` after one warm-up."""
    source = torch.empty(mebibytes * 2**20, dtype=torch.uint8, device=device).fill_(1)
    target = torch.empty_like(source)
    target.copy_(source)
    best = statistics.median(seconds(lambda: target.copy_(source), device)[0] for _ in range(repeats))
    return 2 * source.numel() / best / 1e9


def format_check_costs(rows: list[dict]) -> str:
    """Each compiled backend's self-check beside its first and a steady call, at the largest case timed."""
    lines = ["| backend | self-check | check s | first fwd call s | steady fwd ms | steady fwd+bwd ms | check / steady fwd+bwd |",
             "|---|---|---|---|---|---|---|"]
    for verdict in self_check.cached_verdicts():
        timings = [r for r in rows if r["backend"] == verdict.backend]
        if not timings:
            continue
        r = max(timings, key=lambda row: row["bytes"])
        lines.append(f"| {verdict.backend} ({r['kind']} {r['label']}) | {verdict.finding()} | {verdict.seconds:.3f} "
                     f"| {r['first']:.3f} | {r['fwd'] * 1e3:.2f} | {r['both'] * 1e3:.2f} | {verdict.seconds / r['both']:.0f}× |")
    return "\n".join(lines) if len(lines) > 2 else "self-check: no compiled backend ran here, so none was checked"


def mebibytes(size: int | None) -> str:
    return "–" if size is None else f"{max(size, 0) / 2**20:.0f}"


def format_table(rows: list[dict], peak_gbs: float | None, copy_gbs: float) -> str:
    head = ("| scan | grid | backend | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB | fwd × ref "
            "| fwd+bwd × ref | fwd × loop | fwd GB/s | % of copy |" + (" % of peak |" if peak_gbs else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ref, loop = r.get("ref"), r.get("loop")
        gbs = r["bytes"] / r["fwd"] / 1e9
        both = r["both"]
        cells = [r["kind"], r["label"], r["backend"], f"{r['fwd'] * 1e3:.1f}",
                 f"{both * 1e3:.1f}" if both else "–", mebibytes(r["fwd_mem"]), mebibytes(r["both_mem"]),
                 f"{ref['fwd'] / r['fwd']:.1f}" if ref else "–", f"{ref['both'] / both:.1f}" if ref and both else "–",
                 f"{loop['fwd'] / r['fwd']:.1f}" if loop else "–", f"{gbs:.3g}", f"{100 * gbs / copy_gbs:.0f}"]
        if peak_gbs:
            cells.append(f"{100 * gbs / peak_gbs:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids-1d", type=int, nargs="*", default=[64], help="1D scans over L = G² (none: skip)")
    parser.add_argument("--grids-2d", type=int, nargs="*", default=[32], help="G×G cross scans (none: skip)")
    parser.add_argument("--grids-temporal", type=int, nargs="*", default=[], help="scans along time of G×G video chunks")
    parser.add_argument("--frames", type=int, default=4, help="frames per timed video chunk (--grids-temporal)")
    parser.add_argument("--temporal-directions", type=int, default=1, choices=(1, 2),
                        help="K of the temporal scan: 1 forward in time (the model's), 2 forward and backward")
    parser.add_argument("--dim", type=int, default=256, help="channels (the mixer's inner width)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--directions", type=int, default=4, choices=(1, 2, 4), help="K of the 2D cross scan")
    parser.add_argument("--backends", nargs="+", default=[b for b in BACKENDS if b != "auto"],
                        choices=[b for b in BACKENDS if b != "auto"],
                        help="unavailable ones are skipped with the reason")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (≥ 1: the first measures memory)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--baseline-repeats", type=int, default=1,
                        help="timed runs of the slow sequential baselines (loop, reference)")
    parser.add_argument("--peak-gbs", type=float, default=None, help="device memory-bandwidth peak in GB/s")
    parser.add_argument("--copy-mib", type=int, default=None,
                        help="buffer copied to measure copy bandwidth (default: 1024 on CUDA, 256 elsewhere)")
    args = parser.parse_args(argv)
    if not args.grids_1d and not args.grids_2d and not args.grids_temporal:
        parser.error("nothing to time: give --grids-1d, --grids-2d and/or --grids-temporal sizes")
    for name in ("grids_1d", "grids_2d", "grids_temporal", "frames", "dim", "batch", "d_state", "threads", "repeats",
                 "baseline_repeats", "copy_mib"):
        values = getattr(args, name) if isinstance(getattr(args, name), list) else [getattr(args, name)]
        if values and values != [None] and min(values) < 1:
            parser.error(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.warmup < 1:
        parser.error(f"--warmup must be ≥ 1 (the first call measures peak memory), got {args.warmup}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this torch build or machine has no CUDA device")
    if args.copy_mib is None:
        args.copy_mib = 1024 if args.device.type == "cuda" else 256
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    backends = available(args.device, dtype, args.backends)
    copy_gbs = copy_bandwidth(args.device, args.copy_mib, max(args.repeats, 3))
    jobs = [("1d", grid, b) for grid in args.grids_1d for b in ["loop", *backends]]
    jobs += [("2d", grid, b) for grid in args.grids_2d for b in backends]
    temporal_backends = [*backends, TRITON_COPIES] if "triton" in backends else backends
    jobs += [("temporal", grid, b) for grid in args.grids_temporal for b in temporal_backends]
    rows, by_key = [], {}
    for kind, grid, backend in tqdm(jobs, desc="scan benchmark", unit="run"):
        directions = args.temporal_directions if kind == "temporal" else args.directions
        x = make_inputs(kind, args.batch, args.dim, args.d_state, grid, directions, args.device, dtype, args.frames)
        repeats = args.baseline_repeats if backend in ("loop", "reference") else args.repeats
        result = measure(kind, backend, x, args.device, args.warmup, repeats)
        label = f"{grid}²×{args.frames}" if kind == "temporal" else f"{grid}²"
        result.update(kind=kind, grid=grid, label=label, backend=backend, bytes=moved_bytes(x))
        by_key[kind, grid, backend] = result
        rows.append(result)
    for r in rows:
        r["ref"] = by_key.get((r["kind"], r["grid"], "reference"))
        r["loop"] = by_key.get(("1d", r["grid"], "loop")) if r["kind"] == "1d" else None
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"# {now:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, dtype {args.dtype}, "
          f"batch {args.batch}, dim {args.dim}, d_state {args.d_state}, K {args.directions} "
          f"(temporal: {args.temporal_directions}, G²×frames), "
          f"median of {args.repeats} runs ({args.baseline_repeats} for loop/reference) after {args.warmup} warm-up")
    if args.device.type == "cuda":
        print(f"# GPU {torch.cuda.get_device_name(args.device)}, CUDA {torch.version.cuda}")
    print(f"device-to-device copy of {args.copy_mib} MiB: {copy_gbs:.3g} GB/s (read + write), the '% of copy' reference")
    print(format_table(rows, args.peak_gbs, copy_gbs))
    for grid in args.grids_temporal:
        fused, copies = by_key.get(("temporal", grid, "triton")), by_key.get(("temporal", grid, TRITON_COPIES))
        if fused and copies:
            print(f"{grid}²×{args.frames} temporal scan: fused {copies['fwd'] / fused['fwd']:.2f}× the copies forward, "
                  f"{copies['both'] / fused['both']:.2f}× forward+backward")
    for grid in args.grids_2d:
        triton, mamba = by_key.get(("2d", grid, "triton")), by_key.get(("2d", grid, "mamba_ssm"))
        if triton and mamba:
            print(f"{grid}² four-direction work: triton {mamba['fwd'] / triton['fwd']:.2f}× mamba_ssm forward, "
                  f"{mamba['both'] / triton['both']:.2f}× forward+backward")
    print()
    print(format_check_costs(rows))


if __name__ == "__main__":
    main()
