"""Checkpoints: exact round trip, metadata, atomic non-clobbering saves, and every bad file named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from comfyui_stylemamba.stylemamba import checkpoint as ckpt
from comfyui_stylemamba.stylemamba.checkpoint import (
    CheckpointError,
    StyleMamba,
    load_checkpoint,
    new_style_mamba,
    read_metadata,
    save_checkpoint,
)
from comfyui_stylemamba.stylemamba.config import StyleMambaConfig

from builders import tiny_config, trained_like


@pytest.fixture
def trained() -> StyleMamba:
    return StyleMamba(model=trained_like(tiny_config()), text_encoder="google/siglip-base-patch16-224", training={"prompt": "ink wash"})


def test_round_trip_gives_identical_outputs_and_metadata(tmp_path, trained):
    path = save_checkpoint(trained, tmp_path / "ink.safetensors")
    loaded = load_checkpoint(path)
    latent, style = torch.randn(2, 4, 7, 9), torch.randn(1, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(latent, style), trained.model(latent, style))
    assert loaded.config == trained.config
    assert loaded.text_encoder == "google/siglip-base-patch16-224"
    assert loaded.training == {"prompt": "ink wash"}
    metadata = read_metadata(path)
    assert metadata["format"] == "stylemamba" and metadata["latent_channels"] == "4" and metadata["style_dim"] == "8"
    assert json.loads(metadata["config"])["width"] == 16


def test_new_model_is_reproducible_from_its_seed():
    a = new_style_mamba(tiny_config(), seed=3).model.state_dict()
    b = new_style_mamba(tiny_config(), seed=3).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_save_never_overwrites_unless_asked(tmp_path, trained):
    path = tmp_path / "style.safetensors"
    path.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError, match="already exists"):
        save_checkpoint(trained, path)
    assert path.read_bytes() == b"the user's file"
    save_checkpoint(trained, path, overwrite=True)
    assert read_metadata(path)["format"] == "stylemamba"


def test_saved_file_has_ordinary_permissions(tmp_path, trained):
    """A temp-file write must not leave a 0600 file that other users of a shared models folder cannot read."""
    import os

    umask = os.umask(0o022)
    try:
        path = save_checkpoint(trained, tmp_path / "shared.safetensors")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["shared.safetensors"]


def test_failed_save_leaves_nothing_behind(tmp_path, trained, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(trained, tmp_path / "style.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_save_requires_safetensors_suffix(tmp_path, trained):
    with pytest.raises(CheckpointError, match="must end in .safetensors"):
        save_checkpoint(trained, tmp_path / "style.ckpt")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path, trained):
    path = save_checkpoint(trained, tmp_path / "style.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "style.safetensors"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_up.weight": torch.zeros(2, 2)}, str(path), metadata={"ss_network_module": "networks.lora"})
    with pytest.raises(CheckpointError, match="not a StyleMamba checkpoint"):
        load_checkpoint(path)


def test_weights_that_do_not_match_the_config_are_listed(tmp_path, trained):
    path = tmp_path / "style.safetensors"
    tensors = {k: v.contiguous() for k, v in trained.model.state_dict().items()}
    tensors.pop("head.bias")
    tensors["stem.weight"] = torch.zeros(3, 3)
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(path), metadata=ckpt.checkpoint_metadata(trained))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "missing head.bias" in message
    assert "unexpected extra.weight" in message
    assert "stem.weight: file has shape (3, 3), expected (16, 4, 2, 2)" in message


@pytest.mark.parametrize(
    "change,message",
    [
        ({"format_version": "99"}, "format 99; this pack reads up to 2"),
        ({"config": '{"width": -1}'}, "bad model config"),
        ({"latent_channels": "16"}, "latent_channels=16 disagrees with the config's 4"),
        ({"text_encoder": ""}, "does not name the text encoder"),
    ],
)
def test_bad_metadata_is_named(tmp_path, trained, change, message):
    path = tmp_path / "style.safetensors"
    metadata = {**ckpt.checkpoint_metadata(trained), **change}
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_latent_check_explains_the_family_with_one_error_type(trained):
    """The up-front check (stylize, fit, commands) and the model's own are one check with one message and type."""
    from comfyui_stylemamba.stylemamba.model import ModelInputError

    message = "expects 4-channel latents .an SD1.5/SDXL VAE., but the LATENT has 32 channels: it comes from a Flux.2 VAE"
    with pytest.raises(ModelInputError, match=message):
        trained.model.check_latent_channels(32)
    with pytest.raises(ModelInputError, match=message):
        trained.model(torch.randn(1, 32, 4, 4), torch.randn(1, 8))
    new_style_mamba(StyleMambaConfig(latent_channels=16)).model.check_latent_channels(16)
