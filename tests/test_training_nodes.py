"""TrainStyleMamba / SaveStyleMamba as ComfyUI runs them: inside torch.inference_mode(), on inference tensors."""

from __future__ import annotations

import json

import pytest
import torch

from comfyui_stylemamba.nodes import comfy_bridge, training_nodes
from comfyui_stylemamba.nodes.training_nodes import FULL_VAE, SaveStyleMamba, TrainStyleMamba, preview_image
from comfyui_stylemamba.stylemamba.checkpoint import load_checkpoint, new_style_mamba, read_metadata
from comfyui_stylemamba.stylemamba.training.taesd import build_decoder

from builders import tiny_config


class FirstStage(torch.nn.Module):
    """ComfyUI's first_stage_model contract: encode([-1, 1] images) → latents, decode(latents) → [-1, 1] images."""

    def __init__(self, autoencoder: torch.nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(x).latent_dist.mode()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z).sample


class FakeComfyVAE:
    """The parts of comfy.sd.VAE the node uses, with weights created under inference mode as ComfyUI's are."""

    latent_channels = 4
    vae_dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, folder):
        from diffusers import AutoencoderKL

        self.first_stage_model = FirstStage(AutoencoderKL.from_pretrained(folder)).eval()

    @staticmethod
    def process_output(image: torch.Tensor) -> torch.Tensor:
        return torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model.encode(pixels.movedim(-1, 1) * 2 - 1).float()


@pytest.fixture(scope="module")
def comfy_vae(tiny_vae):
    with torch.inference_mode():
        vae = FakeComfyVAE(tiny_vae)
    assert next(vae.first_stage_model.parameters()).is_inference()
    return vae


@pytest.fixture
def inputs(tiny_siglip):
    with torch.inference_mode():
        torch.manual_seed(0)
        images = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4), size=(16, 24), mode="bilinear").movedim(1, -1)
        start = new_style_mamba(tiny_config(style_dim=32, depth=1), text_encoder=str(tiny_siglip))
    return dict(images=images, start=start)


def train(comfy_vae, inputs, **overrides):
    arguments = dict(
        vae=comfy_vae, images=inputs["images"], style_text="oil painting", source_text="photo", iterations=3,
        learning_rate=5e-3, seed=1, training_decoder=FULL_VAE, max_resolution=512, style_mamba=inputs["start"],
    )
    with torch.inference_mode():  # exactly how ComfyUI calls every node
        return TrainStyleMamba().train(**(arguments | overrides))[0]


def test_node_trains_under_inference_mode_and_gradients_pass_the_vae_decoder(comfy_vae, inputs):
    fitted = train(comfy_vae, inputs)
    assert torch.count_nonzero(inputs["start"].model.head.weight) == 0
    assert torch.count_nonzero(fitted.model.head.weight) > 0  # only reachable through the decoded images
    assert not next(fitted.model.parameters()).is_inference()
    assert fitted.training["style"] == "oil painting" and fitted.training["source_text"] == "photo"
    assert fitted.training["settings"]["iterations"] == 3 and fitted.training["content_size"] == [16, 24]
    assert fitted.text_encoder == inputs["start"].text_encoder


def test_interrupt_returns_the_best_model_so_far(comfy_vae, inputs, monkeypatch):
    calls = []
    monkeypatch.setattr(comfy_bridge, "interrupt_requested", lambda: calls.append(1) or len(calls) >= 2)
    fitted = train(comfy_vae, inputs, iterations=50)
    assert fitted.training["stopped_early"] and fitted.training["steps_run"] == 2
    with torch.no_grad():
        out = fitted.model(torch.randn(1, 4, 8, 12), torch.randn(1, 32))
    assert torch.isfinite(out).all()


def test_tiny_autoencoder_decoder_choice(comfy_vae, inputs, tmp_path, monkeypatch):
    torch.manual_seed(0)
    torch.save(build_decoder(4).state_dict(), tmp_path / "taesd_decoder.pth")
    torch.save(build_decoder(16).state_dict(), tmp_path / "taesd3_decoder.pth")
    monkeypatch.setattr(comfy_bridge, "model_file_path", lambda folder, name: str(tmp_path / name))
    monkeypatch.setattr(comfy_bridge, "list_model_files", lambda folder: ["taesd_decoder.pth", "taesd_encoder.pth", "taef2.safetensors"])
    assert training_nodes.tiny_decoder_files() == ["taesd_decoder.pth", "taef2.safetensors"]
    assert TrainStyleMamba.INPUT_TYPES()["required"]["training_decoder"][0] == [FULL_VAE, "taesd_decoder.pth", "taef2.safetensors"]
    fitted = train(comfy_vae, inputs, training_decoder="taesd_decoder.pth", iterations=2)
    assert fitted.training["settings"]["train_decoder"] == "taesd_decoder.pth"
    assert torch.count_nonzero(fitted.model.head.weight) > 0
    with pytest.raises(ValueError, match="taesd3_decoder.pth decodes 16-channel latents .taesd3. but this VAE makes 4-channel"):
        train(comfy_vae, inputs, training_decoder="taesd3_decoder.pth")


def test_empty_style_text_is_refused(comfy_vae, inputs):
    with pytest.raises(ValueError, match="style text is empty"):
        train(comfy_vae, inputs, style_text="  ")


def test_save_never_overwrites_and_keeps_the_prompt(comfy_vae, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside ComfyUI new checkpoints go to the working directory
    fitted = train(comfy_vae, inputs, iterations=2)
    with torch.inference_mode():
        first = SaveStyleMamba().save(fitted, "styles/oil")
        second = SaveStyleMamba().save(fitted, "styles/oil")
    assert first["ui"]["text"] == ["oil_00001.safetensors"] and second["ui"]["text"] == ["oil_00002.safetensors"]
    path = tmp_path / "styles" / "oil_00001.safetensors"
    training = json.loads(read_metadata(path)["training"])
    assert training["style"] == "oil painting" and training["settings"]["lr"] == 5e-3
    loaded = load_checkpoint(path)
    latent, style = torch.randn(1, 4, 8, 12), torch.randn(1, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(latent, style), fitted.model(latent, style))
    with pytest.raises(ValueError, match="must stay inside the stylemamba folder"):
        SaveStyleMamba().save(fitted, "../escape")


def test_preview_is_comfy_preview_tuple():
    kind, picture, size = preview_image(torch.rand(2, 3, 40, 1000), 3, 10, 1.5)
    assert kind == "JPEG" and size == 512 and picture.size == (512, 20)
