"""Image styles through a CLIP_VISION: identity, embedding choice, preprocessing, refusals, checkpoints, nodes."""

from __future__ import annotations

import re

import pytest
import torch

from comfyui_stylemamba.nodes.score_nodes import StyleScore
from comfyui_stylemamba.nodes.style_mix_nodes import ImageStyleEncode
from comfyui_stylemamba.nodes.stylemamba_nodes import NEW_MODEL, LoadStyleMamba, StyleFuse, TextStyleEncode
from comfyui_stylemamba.stylemamba.checkpoint import (CheckpointError, StyleMamba, load_checkpoint, read_metadata,
                                                      save_checkpoint)
from comfyui_stylemamba.stylemamba.stylize import stylize_latents
from comfyui_stylemamba.stylemamba.tower_identity import TowerIdentity, describe_encoder
from comfyui_stylemamba.stylemamba.vision_towers import (UnsupportedVisionTowerError, clip_vision_encoder, differentiable_copy, embedding_width,
                                                         family_of, tower_identity, weights_fingerprint)

from builders import FakeClipVision, TinyVisionTower, tiny_config, trained_like


@pytest.fixture
def clip_vision() -> FakeClipVision:
    return FakeClipVision(TinyVisionTower(projection=16))


@pytest.fixture
def siglip_vision() -> FakeClipVision:
    return FakeClipVision(TinyVisionTower(projection=None), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def pictures(count: int = 2, seed: int = 0) -> torch.Tensor:
    """ComfyUI IMAGE batch (b, H, W, 3), not square, so the centre crop matters."""
    return torch.rand(count, 40, 56, 3, generator=torch.Generator().manual_seed(seed))


def test_embedding_is_the_projection_or_the_mean_token(clip_vision, siglip_vision):
    images = pictures().movedim(-1, 1)
    clip_encoder = clip_vision_encoder(clip_vision)
    assert embedding_width(clip_vision) == 16 and clip_encoder.encode(images).shape == (2, 16)
    pixels = clip_encoder.preprocess(images)
    _, _, projected, _ = clip_vision.model(pixel_values=pixels)
    torch.testing.assert_close(clip_encoder.encode(images), torch.nn.functional.normalize(projected, dim=-1))

    siglip_encoder = clip_vision_encoder(siglip_vision)
    assert embedding_width(siglip_vision) == 24 and siglip_encoder.encode(images).shape == (2, 24)
    tokens = siglip_vision.model(pixel_values=siglip_encoder.preprocess(images))[2]
    assert tokens.shape == (2, 16, 24)  # ComfyUI's SigLIP gives tokens, not a vector: the style is their mean
    torch.testing.assert_close(siglip_encoder.encode(images), torch.nn.functional.normalize(tokens.mean(1), dim=-1))


def test_preprocess_is_comfyuis_centre_crop_on_8_bit_levels_and_passes_gradients(clip_vision):
    encoder = clip_vision_encoder(clip_vision)
    images = pictures(1).movedim(-1, 1).requires_grad_(True)
    pixels = encoder.preprocess(images)
    assert pixels.shape == (1, 3, 32, 32)
    levels = pixels * torch.tensor(encoder.std)[:, None, None] + torch.tensor(encoder.mean)[:, None, None]
    torch.testing.assert_close(levels * 255, (levels * 255).round(), atol=1e-3, rtol=0)
    scaled = torch.nn.functional.interpolate(images.detach(), size=(32, 45), mode="bicubic", antialias=True)
    expected = (scaled[..., 6:38].clamp(0, 1) * 255).round() / 255  # 56 px → 45, centre 32 starts at 6
    torch.testing.assert_close(levels, expected, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):  # ComfyUI's layers add in place
        encoder.encode(images).sum().backward()
    images.grad = None
    differentiable_copy(encoder).encode(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(differentiable_copy(encoder).encode(images), encoder.encode(images))


def test_patch_loss_crops_encode_at_the_towers_own_size_only(clip_vision):
    """The patch loss calls ``encode(crops, resolution)``; ComfyUI's towers have fixed position embeddings."""
    encoder = clip_vision_encoder(clip_vision)
    crops = pictures(2).movedim(-1, 1)
    torch.testing.assert_close(encoder.encode(crops, 0), encoder.encode(crops))
    torch.testing.assert_close(encoder.encode(crops, 32), encoder.encode(crops))
    with pytest.raises(ValueError, match=r"own input size \(32 px\), not 16: set the patch loss's crop resolution"):
        encoder.encode(crops, 16)


def test_identity_names_family_width_and_weights(clip_vision):
    identity = tower_identity(clip_vision)
    assert identity.family == family_of(clip_vision) == "clip-vision-24x2-32px" and identity.width == 16
    assert TowerIdentity.parse(identity.encoder_id) == identity and TowerIdentity.parse("google/siglip-base-patch16-224") is None
    half = TinyVisionTower(projection=16)
    half.load_state_dict({k: v.half().float() for k, v in clip_vision.model.state_dict().items()})
    assert weights_fingerprint(half) == weights_fingerprint(half.half())  # fp16 on a GPU, fp32 on the CPU: one file
    assert weights_fingerprint(TinyVisionTower(projection=16, seed=1)) != identity.fingerprint
    assert describe_encoder(identity.encoder_id) == f"CLIP_VISION clip-vision-24x2-32px (16-d, weights {identity.fingerprint})"


def test_a_tower_that_is_not_clip_or_siglip_is_refused():
    dino = FakeClipVision(TinyVisionTower())
    dino.model = torch.nn.Linear(2, 2)
    with pytest.raises(UnsupportedVisionTowerError, match="not a CLIP or SigLIP vision tower.*CLIP-ViT-H-14"):
        tower_identity(dino)


def test_new_model_from_clip_vision_styles_a_latent_and_refuses_other_encoders(clip_vision, siglip_vision, tiny_siglip):
    with torch.inference_mode():
        (model,) = LoadStyleMamba().load(NEW_MODEL, "from checkpoint", 4, clip_vision=clip_vision)
        assert model.config.style_dim == 16 and model.text_encoder == tower_identity(clip_vision).encoder_id
        (style,) = ImageStyleEncode().encode(model, pictures(), "1, 3", content=pictures(1, seed=5), clip_vision=clip_vision)
        assert style.encoder == model.text_encoder and style.target.shape == (1, 16)
        model.model = trained_like(model.config)
        (fused,) = StyleFuse().fuse(model, {"samples": torch.randn(1, 4, 8, 8)}, style, 1.0)
        assert fused["samples"].shape == (1, 4, 8, 8)

        with pytest.raises(ValueError, match="was made with CLIP_VISION clip-vision-24x2-32px .16-d.*connect that CLIP_VISION"):
            ImageStyleEncode().encode(model, pictures(), content=pictures(1))
        other = FakeClipVision(TinyVisionTower(projection=16, seed=3))
        both = f"made with {describe_encoder(model.text_encoder)} but the one connected is {tower_identity(other).describe()}"
        with pytest.raises(ValueError, match=re.escape(both)):
            ImageStyleEncode().encode(model, pictures(), content=pictures(1), clip_vision=other)
        with pytest.raises(ValueError, match="no text tower to start the style's direction.*connect the content"):
            ImageStyleEncode().encode(model, pictures(), clip_vision=clip_vision)
        with pytest.raises(ValueError, match="TextStyleEncode: this model reads image styles from CLIP_VISION.*Image Style Encode"):
            TextStyleEncode().encode(model, "an oil painting")

        siglip_model = StyleMamba(model=trained_like(tiny_config(style_dim=32)), text_encoder=str(tiny_siglip))
        with pytest.raises(ValueError, match=f"reads SigLIP '{tiny_siglip}', so a CLIP_VISION does not fit it"):
            ImageStyleEncode().encode(siglip_model, pictures(), clip_vision=clip_vision)
        with pytest.raises(ValueError, match="style was encoded with CLIP_VISION clip-vision.*reads styles from SigLIP"):
            stylize_latents(siglip_model, torch.randn(1, 4, 8, 8), style)


def test_style_score_reads_the_style_through_its_clip_vision(clip_vision):
    with torch.inference_mode():
        (model,) = LoadStyleMamba().load(NEW_MODEL, "from checkpoint", 4, clip_vision=clip_vision)
        (style,) = ImageStyleEncode().encode(model, pictures(), content=pictures(1, seed=5), clip_vision=clip_vision)
        result = StyleScore().score(pictures(1, seed=5), pictures(1), style, clip_vision=clip_vision)
        encoder = clip_vision_encoder(clip_vision)
        expected = torch.nn.functional.cosine_similarity(encoder.encode(pictures(1).movedim(-1, 1)), style.target).item()
        assert result["result"][0] == pytest.approx(expected, abs=1e-5)
        with pytest.raises(ValueError, match="StyleScore: the style was made with CLIP_VISION"):
            StyleScore().score(pictures(1, seed=5), pictures(1), style)


def test_checkpoint_records_the_tower_and_loads_only_with_it(clip_vision, tmp_path, monkeypatch):
    identity = tower_identity(clip_vision)
    path = save_checkpoint(StyleMamba(model=trained_like(tiny_config(style_dim=16)), text_encoder=identity.encoder_id),
                           tmp_path / "tower.safetensors")
    metadata = read_metadata(path)
    assert (metadata["encoder_family"], metadata["encoder_width"], metadata["encoder_fingerprint"]) == (
        identity.family, "16", identity.fingerprint)
    assert load_checkpoint(path).text_encoder == identity.encoder_id

    monkeypatch.setattr("comfyui_stylemamba.nodes.comfy_bridge.model_file_path", lambda folder, name: str(tmp_path / name))
    with torch.inference_mode():
        (loaded,) = LoadStyleMamba().load(path.name, "from checkpoint", clip_vision=clip_vision)
        assert loaded.text_encoder == identity.encoder_id
        other = FakeClipVision(TinyVisionTower(projection=16, seed=7))
        with pytest.raises(ValueError, match="LoadStyleMamba: tower.safetensors was made with CLIP_VISION.*but the one connected is CLIP_VISION"):
            LoadStyleMamba().load(path.name, "from checkpoint", clip_vision=other)
        with pytest.raises(ValueError, match="text_encoder 'google/siglip-base-patch16-224' and a CLIP_VISION both name"):
            LoadStyleMamba().load(path.name, "google/siglip-base-patch16-224", clip_vision=clip_vision)


def test_checkpoint_whose_encoder_keys_disagree_is_refused(clip_vision, tmp_path):
    from safetensors.torch import load_file, save_file

    identity = tower_identity(clip_vision)
    path = save_checkpoint(StyleMamba(model=trained_like(tiny_config(style_dim=16)), text_encoder=identity.encoder_id),
                           tmp_path / "a.safetensors")
    metadata = read_metadata(path) | {"encoder_fingerprint": "000000000000"}
    save_file(load_file(str(path)), str(tmp_path / "b.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="encoder_fingerprint='000000000000' disagrees with its encoder"):
        load_checkpoint(tmp_path / "b.safetensors")


def test_fingerprint_takes_tensors_whose_last_index_fp32_cannot_hold():
    """2**24 + 4 values: fp32's linspace rounds the last index to the length itself (a CLIP text tower's token
    embedding, 49408 x 768, is such a size); smaller tensors keep the fingerprints they always had."""
    big = torch.nn.Module()
    big.register_buffer("values", torch.arange(2**24 + 4, dtype=torch.float32).half())
    before = weights_fingerprint(big)
    big.values[-1] = -1  # the last value is sampled
    assert len(before) == 12 and weights_fingerprint(big) != before
