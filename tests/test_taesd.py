"""TAESD-family loader: weights load strictly, channels are inferred, mismatches are named, real TAEF2 round-trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.stylemamba.images import load_image
from comfyui_stylemamba.stylemamba.training.taesd import (
    FAMILIES,
    TinyAutoencoder,
    TinyAutoencoderError,
    build_decoder,
    build_encoder,
    find_pair,
    load_tiny_autoencoder,
)


def save_random_tae(folder, name: str, channels: int, group_norm: bool = False, fmt: str = "pth"):
    torch.manual_seed(channels)
    paths = []
    for part, builder in (("decoder", build_decoder), ("encoder", build_encoder)):
        state = builder(channels, group_norm).state_dict()
        path = folder / f"{name}_{part}.{fmt}"
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(state, path)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("name", "channels", "fmt"),
    [("taesd", 4, "pth"), ("taesdxl", 4, "safetensors"), ("taesd3", 16, "pth"), ("taef1", 16, "safetensors")],
)
def test_family_from_name_and_weights_and_raw_latent_scaling(tmp_path, name, channels, fmt):
    decoder_path, encoder_path = save_random_tae(tmp_path, name, channels, fmt=fmt)
    tae = load_tiny_autoencoder(decoder_path, encoder_path)
    family = FAMILIES[name]
    assert tae.family == family and tae.latent_channels == channels
    raw = torch.randn(1, channels, 3, 5)
    expected = tae.decoder((raw - family.shift) * family.scale).clamp(0, 1)
    assert torch.equal(tae.decode(raw), expected)
    assert tae.decode(raw).shape == (1, 3, 24, 40)
    image = torch.rand(1, 3, 16, 24)
    assert torch.allclose(tae.encode(image), tae.encoder(image) / family.scale + family.shift)


def test_pair_is_found_from_either_file(tmp_path):
    decoder_path, encoder_path = save_random_tae(tmp_path, "taesd", 4)
    assert find_pair(decoder_path) == (decoder_path, encoder_path)
    assert find_pair(encoder_path) == (decoder_path, encoder_path)


def test_combined_file_with_comfy_prefixes(tmp_path):
    from safetensors.torch import save_file

    state = {f"taesd_decoder.{k}": v for k, v in build_decoder(16).state_dict().items()}
    state |= {f"taesd_encoder.{k}": v for k, v in build_encoder(16).state_dict().items()}
    path = tmp_path / "taef1.safetensors"
    save_file(state, str(path))
    tae = load_tiny_autoencoder(path)
    assert tae.family.name == "taef1" and tae.encoder is not None and tae.decoder is not None


def test_mismatches_are_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    decoder4, _ = save_random_tae(tmp_path / "a", "taesd", 4)
    _, encoder16 = save_random_tae(tmp_path / "b", "taesd3", 16)
    with pytest.raises(TinyAutoencoderError, match="encoder makes 16-channel latents but decoder reads 4"):
        load_tiny_autoencoder(decoder4, encoder16)
    wrong_name = tmp_path / "taesd3_decoder.pth"
    wrong_name.write_bytes(decoder4.read_bytes())
    with pytest.raises(TinyAutoencoderError, match="named like taesd3 .16-channel latents. but its weights have 4"):
        load_tiny_autoencoder(wrong_name)
    anonymous = tmp_path / "mystery_decoder.pth"
    anonymous.write_bytes((tmp_path / "b" / "taesd3_decoder.pth").read_bytes())
    with pytest.raises(TinyAutoencoderError, match="could be taesd3 or taef1"):
        load_tiny_autoencoder(anonymous)
    assert load_tiny_autoencoder(anonymous, family="taef1").family.name == "taef1"
    with pytest.raises(TinyAutoencoderError, match="taef2 uses 32-channel latents but the weights have 16"):
        load_tiny_autoencoder(anonymous, family="taef2")
    tae = load_tiny_autoencoder(decoder4)
    with pytest.raises(TinyAutoencoderError, match="taesd decodes 4-channel latents, got shape .1, 16, 2, 2."):
        tae.decode(torch.zeros(1, 16, 2, 2))
    with pytest.raises(TinyAutoencoderError, match="loaded without its encoder"):
        tae.encode(torch.zeros(1, 3, 8, 8))


def test_bad_files(tmp_path):
    garbage = tmp_path / "taesd_decoder.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(TinyAutoencoderError, match="not a readable state dict"):
        load_tiny_autoencoder(garbage)
    foreign = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(TinyAutoencoderError, match="neither a TAESD-family decoder"):
        load_tiny_autoencoder(foreign)
    with pytest.raises(FileNotFoundError, match="tiny autoencoder file not found"):
        load_tiny_autoencoder(tmp_path / "missing_decoder.pth")


def test_decode_is_differentiable():
    torch.manual_seed(0)
    model = TinyAutoencoder(FAMILIES["taesd"], build_decoder(4))
    latent = torch.randn(1, 4, 4, 4, requires_grad=True)
    model.decode(latent).mean().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def taef2(shared_assets):
    folder = shared_assets / "taef2"
    return load_tiny_autoencoder(folder / "taef2_decoder.pth", folder / "taef2_encoder.pth")


def test_real_taef2_round_trip_keeps_the_photo(taef2, shared_assets):
    from comfyui_stylemamba.stylemamba.training.metrics import ssim

    assert taef2.family.name == "taef2" and taef2.latent_channels == 32
    assert any(".pool." in key for key in taef2.decoder.state_dict())
    photo = load_image(shared_assets / "images" / "boat.jpg")[..., 128:256, 192:320]
    with torch.no_grad():
        latent = taef2.encode(photo)
        restored = taef2.decode(latent)
    assert latent.shape == (1, 32, 16, 16)
    psnr = 10 * torch.log10(1 / F.mse_loss(restored, photo))
    assert psnr > 25, f"TAEF2 round trip PSNR {psnr:.1f} dB"
    assert ssim(restored, photo).item() > 0.85
