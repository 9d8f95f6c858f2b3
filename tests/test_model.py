"""Style Fusion Module: identity at init, strength, shapes over latent families, gradients, input checks."""

from __future__ import annotations

import pytest
import torch

from comfyui_stylemamba.stylemamba.config import StyleMambaConfig
from comfyui_stylemamba.stylemamba.model import StyleFusionModel

from builders import tiny_config, trained_like


@pytest.mark.parametrize("channels,height,width,batch", [(4, 9, 7, 3), (16, 8, 8, 1), (32, 5, 12, 2)])
def test_fresh_model_is_exact_identity(channels, height, width, batch):
    model = StyleFusionModel(tiny_config(latent_channels=channels))
    latent = torch.randn(batch, channels, height, width) * 5 + 1
    with torch.no_grad():
        out = model(latent, torch.randn(1, 8))
    assert torch.equal(out, latent)


@pytest.mark.parametrize("channels,height,width,batch,patch", [(4, 9, 7, 3, 2), (16, 6, 10, 1, 1), (32, 5, 5, 2, 2)])
def test_trained_model_keeps_shape_and_changes_latent(channels, height, width, batch, patch):
    model = trained_like(tiny_config(latent_channels=channels, patch_size=patch))
    latent = torch.randn(batch, channels, height, width)
    with torch.no_grad():
        out = model(latent, torch.randn(batch, 8))
    assert out.shape == latent.shape
    assert out.dtype == latent.dtype
    assert torch.isfinite(out).all()
    assert (out - latent).abs().mean() > 1e-3


def test_strength_scales_the_change_linearly_and_zero_is_identity():
    model = trained_like(tiny_config())
    latent, style = torch.randn(2, 4, 8, 8), torch.randn(1, 8)
    with torch.no_grad():
        full = model(latent, style, 1.0) - latent
        double = model(latent, style, 2.0) - latent
        none = model(latent, style, 0.0)
    torch.testing.assert_close(double, 2 * full, rtol=1e-5, atol=1e-5)
    assert torch.equal(none, latent)


def test_one_style_broadcasts_over_the_batch():
    model = trained_like(tiny_config())
    latent, style = torch.randn(3, 4, 6, 6), torch.randn(1, 8)
    with torch.no_grad():
        batched = model(latent, style)
        single = torch.cat([model(latent[i : i + 1], style) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_different_styles_give_different_results():
    model = trained_like(tiny_config())
    latent = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        a = model(latent, torch.randn(1, 8))
        b = model(latent, torch.randn(1, 8))
    assert (a - b).abs().max() > 1e-3


def test_output_does_not_depend_on_latent_scale_shift():
    """Standardising the input makes the change scale with the latent's own std (any VAE's scale)."""
    model = trained_like(tiny_config())
    latent, style = torch.randn(1, 4, 8, 8), torch.randn(1, 8)
    with torch.no_grad():
        change = model(latent, style) - latent
        scaled = model(latent * 7 + 3, style) - (latent * 7 + 3)
    torch.testing.assert_close(scaled, change * 7, rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_parameter():
    """Every parameter an image uses; the temporal mixers run on video only (tests/test_temporal.py)."""
    model = trained_like(tiny_config(depth=1))
    latent, style = torch.randn(2, 4, 6, 6), torch.randn(2, 8)
    model(latent, style).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert missing == [name for name, _ in model.temporal.named_parameters(prefix="temporal")]


def test_fresh_model_gradient_flows_into_zero_initialised_head():
    model = StyleFusionModel(tiny_config(depth=1))
    latent = torch.randn(1, 4, 6, 6)
    (model(latent, torch.randn(1, 8)) - latent + 1).square().mean().backward()
    assert model.head.weight.grad.abs().max() > 0
    assert model.head.bias.grad.abs().max() > 0


def test_channel_mismatch_names_both_latent_families():
    model = StyleFusionModel(tiny_config(latent_channels=4))
    with pytest.raises(ValueError, match=r"expects 4-channel latents \(an SD1.5/SDXL VAE\).*has 16 channels: it comes from an SD3/Flux.1 VAE"):
        model(torch.randn(1, 16, 8, 8), torch.randn(1, 8))


@pytest.mark.parametrize(
    "latent_shape,style_shape,message",
    [
        ((1, 4, 8), (1, 8), "must be \\(batch, channels, height, width\\)"),
        ((1, 4, 8, 8), (1, 9), "different text encoder"),
        ((3, 4, 8, 8), (2, 8), "2 style embeddings for a batch of 3"),
    ],
)
def test_bad_inputs_are_named(latent_shape, style_shape, message):
    model = StyleFusionModel(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*latent_shape), torch.randn(*style_shape))


def test_config_round_trips_and_rejects_bad_values():
    config = tiny_config(scan_directions=2)
    assert StyleMambaConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        StyleMambaConfig.from_json('{"colour": 3}')
    with pytest.raises(ValueError, match="scan_directions must be 1, 2 or 4"):
        StyleMambaConfig(scan_directions=3)
    with pytest.raises(ValueError, match="width must be a positive integer"):
        StyleMambaConfig(width=0)


@pytest.mark.parametrize("directions", [1, 2, 4])
def test_scan_directions_change_the_mixer(directions):
    model = trained_like(tiny_config(scan_directions=directions))
    assert model.blocks[0].mixer.A_log.shape == (directions, 32, 4)
    with torch.no_grad():
        out = model(torch.randn(1, 4, 6, 6), torch.randn(1, 8))
    assert torch.isfinite(out).all()


def test_default_model_size():
    model = StyleFusionModel(StyleMambaConfig())
    assert sum(p.numel() for p in model.parameters()) == 1_620_112 + 460_800
    assert sum(p.numel() for p in model.temporal.parameters()) == 460_800  # 4 temporal mixers
