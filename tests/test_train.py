"""Multi-style training: exact resume, DDP with 2 gloo processes, logs, grids and refusals."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
from PIL import Image

from comfyui_stylemamba.stylemamba.checkpoint import load_checkpoint, read_metadata
from comfyui_stylemamba.stylemamba.cli import main
from comfyui_stylemamba.stylemamba.cli.train import read_styles
from comfyui_stylemamba.stylemamba.images import save_image
from comfyui_stylemamba.stylemamba.training.train import draw_sample_grid, step_generator


@pytest.fixture
def dataset(tmp_path):
    torch.manual_seed(0)
    images = tmp_path / "images"
    for index, size in enumerate([(20, 24), (16, 16), (30, 18)]):
        save_image(torch.rand(1, 3, *size), images / f"{index}.png")
    styles = tmp_path / "styles.txt"
    styles.write_text("oil painting\n# a comment\n\nwatercolor sketch\npencil\n")
    return images, styles


def train_args(dataset, tiny_vae, tiny_siglip, out, *extra):
    images, styles = dataset
    return [
        "train", "--images", str(images), "--styles", str(styles), "--out", str(out), "--vae", str(tiny_vae),
        "--text-encoder", str(tiny_siglip), "--width", "16", "--depth", "1", "--resolution", "16",
        "--batch-size", "2", "--num-crops", "2", "--lr", "0.01", "--device", "cpu", *extra,
    ]


def log_rows(out):
    with (out / "loss.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_resume_repeats_the_uninterrupted_run(tmp_path, dataset, tiny_vae, tiny_siglip, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(train_args(dataset, tiny_vae, tiny_siglip, straight, "--steps", "3", "--checkpoint-every", "2")) == 0
    assert main(train_args(dataset, tiny_vae, tiny_siglip, resumed, "--steps", "2", "--checkpoint-every", "2")) == 0
    assert main(train_args(dataset, tiny_vae, tiny_siglip, resumed, "--steps", "3")) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(train_args(dataset, tiny_vae, tiny_siglip, resumed, "--steps", "3", "--checkpoint-every", "2", "--resume")) == 0

    a = load_checkpoint(straight / "checkpoints" / "step_000003.safetensors").model.state_dict()
    b = load_checkpoint(resumed / "checkpoints" / "step_000003.safetensors").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in log_rows(resumed)] == ["1", "2", "3"]
    assert [r["total"] for r in log_rows(resumed)] == [r["total"] for r in log_rows(straight)]

    training = json.loads(read_metadata(straight / "checkpoints" / "step_000002.safetensors")["training"])
    assert training["prompts"] == ["oil painting", "watercolor sketch", "pencil"] and training["step"] == 2
    grid = Image.open(straight / "samples" / "step_000002.png")
    # 3 content rows; the reference column + 3 styles; the tiny VAE keeps 16 px
    assert grid.size == (4 * 16, 3 * 16)
    assert Image.open(straight / "loss.png").size == (640, 360)


REPO_ROOT = Path(__file__).resolve().parents[1]


def test_ddp_with_two_gloo_processes(tmp_path, dataset, tiny_vae, tiny_siglip):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "comfyui_stylemamba", *train_args(dataset, tiny_vae, tiny_siglip, out, "--steps", "2", "--checkpoint-every", "1"),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # from the repository root, where ``-m`` puts this folder first on sys.path (the pack's guard takes it off)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=REPO_ROOT)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("finished 2 steps") == 1  # only rank 0 reports and writes
    assert [r["step"] for r in log_rows(out)] == ["1", "2"]
    training = json.loads(read_metadata(out / "checkpoints" / "step_000002.safetensors")["training"])
    assert training["world_size"] == 2
    first = load_checkpoint(out / "checkpoints" / "step_000001.safetensors").model
    second = load_checkpoint(out / "checkpoints" / "step_000002.safetensors").model
    assert not torch.equal(first.head.weight, second.head.weight)


def test_train_and_evaluate_read_the_same_prompts(tmp_path):
    from comfyui_stylemamba.stylemamba.cli import evaluate, train

    path = tmp_path / "styles.txt"
    path.write_text("# prompts\noil painting\n\npencil sketch  # a comment\noil painting\n")
    assert train.read_styles(path) == evaluate.read_styles(path) == ["oil painting", "pencil sketch"]


def test_styles_file_and_generators(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="has no style prompts"):
        read_styles(empty)
    with pytest.raises(FileNotFoundError, match="styles file not found"):
        read_styles(tmp_path / "missing.txt")
    draws = [torch.rand(3, generator=step_generator(0, step, rank)) for step, rank in [(1, 0), (1, 0), (1, 1), (2, 0)]]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[3])


def test_sample_grid_layout(tmp_path):
    images = torch.zeros(6, 3, 4, 5)
    images[4] = 1.0  # row 1, column 1
    draw_sample_grid(images, 2, tmp_path / "grid.png")
    array = torch.from_numpy(numpy.array(Image.open(tmp_path / "grid.png")))
    assert array.shape == (8, 15, 3)
    assert array[4:, 5:10].min() == 255 and array[:4].max() == 0 and array[4:, :5].max() == 0
