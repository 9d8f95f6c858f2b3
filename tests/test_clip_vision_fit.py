"""TrainStyleMamba fitting an image style through a CLIP_VISION, as ComfyUI runs it (inference-mode weights)."""

from __future__ import annotations

import pytest
import torch

from comfyui_stylemamba.nodes.training_nodes import FULL_VAE, TrainStyleMamba
from comfyui_stylemamba.stylemamba.checkpoint import new_style_mamba
from comfyui_stylemamba.stylemamba.vision_towers import tower_identity

from builders import FakeClipVision, TinyVisionTower, tiny_config
from test_training_nodes import FakeComfyVAE


@pytest.fixture(scope="module")
def comfy_vae(tiny_vae):
    with torch.inference_mode():
        return FakeComfyVAE(tiny_vae)


@pytest.fixture
def clip_vision() -> FakeClipVision:
    with torch.inference_mode():  # CLIPVisionLoader's weights are inference tensors
        return FakeClipVision(TinyVisionTower(projection=16))


def fit(comfy_vae, clip_vision, **overrides) -> dict:
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        arguments = dict(
            vae=comfy_vae, images=torch.rand(1, 16, 24, 3, generator=generator), style_text="", source_text="a photo",
            iterations=2, learning_rate=5e-3, seed=1, training_decoder=FULL_VAE, max_resolution=512,
            style_images=torch.rand(2, 20, 20, 3, generator=generator), clip_vision=clip_vision,
        )
        return TrainStyleMamba().train(**(arguments | overrides))


def test_fit_through_the_clip_vision_trains_a_model_sized_to_it_and_leaves_the_tower_alone(comfy_vae, clip_vision):
    before = {name: value.clone() for name, value in clip_vision.model.state_dict().items()}
    fitted = fit(comfy_vae, clip_vision)["result"][0]
    identity = tower_identity(clip_vision)
    assert fitted.text_encoder == identity.encoder_id and fitted.config.style_dim == identity.width == 16
    assert torch.count_nonzero(fitted.model.head.weight) > 0  # reached through the tower's gradient to the images
    assert fitted.training["text_encoder"] == identity.encoder_id and fitted.training["style_image_count"] == 2
    after = clip_vision.model.state_dict()
    assert all(torch.equal(before[name], after[name]) and after[name].is_inference() for name in before)


def test_fit_continues_only_a_model_of_the_same_tower(comfy_vae, clip_vision):
    with torch.inference_mode():
        start = new_style_mamba(tiny_config(style_dim=16, depth=1), text_encoder=tower_identity(clip_vision).encoder_id)
    fitted = fit(comfy_vae, clip_vision, style_mamba=start, iterations=1)["result"][0]
    assert fitted.config == start.config and fitted.training["steps_run"] == 1 and fitted.text_encoder == start.text_encoder
    with torch.inference_mode():
        other = FakeClipVision(TinyVisionTower(projection=16, seed=4))
    with pytest.raises(ValueError, match="the style_mamba to start from was made with CLIP_VISION .*but the one connected is"):
        fit(comfy_vae, other, style_mamba=fitted)


@pytest.mark.parametrize("overrides, message", [
    (dict(style_text="an oil painting"), "a CLIP_VISION encodes pictures only: connect style_images and clear style_text"),
    (dict(style_images=None), "a CLIP_VISION encodes pictures only"),
    (dict(text_encoder="google/siglip-base-patch16-224"), "text_encoder 'google/siglip-base-patch16-224' and clip_vision both"),
])
def test_what_a_clip_vision_fit_cannot_take_is_refused(comfy_vae, clip_vision, overrides, message):
    with pytest.raises(ValueError, match=message):
        fit(comfy_vae, clip_vision, **overrides)
