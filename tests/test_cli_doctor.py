"""`stylemamba doctor`: the bug-report printout, on this CPU machine and with a fake compiled backend."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfyui_stylemamba import kernels
from comfyui_stylemamba.stylemamba.cli import doctor, main
from test_kernels_self_check import FakeBackend, allow_named_triton_on_cpu, fresh_verdicts, install  # noqa: F401 (autouse)


def test_doctor_reports_versions_backends_and_autos_pick_on_cpu(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["doctor", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "stylemamba doctor: paste everything from here into a bug report"
    assert f"torch {torch.__version__} (no CUDA in this build)" in lines or f"torch {torch.__version__} (CUDA {torch.version.cuda} build)" in lines
    triton = importlib.metadata.version("triton")
    assert f"triton {triton} (imports)" in lines
    assert any(line.startswith("mamba-ssm ") for line in lines)
    assert "TRITON_INTERPRET=(unset)" in lines
    assert f"{torch.get_num_threads()} torch threads" in next(line for line in lines if line.startswith("  cpu: "))
    for dtype in ("float32", "bfloat16"):
        section = out.split(f"cpu, {dtype}:\n")[1].split("\n\n")[0].splitlines()
        assert section == [
            "  reference  runs: sequential loop, the tests' truth; auto never picks it",
            "  torch      runs: chunked fp32 scan, the self-check's reference",
            "  triton     unavailable: scan backend 'triton' needs a CUDA device, got cpu tensors "
            "(or TRITON_INTERPRET=1 for testing); use backend='torch' or 'auto'",
            "  mamba_ssm  unavailable: scan backend 'mamba_ssm' needs CUDA tensors, got cpu; use backend='torch' or 'auto'",
            "  auto       → torch (tries torch)",
        ]
    assert "cpu, float16:" not in out


def test_doctor_runs_the_checks_and_shows_a_failure_and_the_fallback(capsys, monkeypatch):
    allow_named_triton_on_cpu(monkeypatch)
    checks = install(monkeypatch, triton=FakeBackend(scale_2d=1.05).load)
    monkeypatch.setattr(doctor, "auto_order", kernels.auto_order)
    assert main(["doctor", "--device", "cpu", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "TRITON_INTERPRET=1" in out
    triton_line = next(line for line in out.splitlines() if line.startswith("  triton "))
    assert triton_line.startswith("  triton     FAILED its self-check in ")
    assert "largest difference 5.0e-02 (2d " in triton_line and "> tolerance 1e-02" in triton_line
    assert "  auto       → torch (tries triton > torch)" in out
    assert checks == [("triton", "cpu", torch.float16)]  # one check serves the line and auto's pick


def test_doctor_refuses_a_device_this_machine_lacks(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["doctor", "--device", "cuda:1"]) == 2
    assert "--device cuda:1: this machine has 0 CUDA device(s)" in capsys.readouterr().err
    assert main(["doctor", "--device", "gpu"]) == 2
    assert "--device 'gpu' is not a torch device" in capsys.readouterr().err


def test_doctor_help_and_the_console_script():
    help_run = subprocess.run([sys.executable, "-m", "comfyui_stylemamba", "doctor", "--help"],
                              capture_output=True, text=True, timeout=120)
    assert help_run.returncode == 0, help_run.stderr
    assert "paste it into a bug report" in help_run.stdout and "--dtype" in help_run.stdout
    script = shutil.which("stylemamba", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the stylemamba console script is not installed in this environment")
    run = subprocess.run([script, "doctor", "--device", "cpu", "--dtype", "float32"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "cpu, float32:" in run.stdout and "  auto       → torch (tries torch)" in run.stdout
