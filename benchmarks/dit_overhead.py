"""What the StyleStudio DiT overhead benchmarks (``stylestudio_dit.py overhead``, ``stylestudio_sd3.py``) measure alike.

A model is called as a sampler calls it (through the node's model function wrapper, when there is one), timed in
CPU seconds of this process (wall time on a shared machine measures the neighbours), configurations taken round
robin (a busy moment does not fall on one configuration only), and the teacher's hand-over counted in bytes as the
styled pass receives it. Import after ComfyUI's ``--cpu`` is set (the probes set it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def seconds_per_call(model: Any, x: torch.Tensor, sigma: torch.Tensor, c: dict[str, Any], cond_or_uncond: list[int],
                     steps: int) -> float:
    """CPU seconds per model call of the patched ``model`` (a ModelPatcher) on ``x`` at ``sigma`` with conditioning ``c``."""
    c = {**c, "transformer_options": {**model.model_options["transformer_options"], "sigmas": sigma, "cond_or_uncond": cond_or_uncond}}
    wrapper, apply_model = model.model_options.get("model_function_wrapper"), model.model.apply_model
    start = time.process_time()
    with torch.inference_mode():
        for _ in range(steps):
            if wrapper is None:
                apply_model(x, sigma, **c)
            else:
                wrapper(apply_model, {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": cond_or_uncond})
    return (time.process_time() - start) / steps


def round_robin_medians(configurations: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """The median of ``repeats`` measurements per configuration, taken one of each in turn."""
    runs: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(repeats):
        for name, measure in configurations.items():
            runs[name].append(measure())
    return {name: statistics.median(times) for name, times in runs.items()}


def count_handover(dit: Any) -> list[int]:
    """Bytes of every hand-over the styled pass receives from now on (appended per model call), hooked into ``dit``'s wrapper."""
    handed: list[int] = []
    run = dit.DiTStyleWrapper._run

    def measuring_run(self, apply_model, call_args, batch, handover):
        if handover is not None and not handover.recording:
            handed.append(sum(t.numel() * t.element_size() for qk in handover.qk.values() for t in qk))
        return run(self, apply_model, call_args, batch, handover)

    dit.DiTStyleWrapper._run = measuring_run
    return handed


def print_table(rows: dict[str, float], baseline: str) -> None:
    """The markdown table of seconds per step and the ratio to the first row (``baseline`` names that column)."""
    first = next(iter(rows.values()))
    print(f"| configuration | CPU s/step | × {baseline} |\n|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.4f} | {seconds / first:.2f} |")
