"""`stylemamba fit` and `stylize` without --checkpoint, end to end on tiny real-format models."""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_stylemamba.stylemamba.checkpoint import load_checkpoint, read_metadata
from comfyui_stylemamba.stylemamba.cli import main
from comfyui_stylemamba.stylemamba.images import load_image, save_image
from comfyui_stylemamba.stylemamba.training.taesd import build_decoder


@pytest.fixture
def content(tmp_path):
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4), size=(16, 20), mode="bilinear")
    return save_image(smooth, tmp_path / "content.png")


def fit_args(content, tiny_vae, tiny_siglip, output, *extra):
    return [
        "fit", str(content), "--style", "oil painting", "-o", str(output), "--vae", str(tiny_vae),
        "--text-encoder", str(tiny_siglip), "--iterations", "2", "--max-resolution", "16", *extra,
    ]


def test_fit_writes_a_loadable_checkpoint_and_never_overwrites(tmp_path, content, tiny_vae, tiny_siglip, capsys):
    output = tmp_path / "oil.safetensors"
    assert main(fit_args(content, tiny_vae, tiny_siglip, output, "--lr", "0.01", "--seed", "3")) == 0
    assert "2 steps in" in capsys.readouterr().out
    loaded = load_checkpoint(output)
    assert loaded.config.latent_channels == 4 and loaded.config.style_dim == 32
    training = json.loads(read_metadata(output)["training"])
    assert training["style"] == "oil painting" and training["source_text"] == "a photo"
    assert training["settings"]["lr"] == 0.01 and training["settings"]["seed"] == 3
    assert training["content_size"] == [12, 16] and training["content_files"] == ["content.png"]
    assert main(fit_args(content, tiny_vae, tiny_siglip, output)) == 2
    assert "already exists" in capsys.readouterr().err


def test_fit_with_a_tiny_decoder_and_its_refusals(tmp_path, content, tiny_vae, tiny_siglip, capsys):
    torch.manual_seed(0)
    torch.save(build_decoder(16).state_dict(), tmp_path / "taesd3_decoder.pth")
    wrong = fit_args(content, tiny_vae, tiny_siglip, tmp_path / "a.safetensors", "--train-decoder", str(tmp_path / "taesd3_decoder.pth"))
    assert main(wrong) == 2
    assert "decodes 16-channel latents (taesd3) but" in capsys.readouterr().err
    assert main(fit_args(content, tiny_vae, tiny_siglip, tmp_path / "b.txt")) == 2
    assert "must name a .safetensors checkpoint" in capsys.readouterr().err
    assert main(fit_args(content, tiny_vae, tiny_siglip, tmp_path / "c.safetensors", "--content-loss", "vgg")) == 2
    assert "needs --vgg-weights" in capsys.readouterr().err
    assert main(fit_args(tmp_path / "missing.png", tiny_vae, tiny_siglip, tmp_path / "d.safetensors")) == 2
    assert "image not found" in capsys.readouterr().err


def test_stylize_without_checkpoint_fits_and_saves_beside_the_output(tmp_path, content, tiny_vae, tiny_siglip, capsys):
    out = tmp_path / "out.png"
    args = [
        "stylize", str(content), "--style", "oil painting", "--vae", str(tiny_vae), "--text-encoder", str(tiny_siglip),
        "--iterations", "1", "--lr", "0.01", "-o", str(out),
    ]
    assert main(args) == 0
    assert "fitted 1 steps in " in capsys.readouterr().out  # benchmarks/main_command.py reads the fit's time from it
    fitted = tmp_path / "out.stylemamba.safetensors"
    assert load_image(out).shape == (1, 3, 16, 20)
    assert json.loads(read_metadata(fitted)["training"])["style"] == "oil painting"
    assert main([*args[:-2], "-o", str(tmp_path / "again.png"), "--checkpoint", str(fitted)]) == 0
    assert torch.equal(load_image(tmp_path / "again.png"), load_image(out))  # the saved checkpoint is the one used
    assert main(args) == 2  # neither the image nor the fitted checkpoint is replaced without --overwrite


def test_help_lists_the_fit_options(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "--train-decoder" in text and "--iterations" in text and "stabilityai/sd-vae-ft-mse" in text


def test_fit_video_reads_a_folder_of_frames_as_one_clip(tmp_path, content, tiny_vae, tiny_siglip, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    picture = load_image(content)
    for index in (2, 0, 1):  # written out of order: the folder is read sorted by name
        save_image(picture.roll(index, dims=-1), frames / f"frame_{index:03d}.png")
    output = tmp_path / "video.safetensors"
    assert main(fit_args(frames, tiny_vae, tiny_siglip, output, "--video", "--frames-per-step", "2")) == 0
    training = json.loads(read_metadata(output)["training"])
    assert training["content_files"] == ["frame_000.png", "frame_001.png", "frame_002.png"] and training["latent_frames"] == 3
    assert training["settings"]["video"] is True and training["settings"]["frames_per_step"] == 2
    assert training["settings"]["weights"]["temporal_second_order"] == 150.0

    save_image(torch.rand(1, 3, 8, 20), frames / "frame_003.png")
    assert main(fit_args(frames, tiny_vae, tiny_siglip, tmp_path / "odd.safetensors", "--video")) == 2
    assert "--video frames must all have the size of the first, frame_000.png (16, 20) (height, width); these differ: frame_003.png (8, 20)" in capsys.readouterr().err
    clip_file = tmp_path / "clip.mp4"
    clip_file.write_bytes(b"\0")
    assert main(fit_args(clip_file, tiny_vae, tiny_siglip, tmp_path / "mp4.safetensors", "--video")) == 2
    assert "--video reads frames, not video files (clip.mp4): PyAV is not a dependency" in capsys.readouterr().err
    assert main(fit_args(frames, tiny_vae, tiny_siglip, tmp_path / "dir.safetensors")) == 2
    assert "is a folder: name the image files, or pass --video" in capsys.readouterr().err
    assert main(fit_args(content, tiny_vae, tiny_siglip, tmp_path / "one.safetensors", "--video")) == 2
    assert "a video fit needs at least 3 latent frames" in capsys.readouterr().err


def test_fit_loss_set_patch_option_and_kept_weights_in_the_checkpoint(tmp_path, content, tiny_vae, tiny_siglip, capsys):
    paper = tmp_path / "paper.safetensors"
    assert main(fit_args(content, tiny_vae, tiny_siglip, paper)) == 0
    assert "kept the weights after update " in capsys.readouterr().out
    training = json.loads(read_metadata(paper)["training"])
    assert training["settings"]["weights"]["patch"] == 0.0 and training["settings"]["keep"] == "best"
    assert len(training["evaluation_losses"]) == 3 and training["kept_step"] in (1, 2)
    assert "lowest loss on the fixed evaluation" in training["kept_reason"]
    patch = tmp_path / "patch.safetensors"
    options = ("--patch-loss", "--patch-crops", "3", "--patch-crop-resolution", "16", "--keep", "last")
    assert main(fit_args(content, tiny_vae, tiny_siglip, patch, *options)) == 0
    training = json.loads(read_metadata(patch)["training"])
    weights = training["settings"]["weights"]
    assert (weights["patch"], weights["num_crops"], weights["crop_resolution"]) == (9000.0, 3, 16)
    assert training["kept_step"] == 2 and training["evaluation_losses"] == [] and "keep=last" in training["kept_reason"]
    capsys.readouterr()
    assert main(fit_args(content, tiny_vae, tiny_siglip, tmp_path / "x.safetensors", "--patch-crops", "0")) == 2
    assert "--patch-crops must be at least 1, got 0" in capsys.readouterr().err
    assert main(fit_args(content, tiny_vae, tiny_siglip, tmp_path / "x.safetensors", "--patch-crop-resolution", "-8")) == 2
    assert "--patch-crop-resolution must be 0 (the encoder's input size) or more, got -8" in capsys.readouterr().err
