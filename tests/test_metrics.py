"""Metrics: SSIM against hand-computed values and a brute-force reference; CLIP scores in both spaces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.stylemamba.encoders import ImageEncoder, TextEncoder
from builders import word_level_tokenizer
from comfyui_stylemamba.stylemamba.training.metrics import OpenAIClip, cosine_scores, gaussian_window, siglip_clip_score, ssim

CLIP_WORDS = "a an the photo of painting oil sketch pencil".split()


def build_tiny_clip(folder: Path) -> Path:
    """A 1-layer random CLIPModel with a word-level tokenizer, saved like a hub folder."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = word_level_tokenizer(CLIP_WORDS)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=2,
        ),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def brute_force_ssim(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """Wang et al.'s definition evaluated window by window with explicit weighted sums."""
    taps = gaussian_window(size, sigma).numpy()
    weights = np.outer(taps, taps)
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for top in range(x.shape[0] - size + 1):
        for left in range(x.shape[1] - size + 1):
            a, b = x[top : top + size, left : left + size], y[top : top + size, left : left + size]
            mu_a, mu_b = (weights * a).sum(), (weights * b).sum()
            var_a, var_b = (weights * (a - mu_a) ** 2).sum(), (weights * (b - mu_b) ** 2).sum()
            cov = (weights * (a - mu_a) * (b - mu_b)).sum()
            values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_gaussian_window():
    window = gaussian_window(11, 1.5)
    assert window.shape == (11,) and window.sum().item() == pytest.approx(1.0)
    assert window[5] / window[4] == pytest.approx(np.exp(1 / (2 * 1.5**2)))


def test_ssim_identical_and_constant_images():
    images = torch.rand(2, 3, 24, 24)
    assert torch.allclose(ssim(images, images), torch.ones(2))
    # constant grey images a and b: σ = 0, so SSIM = (2ab + C1) / (a² + b² + C1)
    a, b, c1 = 0.2, 0.6, 1e-4
    value = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)).item()
    assert value == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)


def test_ssim_matches_brute_force_reference():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 14, 15, generator=generator)
    y = (x + 0.3 * torch.rand(1, 1, 14, 15, generator=generator)).clamp(0, 1)
    expected = brute_force_ssim(x[0, 0].double().numpy(), y[0, 0].double().numpy())
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert expected < 0.95  # a real difference, not a trivial 1


def test_ssim_is_computed_on_luminance():
    grey = torch.rand(1, 1, 16, 16).expand(1, 3, 16, 16)
    k = 0.2 * torch.rand(1, 1, 16, 16)
    shift = torch.cat([0.587 * k, -0.299 * k, torch.zeros_like(k)], dim=1)  # luma change 0.299·0.587k − 0.587·0.299k = 0
    assert ssim(grey + shift, grey).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(grey * 0.5, grey).item() < 0.99


def test_ssim_errors():
    with pytest.raises(ValueError, match="equal shapes"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_cosine_scores():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    assert cosine_scores(images, torch.tensor([[2.0, 0.0]])).tolist() == pytest.approx([1.0, 0.0, -1.0])


def test_siglip_clip_score(tiny_siglip):
    image_encoder = ImageEncoder.from_pretrained(str(tiny_siglip))
    text_encoder = TextEncoder.from_pretrained(str(tiny_siglip))
    images = torch.rand(3, 3, 40, 32)
    scores = siglip_clip_score(image_encoder, text_encoder, images, "oil painting")
    expected = F.cosine_similarity(image_encoder.encode(images), text_encoder.encode_style("oil painting"), dim=-1)
    assert scores.shape == (3,)
    assert torch.allclose(scores, expected, atol=1e-6)


def test_openai_clip_score(tmp_path):
    clip = OpenAIClip.from_pretrained(str(build_tiny_clip(tmp_path / "tiny-clip")))
    images = torch.rand(2, 3, 40, 64)
    pixels = clip.preprocess(images)
    assert pixels.shape == (2, 3, 32, 32)
    scores = clip.score(images, "oil painting")
    assert scores.shape == (2,) and torch.all(scores.abs() <= 1)
    # batch-independent: the second image alone scores the same
    assert clip.score(images[1:], "oil painting").item() == pytest.approx(scores[1].item(), abs=1e-5)
    assert not torch.allclose(clip.score(images, "pencil sketch"), scores)
    with pytest.raises(FileNotFoundError, match="CLIP model"):
        OpenAIClip.from_pretrained(str(tmp_path / "absent"))
