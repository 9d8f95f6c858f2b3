"""Per-style fit on tiny models: loss falls, gradients pass the decoder, seeds repeat, stops keep the best."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_stylemamba.stylemamba.checkpoint import load_checkpoint, new_style_mamba, save_checkpoint
from comfyui_stylemamba.stylemamba.encoders import ImageEncoder
from comfyui_stylemamba.stylemamba.training.fit import FitSettings, fit_style
from comfyui_stylemamba.stylemamba.images import load_image
from comfyui_stylemamba.stylemamba.training.losses import LossWeights
from comfyui_stylemamba.stylemamba.style import StyleEmbedding
from comfyui_stylemamba.stylemamba.vae import load_diffusers_vae

from builders import tiny_config

SMALL_WEIGHTS = LossWeights(num_crops=4, crop_size=12, mask_patch_size=4)


@pytest.fixture(scope="module")
def image_encoder(tiny_siglip) -> ImageEncoder:
    return ImageEncoder.from_pretrained(str(tiny_siglip))


@pytest.fixture(scope="module")
def vae(tiny_vae):
    return load_diffusers_vae(str(tiny_vae))


@pytest.fixture
def style() -> StyleEmbedding:
    torch.manual_seed(3)
    return StyleEmbedding(target=torch.randn(1, 32), source=torch.randn(1, 32), description="oil painting", encoder="tiny")


@pytest.fixture
def content() -> torch.Tensor:
    torch.manual_seed(4)
    return torch.nn.functional.interpolate(torch.rand(2, 3, 4, 4), size=(16, 16), mode="bilinear")


def tiny_model(seed: int = 0):
    return new_style_mamba(tiny_config(style_dim=32, depth=1), text_encoder="tiny", seed=seed)


def settings(**overrides) -> FitSettings:
    values = dict(iterations=12, lr=5e-3, weights=SMALL_WEIGHTS, preview_every=4)
    return FitSettings(**(values | overrides))


def test_short_fit_lowers_the_total_loss_and_leaves_the_input_model_alone(vae, image_encoder, style, content):
    start = tiny_model()
    before = {k: v.clone() for k, v in start.model.state_dict().items()}
    result = fit_style(start, content, style, vae.encode, vae.decode, image_encoder, settings(iterations=8))
    first = result.history[0]
    assert set(first) == {"directional", "second_order", "masked", "patch", "content", "tv", "total"}
    assert first["content"] == 0.0  # an untrained model changes nothing
    assert result.best_loss < first["total"]
    assert result.best_loss == min(h["total"] for h in result.history)
    assert result.history[result.best_step]["total"] == result.best_loss
    assert result.style_mamba.training["settings"]["iterations"] == 8
    assert result.style_mamba.training["style"] == "oil painting"
    assert not result.stopped_early and len(result.history) == 8
    assert all(torch.equal(before[k], v) for k, v in start.model.state_dict().items())  # ComfyUI may reuse it


def test_gradients_reach_the_fusion_model_through_the_decoder(vae, image_encoder, style, content):
    start = tiny_model()
    weights = dataclasses.replace(SMALL_WEIGHTS, content=0.0, tv=0.0, patch=0.0, masked=0.0, second_order=0.0)
    result = fit_style(start, content, style, vae.encode, vae.decode, image_encoder, settings(iterations=2, weights=weights))
    # Only the directional loss on decoded images was active, yet the zero-initialised head moved.
    assert torch.count_nonzero(start.model.head.weight) == 0
    assert result.best_step == 1 and torch.count_nonzero(result.style_mamba.model.head.weight) > 0


def test_same_seed_same_model_other_seed_other_model(vae, image_encoder, style, content):
    runs = [
        fit_style(tiny_model(), content, style, vae.encode, vae.decode, image_encoder, settings(iterations=2, seed=seed))
        for seed in (7, 7, 8)
    ]
    states = [run.style_mamba.model.state_dict() for run in runs]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert [h["total"] for h in runs[0].history] == [h["total"] for h in runs[1].history]
    assert runs[0].history[1]["patch"] != runs[2].history[1]["patch"]  # other crops


def test_callback_stop_returns_the_best_model_so_far_and_it_round_trips(vae, image_encoder, style, content, tmp_path):
    seen = []

    def stop_at_five(step, loss, preview):
        seen.append((step, preview is not None))
        if preview is not None:
            assert preview.shape == content.shape and 0 <= preview.min() and preview.max() <= 1
        return step == 5

    result = fit_style(tiny_model(), content, style, vae.encode, vae.decode, image_encoder, settings(), callback=stop_at_five)
    assert result.stopped_early and len(result.history) == 5
    assert seen == [(1, False), (2, False), (3, False), (4, True), (5, False)]
    fitted = result.style_mamba
    latents = vae.encode(content)
    with torch.no_grad():
        styled = fitted.model(latents, style.target)
    assert torch.isfinite(styled).all() and styled.shape == latents.shape
    path = save_checkpoint(fitted, tmp_path / "fitted.safetensors")
    loaded = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded.model(latents, style.target), styled)
    assert loaded.training["best_step"] == result.best_step


def test_bad_settings_are_named(vae, image_encoder, style, content):
    with pytest.raises(ValueError, match="iterations must be at least 1"):
        FitSettings(iterations=0)
    with pytest.raises(ValueError, match="content_loss must be one of latent, siglip, vgg"):
        FitSettings(content_loss="pixels")
    with pytest.raises(ValueError, match="needs VGG-19 weights"):
        fit_style(tiny_model(), content, style, vae.encode, vae.decode, image_encoder, settings(content_loss="vgg"))
    with pytest.raises(ValueError, match="need a SigLIP image encoder"):
        fit_style(tiny_model(), content, style, vae.encode, vae.decode, None, settings())
    with pytest.raises(ValueError, match="expects 16-channel latents"):
        model = new_style_mamba(tiny_config(latent_channels=16, style_dim=32, depth=1))
        fit_style(model, content, style, vae.encode, vae.decode, image_encoder, settings())


def test_real_taef2_content_and_tv_fit_keeps_the_photo(shared_assets):
    """Only the content and TV terms: the latent path through a real autoencoder must keep the photo."""
    from comfyui_stylemamba.stylemamba.training.metrics import ssim
    from comfyui_stylemamba.stylemamba.training.taesd import load_tiny_autoencoder

    tae = load_tiny_autoencoder(shared_assets / "taef2" / "taef2_decoder.pth", shared_assets / "taef2" / "taef2_encoder.pth")
    photo = load_image(shared_assets / "images" / "flower.jpg")[..., 192:256, 192:256]
    torch.manual_seed(0)
    style = StyleEmbedding(target=torch.randn(1, 32), source=torch.randn(1, 32), description="content only", encoder="none")
    model = new_style_mamba(tiny_config(latent_channels=32, style_dim=32, depth=1))
    weights = LossWeights(directional=0, patch=0, masked=0, second_order=0)
    result = fit_style(model, photo, style, tae.encode, tae.decode, None, FitSettings(iterations=4, lr=1e-2, weights=weights))
    assert set(result.history[0]) == {"content", "tv", "total"}
    with torch.no_grad():
        decoded = tae.decode(result.style_mamba.model(tae.encode(photo), style.target))
    assert ssim(decoded, photo).item() >= 0.9


def test_fit_model_is_the_set_up_node_and_commands_share(vae, image_encoder, content, tiny_siglip):
    from comfyui_stylemamba.stylemamba.training.fit import fit_model

    style = StyleEmbedding(torch.randn(1, 32), torch.randn(1, 32), "oil painting", encoder=str(tiny_siglip))
    wide = torch.nn.functional.interpolate(content, size=(16, 40), mode="bilinear")
    result = fit_model(
        style, wide, vae.encode, vae.decode, image_encoder, settings(iterations=2), "my-siglip", vae.latent_channels,
        max_resolution=20, multiple=vae.downscale, record={"source_text": "photo"},
    )
    fitted = result.style_mamba
    assert (fitted.config.style_dim, fitted.config.latent_channels) == (32, 4)  # sized by the encoder's own config
    assert fitted.text_encoder == fitted.training["text_encoder"] == "my-siglip"
    assert fitted.training["content_size"] == [8, 20] and fitted.training["source_text"] == "photo"
    assert fitted.training["stopped_early"] is False and fitted.training["seconds"] >= 0
    again = fit_model(style, wide, vae.encode, vae.decode, image_encoder, settings(iterations=1), "other", 4, 20, 2, start=fitted)
    assert again.style_mamba.text_encoder == "other" and again.style_mamba.training["previous"]["text_encoder"] == "my-siglip"
    with pytest.raises(ValueError, match="max_resolution must be at least the VAE's downscale factor 8, got 4"):
        fit_model(style, wide, vae.encode, vae.decode, image_encoder, settings(), "x", 4, max_resolution=4, multiple=8)
