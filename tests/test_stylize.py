"""The shared stylize path: masks, video frames, batching and progress."""

from __future__ import annotations

import pytest
import torch

from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba
from comfyui_stylemamba.stylemamba.style import StyleEmbedding
from comfyui_stylemamba.stylemamba.stylize import latent_mask, stylize_latents

from builders import tiny_config, trained_like


@pytest.fixture
def style_mamba() -> StyleMamba:
    return StyleMamba(model=trained_like(tiny_config()).eval(), text_encoder="tiny")


@pytest.fixture
def style() -> StyleEmbedding:
    torch.manual_seed(1)
    return StyleEmbedding(target=torch.randn(1, 8), source=torch.randn(1, 8), description="test", encoder="tiny")


def test_mask_keeps_black_regions_exact_and_styles_white_ones(style_mamba, style):
    samples = torch.randn(2, 4, 8, 8)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, 32:] = 1  # right half in pixels = right half of the latent
    full = stylize_latents(style_mamba, samples, style)
    masked = stylize_latents(style_mamba, samples, style, mask=mask)
    assert torch.equal(masked[..., :3], samples[..., :3])
    torch.testing.assert_close(masked[..., 5:], full[..., 5:])


def test_video_latents_are_styled_frame_by_frame(style_mamba, style):
    video = torch.randn(2, 4, 3, 6, 6)  # (batch, channels, frames, h, w)
    styled = stylize_latents(style_mamba, video, style, batch_size=4)
    assert styled.shape == video.shape
    frame = stylize_latents(style_mamba, video[:, :, 1], style)
    torch.testing.assert_close(styled[:, :, 1], frame, rtol=1e-5, atol=1e-5)


def test_progress_reports_every_chunk(style_mamba, style):
    calls = []
    stylize_latents(style_mamba, torch.randn(5, 4, 4, 4), style, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_strength_zero_returns_the_input_exactly(style_mamba, style):
    samples = torch.randn(1, 4, 5, 7, dtype=torch.float16)
    out = stylize_latents(style_mamba, samples, style, strength=0.0)
    assert out.dtype == torch.float16
    assert torch.equal(out, samples)


def test_bad_shapes(style_mamba, style):
    with pytest.raises(ValueError, match="4-D \\(image\\) or 5-D \\(video\\)"):
        stylize_latents(style_mamba, torch.randn(4, 8, 8), style)
    with pytest.raises(ValueError, match="mask batch 3 does not match the latent batch 2"):
        latent_mask(torch.ones(3, 8, 8), 2, 4, 4)
    with pytest.raises(ValueError, match="has 16 channels"):
        stylize_latents(style_mamba, torch.randn(1, 16, 8, 8), style)


def test_latent_mask_resizes_and_broadcasts():
    mask = torch.zeros(16, 16)
    mask[:8] = 1
    weights = latent_mask(mask, 3, 4, 4)
    assert weights.shape == (3, 1, 4, 4)
    assert torch.equal(weights[:, :, :2], torch.ones(3, 1, 2, 4))
    assert torch.equal(weights[:, :, 2:], torch.zeros(3, 1, 2, 4))


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_strength_is_refused(style_mamba, style, strength):
    with pytest.raises(ValueError, match=f"strength must be a finite number, got {strength}"):
        stylize_latents(style_mamba, torch.randn(1, 4, 4, 4), style, strength=strength)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latents_and_masks_are_refused(style_mamba, style, bad):
    samples = torch.randn(2, 4, 4, 4)
    samples[1, 2, 0, 3] = bad
    with pytest.raises(ValueError, match=r"LATENT samples holds 1 NaN/inf values \(of 128\)"):
        stylize_latents(style_mamba, samples, style)
    mask = torch.ones(1, 32, 32)
    mask[0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"mask holds 1 NaN/inf values \(of 1024\)"):
        stylize_latents(style_mamba, torch.randn(1, 4, 4, 4), style, mask=mask)


def test_a_style_from_another_encoder_of_the_same_width_is_refused(style_mamba, style):
    foreign = StyleEmbedding(style.target, style.source, "test", encoder="/models/siglip/other-siglip")
    with pytest.raises(ValueError, match="encoded with SigLIP '/models/siglip/other-siglip' .8-d. but this StyleMamba model reads styles from SigLIP 'tiny' .8-d."):
        stylize_latents(style_mamba, torch.randn(1, 4, 4, 4), foreign)
    style_mamba.text_encoder = "other-siglip"  # what LoadStyleMamba's text_encoder override does
    assert stylize_latents(style_mamba, torch.randn(1, 4, 4, 4), foreign).shape == (1, 4, 4, 4)


def test_hub_id_and_its_local_folder_name_the_same_encoder(style):
    hub = StyleMamba(model=trained_like(tiny_config()).eval(), text_encoder="google/siglip-base-patch16-224")
    local = StyleEmbedding(style.target, style.source, "test", encoder="/ComfyUI/models/siglip/SigLIP-base-patch16-224/")
    assert stylize_latents(hub, torch.zeros(1, 4, 4, 4), local, strength=0.0).shape == (1, 4, 4, 4)
    wider = StyleEmbedding(torch.randn(1, 16), torch.randn(1, 16), "test", encoder="google/siglip-base-patch16-224")
    with pytest.raises(ValueError, match="'google/siglip-base-patch16-224' .16-d. but this StyleMamba model reads styles from SigLIP 'google/siglip-base-patch16-224' .8-d."):
        stylize_latents(hub, torch.zeros(1, 4, 4, 4), wider)
