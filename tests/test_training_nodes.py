"""TrainStyleMamba / SaveStyleMamba as ComfyUI runs them: inside torch.inference_mode(), on inference tensors."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from comfyui_stylemamba.nodes import comfy_bridge, training_nodes
from comfyui_stylemamba.nodes.training_nodes import FULL_VAE, SaveStyleMamba, TrainStyleMamba, preview_image
from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba, load_checkpoint, new_style_mamba, read_metadata
from comfyui_stylemamba.stylemamba.training.taesd import build_decoder

from builders import tiny_config, trained_like


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


def run_node(comfy_vae, inputs, **overrides) -> dict:
    arguments = dict(
        vae=comfy_vae, images=inputs["images"], style_text="oil painting", source_text="photo", iterations=3,
        learning_rate=5e-3, seed=1, training_decoder=FULL_VAE, max_resolution=512, style_mamba=inputs["start"],
    )
    with torch.inference_mode():  # exactly how ComfyUI calls every node
        return TrainStyleMamba().train(**(arguments | overrides))


def train(comfy_vae, inputs, **overrides):
    return run_node(comfy_vae, inputs, **overrides)["result"][0]


def test_node_trains_under_inference_mode_and_gradients_pass_the_vae_decoder(comfy_vae, inputs):
    fitted = train(comfy_vae, inputs)
    assert torch.count_nonzero(inputs["start"].model.head.weight) == 0
    assert torch.count_nonzero(fitted.model.head.weight) > 0  # only reachable through the decoded images
    assert not next(fitted.model.parameters()).is_inference()
    assert fitted.training["style"] == "oil painting" and fitted.training["source_text"] == "photo"
    assert fitted.training["settings"]["iterations"] == 3 and fitted.training["content_size"] == [16, 24]
    assert fitted.text_encoder == inputs["start"].text_encoder


def test_cancel_writes_the_best_model_so_far_and_says_where(comfy_vae, inputs, monkeypatch, tmp_path, caplog):
    """ComfyUI ends the prompt before the next node after a Cancel: the fit must reach the disk itself."""
    monkeypatch.chdir(tmp_path)  # outside ComfyUI new checkpoints go to the working directory
    (tmp_path / f"{training_nodes.CANCELLED_PREFIX}_00001.safetensors").write_bytes(b"an earlier file")
    calls = []
    monkeypatch.setattr(comfy_bridge, "interrupt_requested", lambda: calls.append(1) or len(calls) >= 2)
    with caplog.at_level("INFO"):
        output = run_node(comfy_vae, inputs, iterations=50)
    (fitted,) = output["result"]
    assert fitted.training["stopped_early"] and fitted.training["steps_run"] == 2
    saved = tmp_path / f"{training_nodes.CANCELLED_PREFIX}_00002.safetensors"  # never overwrites
    assert (tmp_path / f"{training_nodes.CANCELLED_PREFIX}_00001.safetensors").read_bytes() == b"an earlier file"
    (text,) = output["ui"]["text"]
    assert text.startswith("TrainStyleMamba: cancelled after step 2 of 50; the model so far (the weights after update ")
    assert "lowest loss on the fixed evaluation" in text and f"update {fitted.training['kept_step']} of 2" in text
    assert text.endswith(f"is saved as {saved}: load {saved.name} with LoadStyleMamba") and text in caplog.text
    loaded = load_checkpoint(saved)
    assert loaded.training["stopped_early"] and loaded.text_encoder == fitted.text_encoder
    latent, style = torch.randn(1, 4, 8, 12), torch.randn(1, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(latent, style), fitted.model(latent, style))
    assert "Cancel stops the fit and saves the model so far (the weights keep_weights names) as models/stylemamba/" in TrainStyleMamba.DESCRIPTION


def test_a_finished_fit_saves_only_when_cancel_came_after_its_last_step(comfy_vae, inputs, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    output = run_node(comfy_vae, inputs, iterations=2)
    assert output["ui"]["text"][0].startswith("TrainStyleMamba: fitted 2 steps in ")
    assert "; kept the weights after update " in output["ui"]["text"][0]
    assert list(tmp_path.iterdir()) == []
    calls = []
    monkeypatch.setattr(comfy_bridge, "interrupt_requested", lambda: calls.append(1) or len(calls) > 2)  # after step 2 of 2
    output = run_node(comfy_vae, inputs, iterations=2)
    assert not output["result"][0].training["stopped_early"]
    assert output["ui"]["text"][0].startswith("TrainStyleMamba: cancelled after step 2 of 2")
    assert [p.name for p in tmp_path.iterdir()] == [f"{training_nodes.CANCELLED_PREFIX}_00001.safetensors"]


class FakeInterrupt(Exception):
    """comfy.model_management.InterruptProcessingException."""


def fake_comfy(monkeypatch) -> types.SimpleNamespace:
    """comfy.model_management's Cancel flag and comfy.utils' ProgressBar, whose hook raises on Cancel as ComfyUI's server does."""
    state = types.SimpleNamespace(cancel=False, updates=[])

    def throw_if_cancelled():
        if state.cancel:
            state.cancel = False
            raise FakeInterrupt()

    class ProgressBar:
        def __init__(self, total):
            pass

        def update_absolute(self, done, total, preview):
            throw_if_cancelled()
            state.updates.append(done)

    def interrupt_current_processing(value=True):
        state.cancel = value

    management = types.SimpleNamespace(
        InterruptProcessingException=FakeInterrupt, processing_interrupted=lambda: state.cancel,
        interrupt_current_processing=interrupt_current_processing,
    )
    monkeypatch.setitem(sys.modules, "comfy.model_management", management)
    monkeypatch.setitem(sys.modules, "comfy.utils", types.SimpleNamespace(ProgressBar=ProgressBar))
    return state


def test_progress_reports_a_cancel_without_raising_and_keeps_it_pending(monkeypatch):
    state = fake_comfy(monkeypatch)
    progress = comfy_bridge.Progress(10)
    assert progress.update_unless_cancelled(1, 10) is False and state.updates == [1]
    state.cancel = True  # pressed before the update
    assert progress.update_unless_cancelled(2, 10) is True and state.cancel
    state.cancel = False
    monkeypatch.setattr(comfy_bridge, "interrupt_requested", lambda: False)  # pressed between the check and the hook
    state.cancel = True
    assert progress.update_unless_cancelled(3, 10) is True
    assert state.cancel and state.updates == [1]  # set again, so ComfyUI still ends the prompt as cancelled


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
    with pytest.raises(ValueError, match="taesd3_decoder.pth decodes 16-channel latents .taesd3. but the VAE makes 4-channel"):
        train(comfy_vae, inputs, training_decoder="taesd3_decoder.pth")


def test_video_treats_the_image_batch_as_one_clip_and_trains_the_temporal_layers(comfy_vae, inputs):
    kind, options = TrainStyleMamba.INPUT_TYPES()["optional"]["video"]
    assert kind == "BOOLEAN" and options["default"] is False  # optional and off: saved workflows fit images as before
    with torch.inference_mode():
        frames = torch.cat([inputs["images"].roll(shift, dims=2) for shift in range(4)])
        start = StyleMamba(model=trained_like(tiny_config(style_dim=32, depth=1)), text_encoder=inputs["start"].text_encoder)
    fitted = train(comfy_vae, inputs, images=frames, video=True, style_mamba=start)
    assert fitted.training["latent_frames"] == 4 and fitted.training["settings"]["video"] is True
    weights = fitted.training["settings"]["weights"]
    assert (weights["masked"], weights["temporal_masked"], weights["temporal_consistency"]) == (0.0, 500.0, 150.0)
    assert torch.count_nonzero(fitted.model.temporal[0].out_proj.weight) > 0
    assert torch.count_nonzero(train(comfy_vae, inputs, style_mamba=start).model.temporal[0].out_proj.weight) == 0
    with pytest.raises(ValueError, match="a video fit needs at least 3 latent frames .* the 1 frame"):
        train(comfy_vae, inputs, video=True)


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


def test_new_widgets_come_last_with_defaults_so_saved_workflows_keep_their_values(comfy_vae, inputs):
    """ComfyUI fills a saved workflow's widget values by position: the patch-loss and keep widgets are appended."""
    spec = TrainStyleMamba.INPUT_TYPES()
    widgets = [name for name, (kind, *_) in spec["optional"].items() if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN")]
    assert widgets[-5:] == ["video", "patch_loss", "patch_crops", "patch_crop_resolution", "keep_weights"]
    assert spec["optional"]["clip_vision"][0] == "CLIP_VISION"  # a socket: saved widget values do not count it
    assert set(training_nodes.KEEP_WEIGHTS.values()) == {"best", "last"}
    assert spec["optional"]["keep_weights"][1]["default"] == "best on a fixed evaluation"
    fitted = train(comfy_vae, inputs, iterations=2)
    assert fitted.training["settings"]["weights"]["patch"] == 0.0 and fitted.training["settings"]["keep"] == "best"
    patched = train(comfy_vae, inputs, iterations=2, patch_loss=True, patch_crops=3, patch_crop_resolution=16, keep_weights="last update")
    weights = patched.training["settings"]["weights"]
    assert (weights["patch"], weights["num_crops"], weights["crop_resolution"]) == (9000.0, 3, 16)
    assert patched.training["kept_step"] == 2 and "keep=last" in patched.training["kept_reason"]
