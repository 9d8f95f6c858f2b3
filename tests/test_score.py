"""Style scores and the strength sweep: the core functions and the StyleScore node without ComfyUI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.nodes.score_nodes import StyleScore
from comfyui_stylemamba.nodes.stylemamba_nodes import NEW_MODEL, LoadStyleMamba, TextStyleEncode
from comfyui_stylemamba.stylemamba.encoders import ImageEncoder
from comfyui_stylemamba.stylemamba.stylize import stylize_latents
from comfyui_stylemamba.stylemamba.training.metrics import ssim
from comfyui_stylemamba.stylemamba.training.score import (
    Score, check_strengths, content_ssim, pick_strength, report, score_images, strength_grid, style_similarity, sweep_strengths,
)

from builders import TINY_EMBED_DIM, tiny_config, trained_like


@pytest.fixture(scope="module")
def encoder(tiny_siglip) -> ImageEncoder:
    return ImageEncoder.from_pretrained(str(tiny_siglip))


@pytest.fixture
def style_mamba(tiny_siglip):
    (loaded,) = LoadStyleMamba().load(NEW_MODEL, str(tiny_siglip), latent_channels=4)
    loaded.model = trained_like(tiny_config(style_dim=TINY_EMBED_DIM)).eval()
    return loaded


class PixelVAE:
    """A stand-in for ComfyUI's VAE: decode gives (b, 2H, 2W, 3) pixels from the first three latent channels."""

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        return F.interpolate(samples[:, :3].sigmoid(), scale_factor=2, mode="nearest").movedim(1, -1)


def test_style_similarity_is_the_cosine_to_the_styles_target(encoder, style_mamba):
    (style,) = TextStyleEncode().encode(style_mamba, "oil painting")
    images = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        expected = F.cosine_similarity(encoder.encode(images), style.target, dim=-1)
    torch.testing.assert_close(style_similarity(encoder, images, style), expected)
    score = score_images(encoder, images, images[:1], style, strength=0.5)
    assert score.strength == 0.5 and score.style == pytest.approx(expected.mean().item())
    assert score.content_style == pytest.approx(expected[0].item()) and score.ssim == pytest.approx(ssim(images, images[:1].expand(2, -1, -1, -1)).mean().item())


def test_content_ssim_resizes_a_content_image_of_another_size_and_broadcasts_one():
    content = torch.rand(1, 3, 34, 34)
    assert content_ssim(content.expand(3, -1, -1, -1), content).tolist() == pytest.approx([1.0] * 3)
    cropped_size = content_ssim(torch.rand(2, 3, 32, 32), content)  # a VAE crop: resized, not refused
    assert cropped_size.shape == (2,)
    with pytest.raises(ValueError, match="3 content images for 2 styled images"):
        content_ssim(torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32))


@pytest.mark.parametrize("strengths,message", [([], "needs at least one strength"), ([0.5, 2.5], "strength 2.5 is outside StyleFuse's range 0 to 2"),
                                                ([float("nan")], "strength nan is outside")])
def test_bad_strengths_are_refused(strengths, message):
    with pytest.raises(ValueError, match=message):
        check_strengths(strengths)


def test_the_pick_is_the_most_style_like_strength_that_keeps_enough_content():
    scores = [Score(0.10, 0.05, 0.95, 0.5), Score(0.20, 0.05, 0.70, 1.0), Score(0.30, 0.05, 0.40, 1.5)]
    assert pick_strength(scores, 0.6) == (scores[1], True)
    assert pick_strength(scores, 0.0) == (scores[2], True)
    assert pick_strength(scores, 0.99) == (scores[0], False)  # none keeps that much: the one keeping the most
    assert report(scores[1], "oil painting") == (
        "strength 1 · style similarity 0.200 (content 0.050, +0.150) · content SSIM 0.700 · oil painting"
    )


def test_sweep_renders_each_strength_once_and_the_grid_labels_them():
    rendered = []

    def render(strength: float) -> torch.Tensor:
        rendered.append(strength)
        return torch.full((2, 3, 16, 24), strength / 2)

    results = sweep_strengths([0.5, 1.0, 0.5, 2.0], render, lambda images, s: Score(images.mean().item(), 0.0, 1 - s / 2, s))
    assert rendered == [0.5, 1.0, 2.0]
    assert [score.style for score, _ in results] == [0.25, 0.5, 1.0]
    grid = strength_grid(results, results[1][0], tile=32)
    assert grid.shape == (1, 3, 32 + 30, 3 * 48)
    torch.testing.assert_close(grid[0, :, -1, 48 + 10], torch.full((3,), 0.5), atol=1 / 255, rtol=0)  # the second tile's pixels


def test_score_node_without_a_sweep(style_mamba):
    (style,) = TextStyleEncode().encode(style_mamba, "watercolor")
    content, styled = torch.rand(1, 24, 24, 3), torch.rand(1, 24, 24, 3)
    out = StyleScore().score(content, styled, style)
    similarity, structure, line, preview, best = out["result"]
    assert out["ui"]["text"] == [line]
    assert line.startswith(f"style similarity {similarity:.3f}") and f"content SSIM {structure:.3f}" in line and line.endswith("watercolor")
    assert torch.equal(preview, styled) and best == 1.0


def test_score_node_sweep_picks_the_strength_a_graph_can_use(style_mamba):
    (style,) = TextStyleEncode().encode(style_mamba, "oil painting")
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    vae = PixelVAE()
    content = vae.decode(latent["samples"])
    styled = vae.decode(stylize_latents(style_mamba, latent["samples"], style, 1.0))
    with torch.inference_mode():
        keep_all = StyleScore().score(content, styled, style, style_mamba, vae, latent, "0, 1, 2", 0.999)["result"]
        free = StyleScore().score(content, styled, style, style_mamba, vae, latent, "0, 1, 2", 0.0)["result"]
    assert keep_all[4] == 0.0 and "sweep picked strength 0 (SSIM 1.000 ≥ 0.999)" in keep_all[2]  # only 0 keeps it all
    encoder = ImageEncoder.from_pretrained(style.encoder)
    by_strength = {s: style_similarity(encoder, vae.decode(stylize_latents(style_mamba, latent["samples"], style, s)).movedim(-1, 1), style).item()
                   for s in (0.0, 1.0, 2.0)}
    assert free[4] == max(by_strength, key=by_strength.get)
    assert free[3].shape == (1, 256 + 30, 3 * 256, 3)  # three labelled 256-px tiles
    assert keep_all[0] == pytest.approx(by_strength[1.0], abs=1e-5)  # the outputs score the given styled image


@pytest.mark.parametrize(
    "extra,message",
    [
        (dict(vae=PixelVAE()), "the strength sweep needs style_mamba, vae and latent; connect style_mamba, latent too"),
        (dict(vae=PixelVAE(), latent={"samples": torch.randn(1, 4, 2, 8, 8)}, strengths="1"), "takes image latents"),
        (dict(vae=PixelVAE(), latent={"samples": torch.randn(1, 4, 8, 8)}, strengths="1, much"), "StyleScore: strengths: 'much' is not a number"),
        (dict(vae=PixelVAE(), latent={"samples": torch.randn(1, 4, 8, 8)}, strengths="3"), "strength 3.0 is outside StyleFuse's range"),
    ],
)
def test_score_node_bad_sweeps_are_named(style_mamba, extra, message):
    (style,) = TextStyleEncode().encode(style_mamba, "oil painting")
    if "latent" in extra:
        extra["style_mamba"] = style_mamba
    with pytest.raises(ValueError, match=message):
        StyleScore().score(torch.rand(1, 16, 16, 3), torch.rand(1, 16, 16, 3), style, **extra)
