"""Losses: documented values on hand-made tensors, gradients, rejection, warps and the VGG loader."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.stylemamba.training import losses
from comfyui_stylemamba.stylemamba.encoders import ImageEncoder
from comfyui_stylemamba.stylemamba.training.vgg import CONV_LAYERS, VGG19Features, VGGWeightsError, load_vgg19


class LinearEncoder:
    """A stand-in image encoder: unit-normalised fixed random projection of the mean-pooled 8×8 image."""

    def __init__(self, dim: int = 16, seed: int = 0):
        self.projection = torch.randn(3 * 64, dim, generator=torch.Generator().manual_seed(seed))
        self.inputs: list[torch.Tensor] = []

    def encode(self, images: torch.Tensor, size: int = 0) -> torch.Tensor:
        self.inputs.append(images.detach().clone())
        pooled = F.adaptive_avg_pool2d(images, 8).flatten(1)
        return F.normalize(pooled @ self.projection, dim=-1)


@pytest.fixture(scope="module")
def siglip_images(tiny_siglip) -> ImageEncoder:
    return ImageEncoder.from_pretrained(str(tiny_siglip))


def test_directional_loss_values():
    direction = torch.tensor([[1.0, 0.0, 0.0]])
    content = torch.tensor([[0.2, 0.3, 0.1], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    styled = content + torch.tensor([[2.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    # parallel → 0, opposite → 2, orthogonal → 1; the mean over the batch is 1
    assert losses.directional_loss(styled[:1], content[:1], direction).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.directional_loss(styled[1:2], content[1:2], direction).item() == pytest.approx(2.0)
    assert losses.directional_loss(styled[2:], content[2:], direction).item() == pytest.approx(1.0)
    assert losses.directional_loss(styled, content, direction).item() == pytest.approx(1.0)
    # a per-sample direction (b, d): 45° → 1 − cos 45°
    per_sample = torch.tensor([[1.0, 1.0, 0.0]]).expand(3, 3)
    assert losses.directional_loss(styled[:1], content[:1], per_sample[:1]).item() == pytest.approx(1 - math.sqrt(0.5))


def test_directional_loss_gradient_reaches_styled_features():
    styled = torch.randn(2, 8, requires_grad=True)
    loss = losses.directional_loss(styled, torch.randn(2, 8), torch.randn(1, 8))
    loss.backward()
    assert styled.grad is not None and styled.grad.abs().sum() > 0


def test_patch_mask_masks_exactly_the_ratio():
    keep = losses.random_patch_mask(3, 32, 32, mask_ratio=0.25, patch_size=8, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (3, 1, 32, 32)
    assert keep.sum(dim=(1, 2, 3)).tolist() == [12 * 64] * 3  # 16 patches, 4 masked
    blocks = keep.view(3, 4, 8, 4, 8)
    assert torch.equal(blocks.amin(dim=(2, 4)), blocks.amax(dim=(2, 4)))  # whole patches only
    with pytest.raises(ValueError, match="mask_ratio"):
        losses.random_patch_mask(1, 8, 8, mask_ratio=1.0, patch_size=4)


def test_masked_directional_loss_masks_both_images_alike():
    encoder = LinearEncoder()
    styled = torch.rand(2, 3, 32, 32, requires_grad=True)
    content = torch.rand(2, 3, 32, 32)
    direction = torch.randn(1, 16)
    loss = losses.masked_directional_loss(encoder, styled, content, direction, 0.5, 8, torch.Generator().manual_seed(3))
    keep = losses.random_patch_mask(2, 32, 32, 0.5, 8, torch.Generator().manual_seed(3))
    masked_styled, masked_content = encoder.inputs
    assert torch.allclose(masked_styled, styled.detach() * keep + 0.5 * (1 - keep))
    assert torch.allclose(masked_content, content * keep + 0.5 * (1 - keep))
    expected = losses.directional_loss(encoder.encode(masked_styled), encoder.encode(masked_content), direction)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert styled.grad.abs().sum() > 0
    assert torch.all(styled.grad * (1 - keep) == 0)  # masked pixels get no gradient


def test_second_order_loss_value_schedule_and_reset():
    second = losses.SecondOrderDirectionalLoss(weight=10.0, tolerance=0.01, beta=0.9)
    first = torch.zeros(1, 2, requires_grad=True)
    assert second(first, torch.tensor(1.0)).item() == 0.0  # nothing to compare with yet
    current = torch.tensor([[3.0, 4.0]], requires_grad=True)
    # a settled first-order loss (unchanged) gives the full weight: 10 · ‖(3, 4)‖² = 250
    loss = second(current, torch.tensor(1.0))
    assert loss.item() == pytest.approx(250.0)
    loss.backward()
    assert torch.allclose(current.grad, torch.tensor([[60.0, 80.0]]))  # 2 · w · (d_t − d_{t−1})
    assert first.grad is None  # the previous difference is detached
    # a first-order loss still falling fast: EMA 1 → 0.95, r = 0.05, w = 10 · 0.01 / 0.06
    following = torch.tensor([[3.0, 5.0]])
    assert second(following, torch.tensor(0.5)).item() == pytest.approx(10 * 0.01 / 0.06 * 1.0, rel=1e-5)
    assert second.current_weight == pytest.approx(10 * 0.01 / 0.06, rel=1e-5)
    second.reset()
    assert second(following, torch.tensor(0.5)).item() == 0.0
    assert second(torch.ones(2, 2), torch.tensor(0.5)).item() == 0.0  # a new batch shape starts over


def test_homography_and_identity_warp():
    corners = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]])
    scale = losses.homography(corners * 0.5, corners)
    assert torch.allclose(scale, torch.tensor([[[2.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0]]], dtype=torch.float64))
    skewed = corners + torch.tensor([[[0.3, 0.1], [-0.2, 0.2], [-0.1, -0.4], [0.25, -0.05]]])
    matrix = losses.homography(skewed, corners)
    mapped = torch.cat([skewed, torch.ones(1, 4, 1)], dim=-1).double() @ matrix.transpose(1, 2)
    assert torch.allclose(mapped[..., :2] / mapped[..., 2:], corners.double(), atol=1e-9)
    images = torch.rand(2, 3, 20, 24)
    assert torch.allclose(losses.random_perspective(images, distortion=0.0), images, atol=1e-5)


def test_perspective_warp_fills_outside_with_zero():
    ones = torch.ones(4, 1, 32, 32)
    warped = losses.random_perspective(ones, distortion=0.5, generator=torch.Generator().manual_seed(0))
    coverage = warped.mean(dim=(1, 2, 3))
    # each corner moves in by at most half the half-side: the quadrilateral keeps ≥ 1/4 of the area
    assert torch.all(coverage < 1.0) and torch.all(coverage > 0.25)
    assert warped.min() >= 0 and warped.max() <= 1 + 1e-6


def test_random_crops_clamp_to_the_image():
    images = torch.rand(2, 3, 20, 30)
    crops = losses.random_crops(images, num_crops=5, crop_size=8, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (10, 3, 8, 8)
    whole = losses.random_crops(images, num_crops=3, crop_size=128)
    assert whole.shape == (6, 3, 20, 20)
    square = torch.rand(1, 3, 16, 16)
    assert torch.equal(losses.random_crops(square, 2, 64), square.expand(2, -1, -1, -1))


def _per_patch_losses(encoder, styled, content_features, direction, seed, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    crops = losses.random_crops(styled, kwargs["num_crops"], kwargs["crop_size"], generator)
    features = encoder.encode(losses.random_perspective(crops, 0.5, generator))
    return 1 - F.cosine_similarity(features - content_features, direction, dim=-1)


def test_patch_loss_rejects_easy_patches():
    encoder = LinearEncoder()
    styled = torch.rand(1, 3, 48, 48, requires_grad=True)
    content_features = encoder.encode(torch.rand(1, 3, 48, 48))
    direction = torch.randn(1, 16)
    settings = dict(num_crops=16, crop_size=24)
    per_patch = _per_patch_losses(encoder, styled.detach(), content_features, direction, 5, **settings)
    threshold = per_patch.median().item()
    loss = losses.patch_directional_loss(
        encoder, styled, content_features, direction, threshold=threshold, generator=torch.Generator().manual_seed(5), **settings
    )
    kept = per_patch >= threshold
    assert 0 < kept.sum() < 16
    assert loss.item() == pytest.approx((per_patch * kept).sum().item() / 16, rel=1e-5)
    loss.backward()
    assert styled.grad.abs().sum() > 0
    everything = losses.patch_directional_loss(
        encoder, styled, content_features, direction, threshold=0.0, generator=torch.Generator().manual_seed(5), **settings
    )
    assert everything.item() == pytest.approx(per_patch.mean().item(), rel=1e-5)
    nothing = losses.patch_directional_loss(encoder, styled, content_features, direction, threshold=2.1, **settings)
    assert nothing.item() == 0.0


def test_patch_loss_on_siglip_crops_larger_than_the_image(siglip_images):
    styled = torch.rand(2, 3, 32, 32, requires_grad=True)
    content_features = siglip_images.encode(torch.rand(2, 3, 32, 32))
    direction = F.normalize(torch.randn(1, 32), dim=-1)
    loss = losses.patch_directional_loss(siglip_images, styled, content_features, direction, num_crops=4, crop_size=128, threshold=0.0)
    assert 0.0 <= loss.item() <= 2.0
    loss.backward()
    assert styled.grad.abs().sum() > 0


@pytest.mark.parametrize("channels, scale, shift", [(4, 1 / 0.18215, 0.0), (16, 1 / 1.5305, 0.0609)], ids=["SD1.5", "SD3"])
def test_latent_content_loss_means_the_same_on_every_vae_scale(channels, scale, shift):
    """Raw SD1.5 latents spread ~8x wider than SD3's: the same relative change must still cost the same."""
    torch.manual_seed(0)
    content = torch.randn(2, channels, 8, 8) * scale + shift
    mean = content.mean(dim=(2, 3), keepdim=True)
    styled = mean + 1.1 * (content - mean)  # every channel's contrast up by 10 %
    assert losses.latent_content_loss(styled, content).item() == pytest.approx(0.01, rel=1e-4)
    offset = content + 0.5 * content.std(dim=(2, 3), keepdim=True, unbiased=False)  # half a std brighter
    assert losses.latent_content_loss(offset, content).item() == pytest.approx(0.25, rel=1e-4)


def test_content_losses(siglip_images):
    content = torch.rand(1, 3, 32, 32)
    assert losses.siglip_content_loss(siglip_images, content, content).item() == 0.0
    styled = content.flip(-1).requires_grad_()
    loss = losses.siglip_content_loss(siglip_images, styled, content)
    assert loss.item() > 0
    loss.backward()
    assert styled.grad.abs().sum() > 0


def test_total_variation_hand_values():
    image = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    # horizontal √2, vertical 0, diagonal |0 − 1| = 1, anti-diagonal |0 − 1| = 1
    assert losses.total_variation_loss(image).item() == pytest.approx(math.sqrt(2) + 2)
    assert losses.total_variation_loss(torch.full((2, 3, 8, 8), 0.4)).item() == 0.0
    noisy = torch.rand(1, 3, 8, 8, requires_grad=True)
    losses.total_variation_loss(noisy).backward()
    assert noisy.grad.abs().sum() > 0


def test_loss_weights_defaults_and_validation():
    weights = losses.LossWeights()
    assert (weights.directional, weights.patch, weights.content, weights.tv) == (500.0, 9000.0, 150.0, 2e-3)
    assert (weights.threshold, weights.num_crops, weights.crop_size) == (0.7, 64, 128)
    with pytest.raises(ValueError, match="patch"):
        losses.LossWeights(patch=-1)
    with pytest.raises(ValueError, match="mask_ratio"):
        losses.LossWeights(mask_ratio=1.0)


@pytest.fixture(scope="module")
def random_vgg() -> VGG19Features:
    torch.manual_seed(0)
    return VGG19Features().eval()


def test_vgg_layer_names_follow_torchvision(random_vgg):
    assert (CONV_LAYERS["conv1_1"], CONV_LAYERS["conv4_2"], CONV_LAYERS["conv5_2"], CONV_LAYERS["conv5_4"]) == (0, 21, 30, 34)
    assert len(random_vgg.features) == 37
    images = torch.rand(1, 3, 32, 32)
    normalised = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = random_vgg.features[:23](normalised)  # conv4_2 is index 21, its ReLU 22
    assert torch.allclose(random_vgg(images, ["conv4_2"])["conv4_2"], expected)
    with pytest.raises(ValueError, match="unknown VGG-19 layers"):
        random_vgg(images, ["relu9_9"])


def test_vgg_content_loss_value_and_gradient(random_vgg):
    content = torch.rand(1, 3, 32, 32)
    assert losses.vgg_content_loss(random_vgg, content, content).item() == 0.0
    styled = (content * 0.5).requires_grad_()
    loss = losses.vgg_content_loss(random_vgg, styled, content)
    a, b = random_vgg(styled.detach()), random_vgg(content)
    expected = sum(F.mse_loss(a[n], b[n]) for n in ("conv4_2", "conv5_2"))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert styled.grad.abs().sum() > 0


def test_vgg_loader_round_trip_and_errors(random_vgg, tmp_path):
    from safetensors.torch import save_file

    state = {f"features.{k}": v for k, v in random_vgg.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision file also has the classifier
    torch.save(state, tmp_path / "vgg19.pth")
    save_file(state, str(tmp_path / "vgg19.safetensors"))
    images = torch.rand(1, 3, 32, 32)
    for name in ("vgg19.pth", "vgg19.safetensors"):
        loaded = load_vgg19(tmp_path / name)
        assert torch.equal(loaded(images)["conv5_2"], random_vgg(images)["conv5_2"])
    with pytest.raises(VGGWeightsError, match="not found"):
        load_vgg19(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VGGWeightsError, match="not a readable"):
        load_vgg19(tmp_path / "junk.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(VGGWeightsError, match="no 'features.N.weight'"):
        load_vgg19(tmp_path / "other.pth")
    truncated = {k: v for k, v in state.items() if not k.startswith("features.34.")}
    truncated["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(truncated, tmp_path / "vgg16ish.pth")
    with pytest.raises(VGGWeightsError, match=r"missing features\.34\.bias.*features\.0\.weight: file has shape \(64, 3, 5, 5\)"):
        load_vgg19(tmp_path / "vgg16ish.pth")


def test_fit_training_and_clipstyler_assemble_the_same_terms():
    """One assembly: the per-style fit, multi-style training and the baseline weigh the same terms alike."""
    from comfyui_stylemamba.stylemamba.style import StyleEmbedding
    from comfyui_stylemamba.stylemamba.training.clipstyler import clipstyler_losses
    from comfyui_stylemamba.stylemamba.training.fit import FitSettings, StyleObjective
    from comfyui_stylemamba.stylemamba.training.train import TrainingData, multi_style_loss

    from builders import tiny_config, trained_like

    encoder = LinearEncoder()
    model = trained_like(tiny_config(style_dim=16))
    projection = torch.randn(3, 4, 1, 1, generator=torch.Generator().manual_seed(1))

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.interpolate(F.conv2d(latents, projection), scale_factor=4.0))

    torch.manual_seed(2)
    latents, target, source = torch.randn(1, 4, 8, 8) * 5, F.normalize(torch.randn(1, 16), dim=-1), F.normalize(torch.randn(1, 16), dim=-1)
    style = StyleEmbedding(target, source, "ink", "enc")
    weights = losses.LossWeights(directional=0.0, second_order=0.0, num_crops=3, crop_size=16, mask_patch_size=8)
    reference = decode(latents)
    styled_latents = model(latents, target)
    images = decode(styled_latents)
    objective = StyleObjective(encoder, style, latents, reference, FitSettings(weights=weights))
    fit_terms = objective(styled_latents, images, objective.reference, torch.Generator().manual_seed(3))
    data = TrainingData(latents, reference, encoder.encode(reference), ["ink"], target, style.direction)
    index = torch.tensor([0])
    train_terms = multi_style_loss(model, decode, encoder, data, index, index, weights, torch.Generator().manual_seed(3))
    assert set(fit_terms) == set(train_terms) == {"masked", "patch", "content", "tv", "total"}  # a 0 weight adds no term
    for name, value in fit_terms.items():
        torch.testing.assert_close(train_terms[name], value)
    baseline = clipstyler_losses(images, reference, data.reference_features, style.direction, encoder, weights, None, torch.Generator().manual_seed(3))
    assert set(baseline) == {"patch", "content", "tv", "total"}  # CLIPstyler has no masked term
    torch.testing.assert_close(baseline["tv"], fit_terms["tv"])
    torch.testing.assert_close(baseline["total"], baseline["patch"] + baseline["content"] + baseline["tv"])
