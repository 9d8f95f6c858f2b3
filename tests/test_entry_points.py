"""How the pack is started: never as an import root, quiet, and quick to refuse bad input or an unreachable model.

The repository root is a package holding ``kernels/`` and ``nodes/``; on ``sys.path`` it would shadow the PyPI
package ``kernels`` that transformers 5 and diffusers import (and ComfyUI's ``nodes``).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from comfyui_stylemamba import sys_path_guard
from comfyui_stylemamba.stylemamba import pretrained
from comfyui_stylemamba.stylemamba.cli import main
from comfyui_stylemamba.stylemamba.encoders import EncoderNotFoundError, TextEncoder

ROOT = Path(__file__).resolve().parents[1]


def ours(origin: str | None, name: str) -> bool:
    """Whether a module file is our top-level folder ``name`` (a venv inside the checkout is not ours)."""
    return origin is not None and Path(origin).resolve().parent == ROOT / name


def test_our_kernels_and_nodes_are_not_top_level_modules_in_the_test_process():
    for name in ("kernels", "nodes"):
        spec = importlib.util.find_spec(name)
        assert spec is None or not ours(spec.origin, name), f"{name} resolves to {spec.origin}"


def test_the_library_integrations_that_import_pypi_kernels_load():
    """diffusers' PEFT loader imports transformers' hub-kernel integration, which reads ``kernels.CUDAProperties``
    with transformers 5: it failed to import while our folder shadowed the PyPI package."""
    importlib.import_module("diffusers.loaders.peft")
    assert not ours(getattr(sys.modules.get("kernels"), "__file__", None), "kernels")


def test_the_guard_drops_the_package_folder_and_only_it(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", ["", str(ROOT), str(ROOT / "tests"), str(tmp_path), str(ROOT) + "/."])
    sys_path_guard.drop_package_folder()
    assert sys.path == [str(ROOT / "tests"), str(tmp_path)]
    assert sys_path_guard.PACKAGE_FOLDER == ROOT


def quiet_environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}


def test_module_entry_runs_from_the_repository_root_with_one_line_per_stage(tmp_path, tiny_vae, tiny_siglip, shared_assets):
    """``python -m comfyui_stylemamba`` started inside the repository (which puts it first on sys.path) fits,
    saves and applies, printing our own stage lines and progress bars and no library's warnings or bars."""
    output = tmp_path / "boat.png"
    command = [
        sys.executable, "-m", "comfyui_stylemamba", "stylize", str(shared_assets / "images" / "boat.jpg"),
        "--style", "oil painting", "--vae", str(tiny_vae), "--text-encoder", str(tiny_siglip),
        "--iterations", "2", "--max-resolution", "32", "-o", str(output),
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=quiet_environment())
    assert run.returncode == 0, run.stderr[-3000:]
    assert output.is_file() and output.with_suffix(".stylemamba.safetensors").is_file()
    printed = run.stdout + run.stderr
    for line in (f"loading the VAE {tiny_vae}", f"loading SigLIP {tiny_siglip}", f"wrote {output}"):
        assert line in printed
    for noise in ("Warning", "warn(", "accelerate", "Loading weights", "local_dir_use_symlinks"):
        assert noise not in printed, f"{noise!r} in the output:\n{printed[-3000:]}"


@pytest.fixture
def no_models(monkeypatch):
    """Fails the test if a command gets as far as asking for a model."""
    from comfyui_stylemamba.stylemamba.cli import fit, stylize

    def touched(*args, **kwargs):
        raise AssertionError("a model source was checked or loaded before the bad input was reported")

    for module in (stylize, fit):
        monkeypatch.setattr(module, "check_model_sources", touched)
        monkeypatch.setattr(module, "load_vae_and_siglip", touched)


@pytest.mark.parametrize("command", ["stylize", "fit"])
@pytest.mark.parametrize(
    "case,message",
    [
        ("missing image", "image not found: "),
        ("text file as image", "is not an image file PIL can read"),
        ("empty style", "--style"),
    ],
)
def test_bad_inputs_are_reported_before_any_model(tmp_path, capsys, no_models, shared_assets, command, case, message):
    image = shared_assets / "images" / "boat.jpg"
    style = "oil painting"
    if case == "missing image":
        image = tmp_path / "no_such_photo.jpg"
    elif case == "text file as image":
        image = tmp_path / "notes.jpg"
        image.write_text("not a picture")
    else:
        style = ""
    output = tmp_path / ("out.png" if command == "stylize" else "out.safetensors")
    assert main([command, str(image), "--style", style, "-o", str(output)]) == 2  # default VAE and SigLIP: hub ids
    error = capsys.readouterr().err
    assert message in error and (case != "empty style" or "is empty" in error)
    assert not output.exists()


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--iterations", "0", "--iterations must be at least 1, got 0"),
        ("--lr", "0", "--lr must be above 0"),
        ("--max-resolution", "4", "--max-resolution must be at least 8"),
        ("--vgg-weights", "absent.pth", "VGG-19 weights not found: absent.pth"),
        ("--train-decoder", "absent_decoder.pth", "--train-decoder file not found"),
        ("--source", " ", "content description is empty (--source ' ')"),
    ],
)
def test_bad_fit_numbers_and_files_are_reported_before_any_model(tmp_path, capsys, no_models, shared_assets, option, value, message):
    image = shared_assets / "images" / "boat.jpg"
    assert main(["stylize", str(image), "--style", "ink", option, value, "-o", str(tmp_path / "o.png")]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    pretrained.hub_unreachable.cache_clear()
    yield tmp_path / "hub-cache"
    pretrained.hub_unreachable.cache_clear()


def test_offline_hub_id_is_refused_at_once_naming_what_to_pass(monkeypatch, empty_hub_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("the network was asked while offline"))
    with pytest.raises(pretrained.ModelSourceError, match=r"VAE 'org/vae' is not on this machine .*HF_HUB_OFFLINE is set.*config.json"):
        pretrained.pretrained_source("org/vae", "VAE", "config.json + weights")
    with pytest.raises(EncoderNotFoundError, match=r"HF_HUB_OFFLINE is set.*models/siglip/siglip-x/"):
        TextEncoder.from_pretrained("google/siglip-x")


def test_unreachable_hub_is_asked_once_without_retries(monkeypatch, empty_hub_cache):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    attempts = []

    def refuse(address, timeout):
        attempts.append((address, timeout))
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for _ in range(2):
        with pytest.raises(pretrained.ModelSourceError, match="cannot be reached: Name or service not known"):
            pretrained.pretrained_source("org/vae", "VAE", "files")
    assert len(attempts) == 1 and attempts[0][1] == pretrained.HUB_PROBE_TIMEOUT


def test_reachable_hub_allows_a_download_and_the_cache_loads_without_network(monkeypatch, empty_hub_cache):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    class Connection:
        def close(self) -> None:
            pass

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Connection())
    assert pretrained.pretrained_source("org/vae", "VAE", "files") is False  # download allowed
    # the hub cache's layout: refs/main names the snapshot holding the files
    repo = empty_hub_cache / "models--org--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pretrained.pretrained_source("org/cached", "VAE", "files") is True


def test_local_folders_and_missing_paths(tmp_path):
    assert pretrained.pretrained_source(str(tmp_path), "VAE", "files") is True
    for missing in (str(tmp_path / "absent"), "./models/vae", "~/nowhere/vae", "C:/models/vae"):
        with pytest.raises(pretrained.ModelSourceError, match="VAE folder not found: "):
            pretrained.pretrained_source(missing, "VAE", "files")


def test_quiet_loading_silences_and_restores(capfd, tiny_siglip):
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    TextEncoder.from_pretrained(str(tiny_siglip))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert logging.get_verbosity() == verbosity and logging.is_progress_bar_enabled()
    assert not are_progress_bars_disabled()  # the hub's download bars stay on
