"""``doctor``: everything a bug report about wrong images or slow scans needs, in one paste.

Versions of torch, Triton, mamba-ssm and CUDA, the devices, each scan backend's state on each device and
dtype (unavailable and why, or its self-check verdict with the numbers: the checks run here) and the
backend ``auto`` picks there.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import warnings

import torch

from ...kernels import BACKENDS, COMPILED, MAMBA_MODULE, ScanBackendWarning, auto_order, check_verdict, resolve_backend

HELP = "Print versions, devices, each scan backend's self-check and what backend='auto' picks: paste it into a bug report."

DTYPES = ("float32", "bfloat16", "float16")

#: What the two always-available backends are, since they have no check of their own.
ROLES = {
    "reference": "sequential loop, the tests' truth; auto never picks it",
    "torch": "chunked fp32 scan, the self-check's reference",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", action="append", dest="devices", metavar="DEVICE",
        help="device to check, repeatable: cpu, cuda, cuda:1, mps (default: cpu, every CUDA device, and mps when present)",
    )
    parser.add_argument(
        "--dtype", nargs="+", dest="dtypes", choices=DTYPES, default=["float32", "bfloat16"],
        help="scan input dtypes to check (default: float32 bfloat16, what the model runs in)",
    )


def default_devices() -> list[torch.device]:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append(torch.device("mps"))
    return devices


def parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device {name!r} is not a torch device ({error}); e.g. cpu, cuda, cuda:1, mps") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) visible to torch {torch.__version__}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here")
    return device


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def import_problem(module: str) -> str | None:
    """Why ``module`` does not import (a missing or mismatched compiled extension), or None."""
    try:
        importlib.import_module(module)
    except (ImportError, OSError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def nvidia_driver() -> str:
    """The driver version as nvidia-smi reports it; torch does not expose it."""
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi on PATH"
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return f"nvidia-smi failed ({error})"
    return ", ".join(sorted(set(result.stdout.split()))) or "unknown"


def environment_lines() -> list[str]:
    lines = [
        f"stylemamba {package_version('stylemamba') or 'not installed as a package'} · "
        f"Python {platform.python_version()} · {platform.platform()}",
        f"torch {torch.__version__} (" + (f"CUDA {torch.version.cuda} build" if torch.version.cuda else "no CUDA in this build") + ")",
    ]
    for distribution, module in (("triton", "triton"), ("mamba-ssm", MAMBA_MODULE)):
        version = package_version(distribution)
        if version is None:
            lines.append(f"{distribution} not installed")
            continue
        problem = import_problem(module)
        lines.append(f"{distribution} {version} (" + (f"{module} does not import: {problem}" if problem else "imports") + ")")
    if torch.cuda.is_available():
        lines.append(f"CUDA available: {torch.cuda.device_count()} device(s), NVIDIA driver {nvidia_driver()}")
    else:
        lines.append("CUDA not available")
    lines.append(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '(unset)')}")
    return lines


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"{device}: {props.name}, compute capability {props.major}.{props.minor}, "
                f"{props.total_memory / 2**30:.0f} GiB")
    if device.type == "cpu":
        return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    return str(device)


def backend_line(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """One backend's state: its role, why it cannot run here, or its self-check verdict (checked now)."""
    if name not in COMPILED:
        return f"runs: {ROLES[name]}"
    try:
        resolve_backend(name, device)
    except RuntimeError as error:
        return f"unavailable: {error}"
    verdict = check_verdict(name, device, dtype)
    return f"{'passed' if verdict.passed else 'FAILED'} its self-check in {verdict.seconds:.2f} s: {verdict.finding()}"


def scan_section(device: torch.device, dtype: torch.dtype) -> list[str]:
    lines = [f"{device}, {str(dtype).removeprefix('torch.')}:"]
    for name in BACKENDS:
        if name != "auto":
            lines.append(f"  {name:<10} {backend_line(name, device, dtype)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanBackendWarning)  # the verdicts are printed above
        picked = resolve_backend("auto", device, dtype)
    lines.append(f"  {'auto':<10} → {picked} (tries {' > '.join(auto_order(device))})")
    return lines


def run(args: argparse.Namespace) -> int:
    devices = [parse_device(name) for name in args.devices] if args.devices else default_devices()
    lines = ["stylemamba doctor: paste everything from here into a bug report", *environment_lines(), "devices:"]
    lines += [f"  {describe_device(device)}" for device in devices]
    for device in devices:
        for dtype in args.dtypes:
            lines += ["", *scan_section(device, getattr(torch, dtype))]
    print("\n".join(lines))
    return 0
