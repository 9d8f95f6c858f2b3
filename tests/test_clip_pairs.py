"""Text styles from a ComfyUI CLIP paired with the CLIP_VISION of the same CLIP model: the pair table, the colour probe
that decides whether two towers are one space, the template-averaged text style, and every refusal."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.nodes.score_nodes import StyleScore
from comfyui_stylemamba.nodes.style_mix_nodes import ImageStyleEncode, StyleMixNode
from comfyui_stylemamba.nodes.stylemamba_nodes import NEW_MODEL, LoadStyleMamba, StyleFuse, TextStyleEncode
from comfyui_stylemamba.nodes.training_nodes import FULL_VAE, TrainStyleMamba
from comfyui_stylemamba.stylemamba import text_towers, text_vision_pairs
from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba
from comfyui_stylemamba.stylemamba.encoders import STYLE_TEMPLATES
from comfyui_stylemamba.stylemamba.text_vision_pairs import (PAIRS, REQUIRED_CORRECT, ClipPair, ClipPairError, colour_pictures,
                                                             colour_prompts, measure_colours, pair_for_vision, text_family)
from comfyui_stylemamba.stylemamba.vision_towers import FAMILIES, clip_vision_encoder, family_of, tower_identity

from builders import FakeClip, FakeClipVision, FakeSDClipModel, TinyTextTower, TinyVisionTower, tiny_config, trained_like
from test_training_nodes import FakeComfyVAE

TINY_VISION_FAMILY = "clip-vision-24x2-32px"  # what family_of makes of TinyVisionTower's shape


@pytest.fixture(autouse=True)
def tiny_pair(monkeypatch):
    """The tiny towers as one more row of the table, and a fresh probe cache per test."""
    monkeypatch.setattr(text_vision_pairs, "PAIRS", (*PAIRS, ClipPair("tiny-text", (16, 2), TINY_VISION_FAMILY, "a tiny CLIP", "tiny.safetensors")))
    monkeypatch.setattr(text_towers, "_MEASURED", {})


def pooled_image_features(clip_vision: FakeClipVision, pictures: torch.Tensor) -> torch.Tensor:
    """The vision tower's input to its projection (the final-norm class token), through the pack's preprocessing."""
    seen = []
    handle = clip_vision.model.visual_projection.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        clip_vision_encoder(clip_vision).encode(pictures)
    handle.remove()
    return seen[0]


def text_features(clip: FakeClip, prompts: list[str]) -> torch.Tensor:
    """Reference: the tiny text tower's projected end token, unit length, from its own forward."""
    tower, tokenizer = clip.cond_stage_model.clip_l.transformer, clip.tokenizer.clip_l
    with torch.no_grad():
        return F.normalize(torch.cat([tower.text_projection(tower.pooled(tokenizer.ids(p))) for p in prompts]), dim=-1)


def make_pair(aligned: bool, seed: int = 0) -> tuple[FakeClipVision, FakeClip]:
    """A text and a vision tower; aligned: the visual projection solved by least squares so that the six colour
    pictures' projected features equal the six colour prompts' text features."""
    clip = FakeClip(clip_l=FakeSDClipModel(TinyTextTower(seed=seed)))
    vision = TinyVisionTower(projection=16, seed=seed + 1)
    clip_vision = FakeClipVision(vision)
    if aligned:
        pooled = pooled_image_features(clip_vision, colour_pictures())  # (6, 24)
        target = text_features(clip, colour_prompts())  # (6, 16)
        solution = torch.linalg.lstsq(pooled, target).solution  # (24, 16): minimum norm, exact for 6 < 24 rows
        with torch.no_grad():
            vision.visual_projection.weight.copy_(solution.T)
    return clip_vision, clip


def model_for(clip_vision) -> StyleMamba:
    with torch.inference_mode():
        (model,) = LoadStyleMamba().load(NEW_MODEL, "from checkpoint", 4, clip_vision=clip_vision)
    return model


def test_the_table_pairs_comfyuis_text_shapes_with_detected_vision_families():
    assert [(text_family(*pair.text_shape), pair.vision_family) for pair in PAIRS] == [
        ("clip-l", "vit-l-14"), ("clip-h", "vit-h-14"), ("clip-g", "vit-bigg-14")]
    # each text shape is ComfyUI's config for that tower (sd1_clip_config, sd2_clip_config, clip_config_bigg)
    assert [pair.text_shape for pair in PAIRS] == [(768, 12), (1024, 24), (1280, 32)]
    assert {pair.vision_family for pair in PAIRS} <= set(FAMILIES.values())
    assert text_family(1024, 23) == "clip-text-1024x23"


@pytest.mark.parametrize("family, why", [
    ("siglip-so400m-384", "SigLIP's text tower is not a ComfyUI CLIP"),
    ("vit-l-14-336", "its text tower is not shipped"),
    ("dinov2", "no commonly held text encoder is its partner"),
])
def test_a_vision_family_without_a_held_text_partner_is_refused_naming_the_pairs(family, why):
    with pytest.raises(ClipPairError) as refused:
        pair_for_vision(family, f"CLIP_VISION {family}")
    message = str(refused.value)
    assert f"CLIP_VISION {family} has no CLIP text partner ({why}" in message
    for expected in ("text_encoders/clip_l.safetensors", "clip_vision_l.safetensors", "SD2.x checkpoint",
                     "CLIP-ViT-H-14-laion2B-s32B-b79K", "SDXL checkpoint's clip_g", "CLIP-ViT-bigG-14-laion2B-39B-b160k"):
        assert expected in message


def test_the_colour_probe_passes_an_aligned_pair_and_fails_random_ones():
    clip_vision, clip = make_pair(aligned=True)
    encoder = text_towers.ClipPairTextEncoder("tiny", text_towers.text_towers(clip)[0])
    aligned = measure_colours(clip_vision_encoder(clip_vision).encode, encoder.encode)
    assert (aligned.correct, aligned.total, aligned.passed) == (6, 6, True)
    for seed in range(4):  # random visual projections: far below the 4 of 6 a pair needs
        other, _ = make_pair(aligned=False, seed=10 + seed)
        probe = measure_colours(clip_vision_encoder(other).encode, encoder.encode)
        assert probe.correct < REQUIRED_CORRECT and not probe.passed
    nan_text = measure_colours(clip_vision_encoder(clip_vision).encode, lambda texts: torch.full((len(texts), 16), float("nan")))
    assert nan_text.correct == 0  # an uninitialised projection that holds NaN names nothing


def test_text_style_through_the_pair_is_template_averaged_unit_length_and_fuses():
    clip_vision, clip = make_pair(aligned=True)
    model = model_for(clip_vision)
    assert family_of(clip_vision) == TINY_VISION_FAMILY
    with torch.inference_mode():
        (style,) = TextStyleEncode().encode(model, "an oil painting", "a photo", clip_vision=clip_vision, clip=clip)
    expected = F.normalize(text_features(clip, [t.format("an oil painting") for t in STYLE_TEMPLATES]).mean(0, keepdim=True), dim=-1)
    source = F.normalize(text_features(clip, [t.format("a photo") for t in STYLE_TEMPLATES]).mean(0, keepdim=True), dim=-1)
    assert style.encoder == model.text_encoder == tower_identity(clip_vision).encoder_id
    assert torch.allclose(style.target, expected, atol=1e-6) and torch.allclose(style.source, source, atol=1e-6)
    assert style.target.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert clip.cond_stage_model.clip_l.return_projected_pooled is False  # ComfyUI's options put back
    assert all(call.get("disable_weights") is True for call in clip.tokenizer.clip_l.calls)  # '(' is a character here
    model.model = trained_like(model.config)
    with torch.inference_mode():
        (fused,) = StyleFuse().fuse(model, {"samples": torch.randn(1, 4, 8, 8)}, style, 1.0)
    assert fused["samples"].shape == (1, 4, 8, 8) and torch.isfinite(fused["samples"]).all()


def test_the_probe_runs_once_per_pair_of_weights(monkeypatch):
    clip_vision, clip = make_pair(aligned=True)
    model = model_for(clip_vision)
    calls = []
    monkeypatch.setattr(text_towers, "measure_colours", lambda *a: calls.append(1) or measure_colours(*a))
    with torch.inference_mode():
        for text in ("an oil painting", "a pencil sketch"):
            TextStyleEncode().encode(model, text, clip_vision=clip_vision, clip=clip)
    assert len(calls) == 1


def test_a_pair_that_is_not_one_space_is_refused_with_its_measured_accuracy():
    clip_vision, _ = make_pair(aligned=False, seed=10)
    _, clip = make_pair(aligned=False)
    with pytest.raises(ClipPairError) as refused, torch.inference_mode():
        TextStyleEncode().encode(model_for(clip_vision), "an oil painting", clip_vision=clip_vision, clip=clip)
    message = str(refused.value)
    assert re.search(r"the CLIP's clip_l and CLIP_VISION clip-vision-24x2-32px .* are not one space: zero-shot, [0-3] of 6 "
                     r"solid colours named right \(a pair needs 4\)", message), message
    assert "SD1.5 or SDXL checkpoint" in message and "text_encoders/clip_l.safetensors" in message


def test_mismatched_inputs_are_refused_naming_what_fits(tiny_siglip):
    clip_vision, clip = make_pair(aligned=True)
    model = model_for(clip_vision)
    encode = TextStyleEncode().encode
    with torch.inference_mode():
        with pytest.raises(ClipPairError, match="has no text tower; encode reference pictures.*connect the CLIP of the same "
                           "CLIP model to clip .pairs that work: OpenAI CLIP ViT-L/14"):
            encode(model, "an oil painting", clip_vision=clip_vision)
        with pytest.raises(ValueError, match="was made with CLIP_VISION clip-vision-24x2-32px .* connect that CLIP_VISION"):
            encode(model, "an oil painting", clip=clip)
        wide = FakeClip(clip_l=FakeSDClipModel(TinyTextTower(hidden=8)))
        with pytest.raises(ClipPairError, match=r"the CLIP connected holds clip_l \(clip-text-8x2\), but CLIP_VISION "
                           r"clip-vision-24x2-32px .* pairs with tiny-text, from tiny.safetensors"):
            encode(model, "an oil painting", clip_vision=clip_vision, clip=wide)
        siglip_model = StyleMamba(model=trained_like(tiny_config(style_dim=32)), text_encoder=str(tiny_siglip))
        for connected in (dict(clip=clip), dict(clip_vision=clip_vision), dict(clip=clip, clip_vision=clip_vision)):
            with pytest.raises(ClipPairError, match=f"reads SigLIP '{re.escape(str(tiny_siglip))}', which has its own text "
                               "tower: disconnect clip and clip_vision"):
                encode(siglip_model, "an oil painting", **connected)


def test_the_partner_is_picked_among_a_clips_text_towers():
    """SDXL's CLIP holds clip_l and clip_g: the CLIP_VISION's family decides which one encodes."""
    clip_vision, clip = make_pair(aligned=True)
    both = FakeClip(clip_l=FakeSDClipModel(TinyTextTower(hidden=8)), clip_g=clip.cond_stage_model.clip_l)
    both.tokenizer.clip_g = clip.tokenizer.clip_l
    with torch.inference_mode():
        (style,) = TextStyleEncode().encode(model_for(clip_vision), "an oil painting", clip_vision=clip_vision, clip=both)
    expected = F.normalize(text_features(clip, [t.format("an oil painting") for t in STYLE_TEMPLATES]).mean(0, keepdim=True), dim=-1)
    assert torch.allclose(style.target, expected, atol=1e-6)
    assert [tower.attribute for tower in text_towers.text_towers(both)] == ["clip_l", "clip_g"]


def test_a_text_fit_through_the_pair_aims_along_the_text_direction_in_the_vision_space(tiny_vae):
    clip_vision, clip = make_pair(aligned=True)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        vae = FakeComfyVAE(tiny_vae)
        arguments = dict(vae=vae, images=torch.rand(1, 16, 24, 3, generator=generator), style_text="an oil painting",
                         source_text="a photo", iterations=1, learning_rate=5e-3, seed=1, training_decoder=FULL_VAE,
                         max_resolution=512, clip_vision=clip_vision)
        fitted = TrainStyleMamba().train(**arguments, clip=clip)["result"][0]
        with pytest.raises(ValueError, match="a CLIP_VISION encodes pictures only.*or connect the CLIP of the same CLIP model"):
            TrainStyleMamba().train(**arguments)
        with pytest.raises(ClipPairError, match="clip is the text half of a CLIP \\+ CLIP_VISION pair"):
            TrainStyleMamba().train(**(arguments | {"clip_vision": None}), clip=clip)
    identity = tower_identity(clip_vision)
    assert fitted.text_encoder == identity.encoder_id and fitted.training["steps_run"] == 1
    assert fitted.training["style"] == "an oil painting" and torch.count_nonzero(fitted.model.head.weight) > 0


def test_a_paired_text_style_mixes_with_image_styles_of_its_tower_and_is_scored_through_it():
    clip_vision, clip = make_pair(aligned=True)
    model = model_for(clip_vision)
    pictures = torch.rand(2, 40, 56, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        (text_style,) = TextStyleEncode().encode(model, "an oil painting", clip_vision=clip_vision, clip=clip)
        (image_style,) = ImageStyleEncode().encode(model, pictures[:1], content=pictures[1:], clip_vision=clip_vision)
        (mix,) = StyleMixNode().mix(text_style, 1.0, style_2=image_style, weight_2=1.0)
        model.model = trained_like(model.config)
        (fused,) = StyleFuse().fuse(model, {"samples": torch.randn(1, 4, 8, 8)}, mix, 1.0)
        score = StyleScore().score(pictures[1:], pictures[:1], text_style, clip_vision=clip_vision)["result"][0]
    assert fused["samples"].shape == (1, 4, 8, 8) and torch.isfinite(fused["samples"]).all()
    expected = F.cosine_similarity(clip_vision_encoder(clip_vision).encode(pictures[:1].movedim(-1, 1)), text_style.target).item()
    assert score == pytest.approx(expected, abs=1e-5)
