"""The style terms beside the directional losses: VGG style statistics (Gram, mean/std) and CAST's InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.stylemamba.training import losses
from comfyui_stylemamba.stylemamba.training.vgg import VGG19Features


class FixedFeatures:
    """A stand-in VGG: every layer's activation is the image itself, so statistics are checkable by hand."""

    def __call__(self, images: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return {name: images for name in layers}


def test_gram_matrix_of_known_features():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)  # channel 0 = (1, 2), channel 1 = (3, 4)
    expected = torch.tensor([[1 + 4, 3 + 8], [3 + 8, 9 + 16]]) / (2 * 1 * 2)
    torch.testing.assert_close(losses.gram_matrix(features), expected[None])
    big = features.repeat_interleave(3, dim=-1)  # same content, 3× the positions
    torch.testing.assert_close(losses.gram_matrix(big), losses.gram_matrix(features))


def test_mean_std_statistics_and_loss_values():
    style = torch.tensor([0.0, 2.0, 0.0, 2.0]).view(1, 1, 2, 2)  # mean 1, std 1
    styled = torch.full((1, 1, 2, 2), 3.0)  # mean 3, std 0 (+ epsilon)
    mean, std = losses.feature_statistics(style, "mean_std")
    torch.testing.assert_close(mean, torch.tensor([[1.0]]))
    torch.testing.assert_close(std, torch.tensor([[math.sqrt(1 + 1e-5)]]))
    target = losses.style_statistics_target(FixedFeatures(), [style], "mean_std", layers=("conv1_1", "conv2_1"))
    loss = losses.style_statistics_loss(FixedFeatures(), styled, target, "mean_std")
    per_layer = (3 - 1) ** 2 + (math.sqrt(1e-5) - math.sqrt(1 + 1e-5)) ** 2
    assert loss.item() == pytest.approx(2 * per_layer, rel=1e-5)
    assert losses.style_statistics_loss(FixedFeatures(), style, target, "mean_std").item() == pytest.approx(0.0, abs=1e-10)


def test_gram_loss_value_and_target_averages_images_of_any_size():
    first = torch.ones(1, 2, 2, 2)  # Gram: all 1/… → ones(2,2)·4/(2·4) = 0.5
    second = torch.zeros(1, 2, 5, 3)  # Gram 0
    target = losses.style_statistics_target(FixedFeatures(), [first, second], "gram", layers=("conv1_1",))
    torch.testing.assert_close(target["conv1_1"][0], torch.full((1, 2, 2), 0.25))
    styled = torch.zeros(2, 2, 4, 4, requires_grad=True)
    loss = losses.style_statistics_loss(FixedFeatures(), styled, target, "gram")
    assert loss.item() == pytest.approx(0.25**2)
    with pytest.raises(ValueError, match="must be one of mean_std, gram"):
        losses.feature_statistics(styled, "gatys")
    with pytest.raises(ValueError, match="at least one style image"):
        losses.style_statistics_target(FixedFeatures(), [], "gram")


def test_style_statistics_on_real_vgg_layers_pass_gradients():
    torch.manual_seed(0)
    vgg = VGG19Features().eval().requires_grad_(False)
    target = losses.style_statistics_target(vgg, [torch.rand(1, 3, 24, 20), torch.rand(2, 3, 16, 16)], "mean_std")
    assert list(target) == ["conv1_1", "conv2_1", "conv3_1", "conv4_1"]
    assert [t[0].shape[-1] for t in target.values()] == [64, 128, 256, 512]
    tiny = losses.style_statistics_target(vgg, [torch.rand(1, 3, 3, 5)], "mean_std")  # upscaled to reach relu4_1
    assert tiny["conv4_1"][0].shape == (1, 512)
    styled = torch.rand(2, 3, 16, 16, requires_grad=True)
    assert losses.style_statistics_loss(vgg, styled, target, "mean_std").item() > 0
    loss = losses.style_statistics_loss(vgg, styled, losses.style_statistics_target(vgg, [styled.detach()[:1]], "gram"), "gram")
    loss.backward()
    assert loss.item() > 0 and styled.grad.abs().sum() > 0


def test_contrastive_loss_matches_the_infonce_form_and_uses_the_temperature():
    features = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=-1)
    labels = torch.tensor([0, 0, 1])
    cos = features @ features.T
    for tau in (0.07, 1.0):
        # pairs (0, 1) and (1, 0): positive cos 0.8; the negative is image 2 (cos 0 for anchor 0, 0.6 for anchor 1)
        by_hand = [
            -math.log(math.exp(cos[i, p] / tau) / (math.exp(cos[i, p] / tau) + math.exp(cos[i, 2] / tau))) for i, p in ((0, 1), (1, 0))
        ]
        assert losses.contrastive_style_loss(features, labels, tau).item() == pytest.approx(sum(by_hand) / 2, rel=1e-5)
    assert losses.contrastive_style_loss(features, labels, 0.07).item() != pytest.approx(losses.contrastive_style_loss(features, labels, 1.0).item())


def test_contrastive_loss_prefers_same_style_images_together_and_passes_gradients():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(2, 16), dim=-1)
    labels = torch.tensor([0, 0, 1, 1])
    grouped = torch.stack([a, a + 0.01, b, b + 0.01])  # each style's images alike
    mixed = torch.stack([a, b, a + 0.01, b + 0.01])  # each style's images unlike
    assert losses.contrastive_style_loss(grouped, labels) < losses.contrastive_style_loss(mixed, labels)
    features = mixed.clone().requires_grad_(True)
    losses.contrastive_style_loss(features, labels).backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_contrastive_loss_without_pairs_is_zero_and_still_backpropagates():
    features = torch.randn(3, 8, requires_grad=True)
    for labels in (torch.tensor([0, 1, 2]), torch.tensor([4, 4, 4])):  # no positive / no negative
        loss = losses.contrastive_style_loss(features, labels)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(features.grad, torch.zeros_like(features))
    partial = torch.randn(3, 8, requires_grad=True)  # anchor 2 has no positive: NaN-free all the same
    losses.contrastive_style_loss(partial, torch.tensor([0, 0, 1])).backward()
    assert torch.isfinite(partial.grad).all()
    with pytest.raises(ValueError, match="temperature must be positive"):
        losses.contrastive_style_loss(features, torch.tensor([0, 0, 1]), 0.0)
    with pytest.raises(ValueError, match=r"\(batch,\) labels"):
        losses.contrastive_style_loss(features, torch.tensor([0, 1]))


def test_weighted_loss_adds_the_style_terms_only_when_weighted_and_fed():
    images = torch.rand(4, 3, 8, 8)

    class Encoder:
        @staticmethod
        def encode(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(x.flatten(1)[:, :6], dim=-1)

    features = Encoder.encode(images)
    weights = losses.LossWeights(directional=0, patch=0, masked=0, second_order=0, content=0, tv=0, contrastive=2.0, style_statistics=3.0)
    labels = torch.tensor([0, 0, 1, 1])
    terms = losses.weighted_loss(
        weights, Encoder, images, images, features, features, lambda: torch.tensor(0.0), None,
        style_statistics=lambda: torch.tensor(5.0), style_labels=labels,
    )
    assert set(terms) == {"contrastive", "style_statistics", "total"}
    assert terms["style_statistics"].item() == 15.0
    torch.testing.assert_close(terms["contrastive"], 2.0 * losses.contrastive_style_loss(features, labels))
    with pytest.raises(ValueError, match="needs style images and VGG-19 weights"):
        losses.weighted_loss(weights, Encoder, images, images, features, features, lambda: torch.tensor(0.0), None, style_labels=labels)
    with pytest.raises(ValueError, match="style_labels"):
        losses.weighted_loss(weights, Encoder, images, images, features, features, lambda: torch.tensor(0.0), None, style_statistics=lambda: torch.tensor(1.0))
    with pytest.raises(ValueError, match="contrastive_temperature must be positive"):
        losses.LossWeights(contrastive_temperature=0)
    with pytest.raises(ValueError, match="style_statistics must be non-negative"):
        losses.LossWeights(style_statistics=-1)
    assert losses.LossWeights().contrastive_temperature == 0.07 and losses.LossWeights().style_statistics == 0.0
