"""Styles from reference pictures: SigLIP's RGB view of any image, weights, and the embedding they make."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.stylemamba.encoders import ImageEncoder
from comfyui_stylemamba.stylemamba.image_style import encode_reference_style, image_embedding, siglip_rgb

from conftest import TINY_EMBED_DIM


@pytest.fixture(scope="module")
def encoder(tiny_siglip) -> ImageEncoder:
    return ImageEncoder.from_pretrained(str(tiny_siglip))


def test_alpha_is_composited_onto_white_and_grey_repeated_as_siglip_does():
    rgba = torch.tensor([0.2, 0.4, 0.6, 0.25]).view(1, 4, 1, 1)
    torch.testing.assert_close(siglip_rgb(rgba).flatten(), torch.tensor([0.8, 0.85, 0.9]))  # 0.25·c + 0.75·white
    grey = torch.rand(2, 1, 5, 7)
    assert torch.equal(siglip_rgb(grey), grey.expand(-1, 3, -1, -1))
    rgb = torch.rand(1, 3, 4, 4)
    assert siglip_rgb(rgb) is rgb


@pytest.mark.parametrize(
    "images,message",
    [
        (torch.rand(1, 2, 8, 8), "must be \\(batch, 1, 3 or 4 channels, height, width\\) images, got shape \\(1, 2, 8, 8\\)"),
        (torch.rand(0, 3, 8, 8), "empty batch: give at least one reference image"),
    ],
)
def test_bad_images_are_named(images, message):
    with pytest.raises(ValueError, match=message):
        siglip_rgb(images)


def test_weighted_mean_of_unit_embeddings(encoder):
    torch.manual_seed(0)
    first, second = torch.rand(1, 3, 40, 30), torch.rand(1, 3, 24, 24)  # different sizes: encoded one batch each
    with torch.no_grad():
        a, b = encoder.encode(first), encoder.encode(second)
    torch.testing.assert_close(image_embedding(encoder, [first, second], [1.0, 0.0]), a)
    torch.testing.assert_close(image_embedding(encoder, [first, second], [1.0, 3.0]), F.normalize(0.25 * a + 0.75 * b, dim=-1))
    torch.testing.assert_close(image_embedding(encoder, [torch.cat([first[..., :24, :24], second])]), F.normalize(encoder.encode(first[..., :24, :24]) + b, dim=-1))


@pytest.mark.parametrize(
    "weights,message",
    [([0.0, 0.0], "the weights \\[0.0, 0.0\\] are all zero; give at least one image a positive weight"),
     ([1.0, -1.0], "weight 2 is -1.0; weights must be finite and 0 or more"),
     ([1.0], "1 weights for 2 reference images")],
)
def test_bad_weights_are_refused(encoder, weights, message):
    with pytest.raises(ValueError, match=message):
        encode_reference_style(encoder, [torch.rand(2, 3, 8, 8)], torch.ones(1, TINY_EMBED_DIM), weights)


def test_reference_style_is_a_style_embedding_of_the_encoder(encoder):
    source = F.normalize(torch.randn(1, TINY_EMBED_DIM), dim=-1)
    style = encode_reference_style(encoder, [torch.rand(3, 4, 16, 16)], source)
    assert style.target.shape == (1, TINY_EMBED_DIM) and torch.equal(style.source, source)
    assert style.encoder == encoder.name and style.description == "image style (3 images)"
    with pytest.raises(ValueError, match="no reference images"):
        encode_reference_style(encoder, [], source)
