"""ImageStyleEncode and StyleMix nodes without ComfyUI: image styles in the text styles' space, mixes in one StyleFuse pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.nodes.style_mix_nodes import ImageStyleEncode, StyleMixNode
from comfyui_stylemamba.nodes.stylemamba_nodes import NEW_MODEL, LoadStyleMamba, StyleFuse, TextStyleEncode
from comfyui_stylemamba.nodes.widgets import parse_numbers
from comfyui_stylemamba.stylemamba.encoders import load_image_encoder, load_text_encoder
from comfyui_stylemamba.stylemamba.mixing import mix_styles
from comfyui_stylemamba.stylemamba.style import StyleEmbedding
from comfyui_stylemamba.stylemamba.stylize import stylize_latents

from builders import TINY_EMBED_DIM, tiny_config, trained_like


@pytest.fixture
def style_mamba(tiny_siglip):
    (loaded,) = LoadStyleMamba().load(NEW_MODEL, str(tiny_siglip), latent_channels=4)
    loaded.model = trained_like(tiny_config(style_dim=TINY_EMBED_DIM)).eval()
    return loaded


def comfy_images(batch: int, height: int, width: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, height, width, channels, generator=torch.Generator().manual_seed(seed))


def test_image_style_is_the_weighted_mean_of_the_references_in_the_text_space(style_mamba, tiny_siglip):
    images = comfy_images(2, 20, 30, channels=4)
    (style,) = ImageStyleEncode().encode(style_mamba, images, "1, 3")
    encoder = load_image_encoder(str(tiny_siglip))
    on_white = images[..., :3] * images[..., 3:] + (1 - images[..., 3:])
    with torch.no_grad():
        each = encoder.encode(on_white.movedim(-1, 1))
        photo = load_text_encoder(str(tiny_siglip)).encode_style("a photo")
    torch.testing.assert_close(style.target, F.normalize(0.25 * each[:1] + 0.75 * each[1:], dim=-1))
    torch.testing.assert_close(style.source, photo)  # no content: the model's source text
    (text_style,) = TextStyleEncode().encode(style_mamba, "oil painting")
    assert type(style) is type(text_style) and style.target.shape == text_style.target.shape
    assert style.encoder == text_style.encoder and style.description == "image style (2 images)"


def test_content_images_are_the_direction_source_and_the_recorded_source_text_is_used(style_mamba, tiny_siglip):
    references, content = comfy_images(1, 16, 16), comfy_images(2, 24, 24, seed=1)
    (with_content,) = ImageStyleEncode().encode(style_mamba, references, "", content)
    encoder = load_image_encoder(str(tiny_siglip))
    with torch.no_grad():
        expected = F.normalize(encoder.encode(content.movedim(-1, 1)).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(with_content.source, expected)
    style_mamba.training["source_text"] = "a sketch"
    (from_text,) = ImageStyleEncode().encode(style_mamba, references)
    with torch.no_grad():
        torch.testing.assert_close(from_text.source, load_text_encoder(str(tiny_siglip)).encode_style("a sketch"))


def test_a_transparent_reference_is_a_white_one(style_mamba):
    clear = comfy_images(1, 16, 16, channels=4)
    clear[..., 3] = 0
    (transparent,) = ImageStyleEncode().encode(style_mamba, clear)
    (white,) = ImageStyleEncode().encode(style_mamba, torch.ones(1, 40, 24, 3))  # another size: resized alike
    torch.testing.assert_close(transparent.target, ImageStyleEncode().encode(style_mamba, torch.ones(1, 16, 16, 3))[0].target)
    assert white.target.shape == (1, TINY_EMBED_DIM)


@pytest.mark.parametrize(
    "images,weights,message",
    [
        (torch.rand(0, 16, 16, 3), "", "ImageStyleEncode: images is an empty batch"),
        (torch.rand(2, 16, 16, 3), "1", "ImageStyleEncode: weights: 1 numbers for 2 images"),
        (torch.rand(2, 16, 16, 3), "1, -2", "weight 2 is -2.0; weights must be finite and 0 or more"),
        (torch.rand(2, 16, 16, 3), "0 0", "are all zero; give at least one image a positive weight"),
        (torch.rand(2, 16, 16, 3), "1, x", "ImageStyleEncode: weights: 'x' is not a number"),
        (torch.full((1, 16, 16, 3), float("nan")), "", "ImageStyleEncode: images holds 768 NaN/inf values"),
        (torch.rand(16, 16, 3), "", "must be an IMAGE batch \\(batch, height, width, channels\\)"),
    ],
)
def test_bad_references_are_refused(style_mamba, images, weights, message):
    with pytest.raises(ValueError, match=message):
        ImageStyleEncode().encode(style_mamba, images, weights)


def test_an_encoder_of_another_width_than_the_model_is_refused(style_mamba):
    style_mamba.model = trained_like(tiny_config(style_dim=8))
    with pytest.raises(ValueError, match="gives 32-d image embeddings but this StyleMamba model takes 8-d styles"):
        ImageStyleEncode().encode(style_mamba, comfy_images(1, 16, 16))


def test_numbers_parse_from_widget_text():
    assert parse_numbers("", "w", count=2) == [1.0, 1.0]
    assert parse_numbers(" 0.5;1 2,", "w") == [0.5, 1.0, 2.0]
    assert parse_numbers("", "w") == []


def test_text_and_image_styles_mix_by_region_in_one_stylefuse_pass(style_mamba):
    (text_style,) = TextStyleEncode().encode(style_mamba, "oil painting")
    (image_style,) = ImageStyleEncode().encode(style_mamba, comfy_images(2, 16, 16))
    left = torch.zeros(1, 64, 64)
    left[..., :32] = 1
    (mix,) = StyleMixNode().mix(text_style, 1.0, left, image_style, 2.0, 1 - left)
    latent = {"samples": torch.randn(2, 4, 8, 8), "batch_index": [0, 1]}
    with torch.inference_mode():  # ComfyUI runs nodes like this
        (out,) = StyleFuse().fuse(style_mamba, latent, mix, 1.0)
    expected = stylize_latents(style_mamba, latent["samples"], mix_styles([text_style, image_style], [1.0, 2.0], [left, 1 - left]))
    assert torch.equal(out["samples"], expected) and out["batch_index"] == [0, 1]
    alone = StyleFuse().fuse(style_mamba, latent, text_style, 1.0)[0]["samples"]
    assert (out["samples"][..., 4:] - alone[..., 4:]).abs().max() > 1e-3  # the right half took the image style


def test_stylemix_uses_the_connected_slots_and_refuses_stray_masks(style_mamba):
    (a,) = TextStyleEncode().encode(style_mamba, "oil painting")
    (b,) = TextStyleEncode().encode(style_mamba, "pencil sketch")
    (mix,) = StyleMixNode().mix(a, 3.0, style_3=b, weight_3=1.0, weight_2=50.0)
    assert [(c.style.description, c.weight) for c in mix.components] == [("oil painting", 0.75), ("pencil sketch", 0.25)]
    with pytest.raises(ValueError, match="StyleMix: mask_2 is connected but style_2 is not"):
        StyleMixNode().mix(a, 1.0, mask_2=torch.ones(1, 8, 8))
    foreign = StyleEmbedding(b.target, b.source, "elsewhere", "/models/siglip/another-siglip")
    with pytest.raises(ValueError, match="'elsewhere' was encoded with '/models/siglip/another-siglip'"):
        StyleMixNode().mix(a, 1.0, style_2=foreign)
    with pytest.raises(ValueError, match="are all zero"):
        StyleMixNode().mix(a, 0.0, style_2=b, weight_2=0.0)
