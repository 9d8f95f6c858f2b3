"""CLIPstyler baseline: StyleNet shapes, loss terms on hand-made inputs, schedule, a short training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.stylemamba.training.clipstyler import (
    ClipStylerSettings,
    StyleNet,
    boost_contrast,
    clipstyler_losses,
    make_optimizer,
    train_clipstyler,
)
from comfyui_stylemamba.stylemamba.encoders import ImageEncoder, TextEncoder
from comfyui_stylemamba.stylemamba.training.losses import LossWeights, total_variation_loss
from comfyui_stylemamba.stylemamba.style import encode_text_style
from comfyui_stylemamba.stylemamba.training.vgg import VGG19Features

SMALL = LossWeights(num_crops=4, crop_size=16)


@pytest.fixture(scope="module")
def encoders(tiny_siglip):
    return ImageEncoder.from_pretrained(str(tiny_siglip)), TextEncoder.from_pretrained(str(tiny_siglip))


def test_style_net_is_a_three_stage_unet_on_any_size():
    net = StyleNet()
    assert len(net.down) == len(net.downsample) == len(net.up) == 3
    assert [block.shortcut.out_channels for block in (*net.down, net.bottleneck, *net.up)] == [16, 32, 64, 128, 64, 32, 16]
    images = torch.rand(2, 3, 37, 50)
    output = net(images)
    assert output.shape == images.shape
    assert output.min() > 0 and output.max() < 1
    assert sum(p.numel() for p in net.parameters()) < 1_000_000  # "light"


def test_loss_terms_on_an_unchanged_image(encoders):
    image_encoder, _ = encoders
    content = torch.rand(1, 3, 32, 32)
    features = image_encoder.encode(content)
    direction = F.normalize(torch.randn(1, 32), dim=-1)
    generator = torch.Generator().manual_seed(0)
    terms = clipstyler_losses(content, content, features, direction, image_encoder, SMALL, None, generator)
    # no change at all: cos(0, Δt) = 0, so the directional term is exactly its weight
    assert terms["directional"].item() == pytest.approx(500.0)
    assert terms["content"].item() == 0.0
    assert terms["tv"].item() == pytest.approx(2e-3 * total_variation_loss(content).item())
    styled = content.flip(-1)
    pixel = clipstyler_losses(styled, content, features, direction, image_encoder, SMALL, None, generator)["content"]
    assert pixel.item() == pytest.approx(150 * F.mse_loss(styled, content).item())
    torch.manual_seed(0)
    vgg = VGG19Features().eval()
    with_vgg = clipstyler_losses(styled, content, features, direction, image_encoder, SMALL, vgg, generator)["content"]
    assert with_vgg.item() != pytest.approx(pixel.item())
    assert clipstyler_losses(content, content, features, direction, image_encoder, SMALL, vgg, generator)["content"].item() == 0.0


def test_contrast_boost_matches_the_blend_with_mean_grey():
    image = torch.tensor([0.4, 0.6]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    assert boost_contrast(image, 1.5)[0, 0, 0].tolist() == pytest.approx([0.35, 0.65])
    assert torch.equal(boost_contrast(image, 1.0), image)
    assert boost_contrast(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2), 3.0).tolist() == [[[[0.0, 1.0]]] * 3]


def test_learning_rate_halves_every_lr_step():
    net = torch.nn.Linear(2, 2)
    optimizer, schedule = make_optimizer(net, ClipStylerSettings(lr_step=2))
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == pytest.approx([5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4])


def test_training_lowers_the_loss_and_is_seeded(encoders):
    image_encoder, text_encoder = encoders
    style = encode_text_style(text_encoder, "oil painting")
    content = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    settings = ClipStylerSettings(iterations=12, learning_rate=5e-3, weights=LossWeights(patch=0.0, num_crops=4, crop_size=16))
    steps = []
    result = train_clipstyler(content, style, image_encoder, settings, progress=lambda step, loss: steps.append(step))
    assert steps == list(range(1, 13))
    assert len(result.losses) == 12
    assert min(result.losses[-3:]) < result.losses[0]
    assert result.image.shape == content.shape and not result.image.requires_grad
    assert result.train_seconds > 0 and result.inference_seconds > 0
    again = train_clipstyler(content, style, image_encoder, ClipStylerSettings(iterations=2, weights=SMALL))
    same = train_clipstyler(content, style, image_encoder, ClipStylerSettings(iterations=2, weights=SMALL))
    assert torch.equal(again.image, same.image)


def test_training_rejects_a_batch(encoders):
    image_encoder, text_encoder = encoders
    style = encode_text_style(text_encoder, "oil painting")
    with pytest.raises(ValueError, match="one image"):
        train_clipstyler(torch.rand(2, 3, 32, 32), style, image_encoder)
    with pytest.raises(ValueError, match="iterations"):
        ClipStylerSettings(iterations=0)
