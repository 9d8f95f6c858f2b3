"""SigLIP encoders on a tiny random model saved in the real transformers folder format."""

from __future__ import annotations

import pytest
import torch

from comfyui_stylemamba.stylemamba.encoders import STYLE_TEMPLATES, EncoderNotFoundError, ImageEncoder, TextEncoder
from comfyui_stylemamba.stylemamba.style import encode_text_style

from conftest import TINY_EMBED_DIM


def test_text_embeddings_are_unit_length_and_template_averaged(tiny_siglip):
    encoder = TextEncoder.from_pretrained(str(tiny_siglip))
    assert encoder.embed_dim == TINY_EMBED_DIM
    single = encoder.encode(["oil painting", "a photo"])
    assert single.shape == (2, TINY_EMBED_DIM)
    torch.testing.assert_close(single.norm(dim=-1), torch.ones(2))
    style = encoder.encode_style("oil painting")
    each = encoder.encode([t.format("oil painting") for t in STYLE_TEMPLATES])
    torch.testing.assert_close(style, torch.nn.functional.normalize(each.mean(0, keepdim=True), dim=-1))


def test_text_style_direction(tiny_siglip):
    style = encode_text_style(TextEncoder.from_pretrained(str(tiny_siglip)), "  watercolor sketch ", "a photo")
    assert style.description == "watercolor sketch"
    expected = torch.nn.functional.normalize(style.target - style.source, dim=-1)
    torch.testing.assert_close(style.direction, expected)
    assert style.direction.norm() == pytest.approx(1.0, abs=1e-5)


def test_empty_text_is_refused(tiny_siglip):
    encoder = TextEncoder.from_pretrained(str(tiny_siglip))
    with pytest.raises(ValueError, match="style text is empty"):
        encoder.encode_style("   ")


def test_missing_encoder_says_which_files_to_put_where(tmp_path):
    with pytest.raises(EncoderNotFoundError, match=r"config.json.*models/siglip/absent/"):
        TextEncoder.from_pretrained(str(tmp_path / "absent"), local_files_only=True)


def test_image_embeddings_are_differentiable(tiny_siglip):
    encoder = ImageEncoder.from_pretrained(str(tiny_siglip))
    images = torch.rand(2, 3, 40, 56, requires_grad=True)
    features = encoder.encode(images)
    assert features.shape == (2, TINY_EMBED_DIM)
    features[:, 0].sum().backward()
    assert images.grad.abs().max() > 0
    with pytest.raises(ValueError, match="\\(batch, 3, height, width\\)"):
        encoder.encode(torch.rand(2, 1, 8, 8))


def test_style_width_comes_from_the_config_alone(tmp_path, tiny_siglip):
    from transformers import SiglipConfig, SiglipTextConfig

    from comfyui_stylemamba.stylemamba.config import config_for_encoder
    from comfyui_stylemamba.stylemamba.encoders import embedding_width

    assert embedding_width(str(tiny_siglip)) == TextEncoder.from_pretrained(str(tiny_siglip)).embed_dim == TINY_EMBED_DIM
    full = tmp_path / "so400m-like"
    SiglipConfig(text_config=dict(hidden_size=64, projection_size=48, num_attention_heads=2)).save_pretrained(full)
    text_only = tmp_path / "text-only"
    SiglipTextConfig(hidden_size=40, num_attention_heads=2).save_pretrained(text_only)
    assert sorted(p.name for p in full.iterdir()) == ["config.json"]  # no weights to load
    assert embedding_width(str(full)) == 48 and embedding_width(str(text_only)) == 40
    config = config_for_encoder(str(full), latent_channels=16, width=32)
    assert (config.style_dim, config.latent_channels, config.width) == (48, 16, 32)
    with pytest.raises(EncoderNotFoundError, match="models/siglip/missing"):
        embedding_width(str(tmp_path / "missing"))


def test_encoder_identity_normalises_paths_and_hub_ids():
    from comfyui_stylemamba.stylemamba.encoders import encoder_identity

    assert encoder_identity("google/siglip-base-patch16-224", 768) == ("siglip-base-patch16-224", 768)
    assert encoder_identity("C:\\ComfyUI\\models\\siglip\\SigLIP-Base-Patch16-224\\", 768) == ("siglip-base-patch16-224", 768)
    assert encoder_identity("siglip-so400m-patch14-384", 1152) != encoder_identity("siglip-base-patch16-224", 1152)
