"""Per-style fit on tiny models: loss falls, gradients pass the decoder, seeds repeat, the kept weights are chosen on one fixed draw."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_stylemamba.stylemamba.checkpoint import load_checkpoint, new_style_mamba, save_checkpoint
from comfyui_stylemamba.stylemamba.encoders import ImageEncoder
from comfyui_stylemamba.stylemamba.training.fit import FitSettings, FixedEvaluation, StyleObjective, fit_style, fit_weights
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
    # The untrained weights and those after every update evaluated, without the second-order term (it depends on
    # the previous step); the kept ones are the lowest after an update, and lower than the untrained model's.
    assert len(result.evaluations) == 9 and set(result.evaluations[0]) == set(first) - {"second_order"}
    totals = [e["total"] for e in result.evaluations]
    assert result.kept_loss == min(totals[1:]) == totals[result.kept_step] < totals[0]
    assert result.style_mamba.training["evaluation_losses"] == totals
    assert result.style_mamba.training["kept_step"] == result.kept_step
    assert f"after update {result.kept_step} of 8" in result.style_mamba.training["kept_reason"]
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
    assert result.kept_step in (1, 2) and torch.count_nonzero(result.style_mamba.model.head.weight) > 0


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
    assert loaded.training["kept_step"] == result.kept_step <= 5


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


def test_a_short_fit_returns_weights_its_updates_changed(vae, image_encoder, style, content):
    """Default loss set (the paper's, no patch term); both ways of keeping weights hand back moved weights."""
    start = tiny_model()
    for keep in ("best", "last"):
        result = fit_style(start, content, style, vae.encode, vae.decode, image_encoder, settings(iterations=3, weights=fit_weights(), keep=keep))
        assert set(result.history[0]) == {"directional", "second_order", "masked", "content", "tv", "total"}
        assert result.kept_step >= 1
        fitted = result.style_mamba.model.state_dict()
        assert torch.count_nonzero(fitted["head.weight"]) > 0 and torch.count_nonzero(start.model.head.weight) == 0
        assert sum(not torch.equal(v, fitted[k]) for k, v in start.model.state_dict().items()) > 10
    assert result.kept_step == 3 and result.evaluations == [] and result.kept_loss is None
    assert result.kept_reason == "the last update's weights (keep=last), 3 of 3"


def test_the_evaluation_is_the_same_draw_at_every_step(vae, image_encoder, style, content):
    """Training draws new masks and crops every step; the evaluation encodes the same masked content every time."""
    calls: list[tuple[bool, torch.Tensor]] = []

    class Recording:
        def __init__(self, encoder):
            self.encoder = encoder

        def encode(self, images, size=0):
            calls.append((torch.is_grad_enabled(), images.detach().clone()))
            return self.encoder.encode(images, size)

    weights = dataclasses.replace(SMALL_WEIGHTS, patch=0.0)
    result = fit_style(tiny_model(), content, style, vae.encode, vae.decode, Recording(image_encoder), settings(iterations=4, weights=weights))
    # Set-up: the reference's embedding. Per step: training (styled, masked styled, masked content), then the
    # evaluation of the same weights without gradients (styled, masked styled, masked content); at the end the
    # evaluation of the last update.
    assert len(calls) == 1 + 4 * 6 + 3
    steps = [calls[1 + 6 * i : 7 + 6 * i] for i in range(4)]
    assert all(grad for step in steps for grad, _ in step[:3]) and not any(grad for step in steps for grad, _ in step[3:])
    evaluated_masks = [step[5][1] for step in steps] + [calls[-1][1]]
    trained_masks = [step[2][1] for step in steps]
    assert all(torch.equal(evaluated_masks[0], mask) for mask in evaluated_masks[1:])
    assert not torch.equal(trained_masks[0], trained_masks[1])
    # Evaluating the kept weights again gives their recorded loss exactly: the loss is a function of the weights.
    objective = StyleObjective(image_encoder, style, vae.encode(content), vae.decode(vae.encode(content)), settings(weights=weights))
    evaluate = FixedEvaluation(objective, vae.encode(content), style.target, vae.decode, None, settings(weights=weights))
    assert evaluate(result.style_mamba.model)["total"] == pytest.approx(result.kept_loss, rel=1e-5)
    assert evaluate(result.style_mamba.model) == evaluate(result.style_mamba.model)


def test_fit_weights_are_the_papers_set_and_the_patch_loss_is_an_option():
    default = fit_weights()
    assert (default.patch, default.masked, default.second_order, default.directional) == (0.0, 500.0, 1000.0, 500.0)
    assert FitSettings().weights == default
    patch = fit_weights(patch_loss=True, crops=16, crop_resolution=112)
    assert (patch.patch, patch.num_crops, patch.crop_resolution, patch.crop_size) == (9000.0, 16, 112, 128)
    assert (fit_weights(patch_loss=True).num_crops, fit_weights(patch_loss=True).crop_resolution) == (64, 0)  # CLIPstyler's
    video = fit_weights(video=True)
    assert (video.masked, video.temporal_masked, video.patch) == (0.0, 500.0, 0.0)
    with pytest.raises(ValueError, match="keep must be one of best, last, got 'first'"):
        FitSettings(keep="first")
    with pytest.raises(ValueError, match=r"LossWeights.crop_resolution must be 0 \(the encoder's input size\) or more, got -1"):
        fit_weights(crop_resolution=-1)


def test_crops_encoded_at_another_resolution_cost_what_their_tokens_cost(image_encoder):
    """crop_resolution: the patch crops go through SigLIP at that size (interpolated positions), differentiably."""
    crops = torch.rand(3, 3, 20, 20, requires_grad=True)
    native, double = image_encoder.encode(crops), image_encoder.encode(crops, 2 * image_encoder.image_size)
    assert native.shape == double.shape == (3, 32)
    assert not torch.allclose(native, double)
    assert torch.allclose(image_encoder.encode(crops, image_encoder.image_size), native)
    double.sum().backward()
    assert crops.grad.abs().sum() > 0
