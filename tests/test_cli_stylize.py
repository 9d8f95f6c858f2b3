"""`stylemamba stylize` end to end on tiny real-format models, and its refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba, save_checkpoint
from comfyui_stylemamba.stylemamba.cli import main
from comfyui_stylemamba.stylemamba.images import load_image, save_image

from builders import tiny_config, trained_like


@pytest.fixture
def content(tmp_path):
    torch.manual_seed(0)
    return save_image(torch.rand(1, 3, 21, 30), tmp_path / "content.png")


def test_stylize_writes_a_changed_image_of_the_same_size(tmp_path, checkpoint, content, tiny_vae):
    out = tmp_path / "out.png"
    args = ["stylize", str(content), "--style", "oil painting", "--checkpoint", str(checkpoint), "--vae", str(tiny_vae), "-o", str(out)]
    assert main(args) == 0
    result = load_image(out)
    assert result.shape == (1, 3, 21, 30)
    assert main([*args[:-2], "--strength", "0", "-o", str(tmp_path / "same.png")]) == 0
    unchanged = load_image(tmp_path / "same.png")
    assert (result - unchanged).abs().mean() > 1 / 255  # the style changed the picture
    assert main(args) == 2  # refuses to overwrite
    assert main([*args, "--overwrite"]) == 0


def test_several_images_go_into_a_folder(tmp_path, checkpoint, content, tiny_vae):
    second = save_image(torch.rand(1, 3, 16, 16), tmp_path / "second.png")
    folder = tmp_path / "styled"
    args = ["stylize", str(content), str(second), "--style", "sketch", "--checkpoint", str(checkpoint), "--vae", str(tiny_vae)]
    assert main([*args, "-o", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["content_stylized.png", "second_stylized.png"]
    assert main([*args, "-o", str(tmp_path / "one.png")]) == 2


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--strength", "3"], "--strength must be between 0 and 2"),
        (["--style", " "], "style text is empty"),
    ],
)
def test_bad_inputs_exit_2_with_a_message(tmp_path, checkpoint, content, tiny_vae, capsys, extra, message):
    args = ["stylize", str(content), "--style", "ink", "--checkpoint", str(checkpoint), "--vae", str(tiny_vae), "-o", str(tmp_path / "o.png")]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err


def test_missing_files_are_named(tmp_path, checkpoint, tiny_vae, capsys):
    args = ["stylize", str(tmp_path / "nope.png"), "--style", "ink", "--checkpoint", str(checkpoint), "--vae", str(tiny_vae), "-o", str(tmp_path / "o.png")]
    assert main(args) == 2
    assert "image not found" in capsys.readouterr().err


def test_latent_channel_mismatch_with_the_vae(tmp_path, tiny_siglip, content, tiny_vae, capsys):
    sixteen = StyleMamba(model=trained_like(tiny_config(style_dim=32, latent_channels=16)), text_encoder=str(tiny_siglip))
    path = save_checkpoint(sixteen, tmp_path / "flux.safetensors")
    assert main(["stylize", str(content), "--style", "ink", "--checkpoint", str(path), "--vae", str(tiny_vae), "-o", str(tmp_path / "o.png")]) == 2
    assert "expects 16-channel latents" in capsys.readouterr().err


def test_module_entry_has_help():
    result = subprocess.run([sys.executable, "-m", "comfyui_stylemamba", "stylize", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--checkpoint" in result.stdout and "--strength" in result.stdout
