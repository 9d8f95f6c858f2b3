"""Fitting from style images: the image direction, the fit, `fit --style-image`, the node and `train --style-images`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from comfyui_stylemamba.stylemamba.checkpoint import load_checkpoint, new_style_mamba, read_metadata
from comfyui_stylemamba.stylemamba.cli import main
from comfyui_stylemamba.stylemamba.cli.prompts import read_style_folders
from comfyui_stylemamba.stylemamba.encoders import ImageEncoder
from comfyui_stylemamba.stylemamba.images import save_image
from comfyui_stylemamba.stylemamba.mixing import mix_styles
from comfyui_stylemamba.stylemamba.style import StyleEmbedding
from comfyui_stylemamba.stylemamba.training.fit import FitSettings, fit_style
from comfyui_stylemamba.stylemamba.training.losses import LossWeights
from comfyui_stylemamba.stylemamba.training.reference_styles import combine_styles, content_direction_style, fit_target_style
from comfyui_stylemamba.stylemamba.training.train import draw_styles
from comfyui_stylemamba.stylemamba.training.vgg import VGG19Features
from comfyui_stylemamba.stylemamba.vae import load_diffusers_vae

from builders import tiny_config

DIRECTIONAL_ONLY = LossWeights(patch=0.0, masked=0.0, second_order=0.0, content=0.0, tv=0.0)


@pytest.fixture(scope="module")
def encoder(tiny_siglip) -> ImageEncoder:
    return ImageEncoder.from_pretrained(str(tiny_siglip))


def smooth(*shape: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return F.interpolate(torch.rand(shape[0], shape[1], 4, 4), size=shape[2:], mode="bilinear")


def test_image_direction_is_the_normalised_mean_style_minus_mean_content(encoder):
    content, style_a, style_b = smooth(2, 3, 16, 16, seed=0), smooth(1, 3, 20, 12, seed=1), smooth(1, 4, 8, 8, seed=2)
    style = content_direction_style(encoder, [style_a, style_b], content)
    with torch.no_grad():
        flat_b = style_b[:, :3] * style_b[:, 3:] + (1 - style_b[:, 3:])  # alpha on white
        style_mean = F.normalize(torch.cat([encoder.encode(style_a), encoder.encode(flat_b)]).mean(0, keepdim=True), dim=-1)
        content_mean = F.normalize(encoder.encode(content).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(style.target, style_mean)
    torch.testing.assert_close(style.direction, F.normalize(style_mean - content_mean, dim=-1))
    assert style.description == "image style (2 images)" and style.encoder == encoder.name


def test_text_and_images_together_are_their_equal_weight_mix(encoder):
    content = smooth(1, 3, 16, 16, seed=0)
    torch.manual_seed(5)
    text = StyleEmbedding(F.normalize(torch.randn(1, 32), dim=-1), F.normalize(torch.randn(1, 32), dim=-1), "ink", encoder.name)
    image = content_direction_style(encoder, [smooth(1, 3, 16, 16, seed=1)], content)
    both = fit_target_style(text, encoder, [smooth(1, 3, 16, 16, seed=1)], content)
    mix = mix_styles([text, image], [1.0, 1.0])
    torch.testing.assert_close(both.target, mix.target)
    torch.testing.assert_close(both.direction, mix.direction)
    torch.testing.assert_close(both.target, F.normalize(text.target + image.target, dim=-1))
    assert both.description == "ink + image style (1 image)"
    torch.testing.assert_close(combine_styles(text, image).source, both.source)
    assert fit_target_style(text, encoder, [], content) is text
    with pytest.raises(ValueError, match="no style to fit: give a style text and/or at least one style image"):
        fit_target_style(None, encoder, [torch.zeros(0, 3, 8, 8)], content)


@pytest.fixture(scope="module")
def vae(tiny_vae):
    return load_diffusers_vae(str(tiny_vae))


def test_image_direction_loss_lowers_on_a_tiny_fit(vae, encoder):
    content = smooth(2, 3, 16, 16, seed=4)
    style = content_direction_style(encoder, [smooth(2, 3, 24, 24, seed=9)], content)
    start = new_style_mamba(tiny_config(style_dim=32, depth=1), text_encoder="tiny", seed=0)
    settings = FitSettings(iterations=10, lr=5e-3, weights=DIRECTIONAL_ONLY)
    result = fit_style(start, content, style, vae.encode, vae.decode, encoder, settings)
    directional = [h["directional"] for h in result.history]
    assert directional[0] == pytest.approx(500.0, abs=1e-3)  # untouched image: 1 − cos(0, Δ) = 1
    assert min(directional[1:]) < directional[0] - 1.0
    assert result.style_mamba.training["style"] == "image style (2 images)"


def test_style_statistics_term_in_a_fit_needs_images_and_vgg(vae, encoder):
    content = smooth(1, 3, 16, 16, seed=4)
    style = content_direction_style(encoder, [smooth(1, 3, 16, 16, seed=9)], content)
    start = new_style_mamba(tiny_config(style_dim=32, depth=1), text_encoder="tiny", seed=0)
    weights = dataclasses.replace(DIRECTIONAL_ONLY, style_statistics=10.0)
    settings = FitSettings(iterations=2, lr=5e-3, weights=weights, style_statistics="gram")
    with pytest.raises(ValueError, match="needs style images and VGG-19 weights"):
        fit_style(start, content, style, vae.encode, vae.decode, encoder, settings)
    torch.manual_seed(0)
    vgg = VGG19Features().eval().requires_grad_(False)
    rgba = torch.cat([smooth(1, 3, 20, 12, seed=9), torch.ones(1, 1, 20, 12)], dim=1)
    result = fit_style(start, content, style, vae.encode, vae.decode, encoder, settings, vgg=vgg, style_images=[rgba])
    assert set(result.history[0]) == {"directional", "style_statistics", "total"}
    assert result.history[0]["style_statistics"] > 0
    with pytest.raises(ValueError, match="style_statistics must be one of mean_std, gram"):
        FitSettings(style_statistics="adain")


@pytest.fixture
def files(tmp_path):
    content = save_image(smooth(1, 3, 16, 20, seed=0), tmp_path / "content.png")
    style = save_image(smooth(1, 3, 30, 14, seed=1), tmp_path / "style.png")
    from PIL import Image

    rgba = Image.new("RGBA", (9, 23), (200, 30, 30, 100))  # any size, with transparency
    rgba.save(tmp_path / "alpha.png")
    return content, style, tmp_path / "alpha.png"


def fit_args(content, tiny_vae, tiny_siglip, output, *extra):
    return [
        "fit", str(content), "-o", str(output), "--vae", str(tiny_vae), "--text-encoder", str(tiny_siglip),
        "--iterations", "2", "--max-resolution", "16", *extra,
    ]


def test_fit_from_style_images_alone_records_them(tmp_path, files, tiny_vae, tiny_siglip, capsys):
    content, style, alpha = files
    output = tmp_path / "image.safetensors"
    assert main(fit_args(content, tiny_vae, tiny_siglip, output, "--style-image", str(style), "--style-image", str(alpha))) == 0
    training = json.loads(read_metadata(output)["training"])
    assert training["style"] == "image style (2 images)"
    assert training["style_images"] == ["style.png", "alpha.png"] and training["style_image_count"] == 2
    assert load_checkpoint(output).config.style_dim == 32
    both = tmp_path / "both.safetensors"
    assert main(fit_args(content, tiny_vae, tiny_siglip, both, "--style", "ink", "--style-image", str(style))) == 0
    assert json.loads(read_metadata(both)["training"])["style"] == "ink + image style (1 image)"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "no style given: pass --style TEXT and/or --style-image PATH"),
        (("--style", "  "), "--style is empty"),
        (("--style-image", "missing.png"), "image not found: missing.png"),
        (("--style", "ink", "--style-stats-weight", "10"), "--style-stats-weight matches the statistics of style images"),
        (("--style-image", "STYLE", "--style-stats-weight", "10"), "--style-stats-weight needs --vgg-weights"),
        (("--style-image", "STYLE", "--style-stats-weight", "-1"), "--style-stats-weight must be 0 or more, got -1.0"),
        (("--style-image", "STYLE", "--style-stats-weight", "1", "--vgg-weights", "none.pth"), "VGG-19 weights not found: none.pth"),
    ],
)
def test_fit_refuses_bad_style_inputs_clearly(tmp_path, files, tiny_vae, tiny_siglip, capsys, extra, message, monkeypatch):
    content, style, _ = files
    monkeypatch.chdir(tmp_path.parent)
    extra = [str(style) if item == "STYLE" else item for item in extra]
    assert main(fit_args(content, tiny_vae, tiny_siglip, tmp_path / "x.safetensors", *extra)) == 2
    assert message in capsys.readouterr().err


def test_fit_with_a_real_vgg_file_runs_the_style_statistics_loss(tmp_path, files, tiny_vae, tiny_siglip):
    content, style, _ = files
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in VGG19Features().features.state_dict().items()}, tmp_path / "vgg19.pth")
    output = tmp_path / "stats.safetensors"
    extra = ("--style-image", str(style), "--style-stats-weight", "5", "--style-stats", "gram", "--vgg-weights", str(tmp_path / "vgg19.pth"))
    assert main(fit_args(content, tiny_vae, tiny_siglip, output, *extra)) == 0
    training = json.loads(read_metadata(output)["training"])
    assert training["settings"]["weights"]["style_statistics"] == 5.0 and training["settings"]["style_statistics"] == "gram"


def test_help_lists_the_image_options(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "--style-image" in text and "--style-stats-weight" in text and "--style-stats" in text


def test_node_fits_from_style_images_alone(tiny_vae, tiny_siglip):
    from comfyui_stylemamba.nodes.training_nodes import FULL_VAE, TrainStyleMamba
    from test_training_nodes import FakeComfyVAE

    with torch.inference_mode():
        comfy_vae = FakeComfyVAE(tiny_vae)
        images = smooth(1, 3, 16, 16, seed=0).movedim(1, -1)
        references = torch.cat([smooth(2, 3, 24, 24, seed=1), torch.full((2, 1, 24, 24), 0.5)], dim=1).movedim(1, -1)  # RGBA
        start = new_style_mamba(tiny_config(style_dim=32, depth=1), text_encoder=str(tiny_siglip))
    arguments = dict(
        vae=comfy_vae, images=images, style_text="", source_text="photo", iterations=2, learning_rate=5e-3, seed=1,
        training_decoder=FULL_VAE, max_resolution=512, style_mamba=start,
    )
    with torch.inference_mode():
        with pytest.raises(ValueError, match="the style text is empty and no style_images are connected"):
            TrainStyleMamba().train(**arguments)
        with pytest.raises(ValueError, match="connect style_images and choose vgg_weights"):
            TrainStyleMamba().train(**arguments, style_images=references, style_statistics_weight=1.0)
        fitted = TrainStyleMamba().train(**arguments, style_images=references)["result"][0]
    assert fitted.training["style"] == "image style (2 images)" and fitted.training["style_image_count"] == 2
    assert fitted.source == "TrainStyleMamba: image style (2 images)"
    assert torch.count_nonzero(fitted.model.head.weight) > 0
    optional = TrainStyleMamba.INPUT_TYPES()["optional"]
    assert optional["style_images"][0] == "IMAGE" and optional["style_statistics_weight"][1]["default"] == 0.0


def test_style_folders_are_read_with_clear_errors(tmp_path):
    root = tmp_path / "refs"
    with pytest.raises(NotADirectoryError, match="style image folder not found"):
        read_style_folders(root)
    root.mkdir()
    with pytest.raises(ValueError, match="has no sub-folders"):
        read_style_folders(root)
    save_image(torch.rand(1, 3, 8, 8), root / "loose.png")
    with pytest.raises(ValueError, match="holds images directly"):
        read_style_folders(root)
    (root / "loose.png").unlink()
    (root / "ink").mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_style_folders(root)
    save_image(torch.rand(1, 3, 8, 8), root / "ink" / "b.png")
    save_image(torch.rand(1, 3, 9, 7), root / "ink" / "a.png")
    assert {name: [p.name for p in paths] for name, paths in read_style_folders(root).items()} == {"ink": ["a.png", "b.png"]}


def test_paired_style_draws_give_every_image_a_partner():
    generator = torch.Generator().manual_seed(0)
    styles = draw_styles(5, 6, generator, paired=True)
    assert styles.shape == (6,) and torch.equal(styles[0::2], styles[1::2]) and len(set(styles[0::2].tolist())) == 3
    assert draw_styles(2, 5, generator, paired=True).shape == (5,)


def test_train_with_text_and_image_styles_and_the_contrastive_loss(tmp_path, tiny_vae, tiny_siglip, capsys):
    torch.manual_seed(0)
    for index in range(2):
        save_image(torch.rand(1, 3, 16, 16), tmp_path / "images" / f"{index}.png")
    save_image(smooth(1, 3, 20, 20, seed=1), tmp_path / "refs" / "ink" / "1.png")
    save_image(smooth(1, 3, 12, 18, seed=2), tmp_path / "refs" / "glow" / "1.png")
    styles = tmp_path / "styles.txt"
    styles.write_text("oil painting\n")
    common = [
        "train", "--images", str(tmp_path / "images"), "--vae", str(tiny_vae), "--text-encoder", str(tiny_siglip),
        "--width", "16", "--depth", "1", "--resolution", "16", "--num-crops", "2", "--lr", "0.01", "--device", "cpu",
        "--steps", "2", "--checkpoint-every", "2",
    ]
    out = tmp_path / "run"
    assert main([*common, "--out", str(out), "--styles", str(styles), "--style-images", str(tmp_path / "refs"), "--batch-size", "4"]) == 0
    training = json.loads(read_metadata(out / "checkpoints" / "step_000002.safetensors")["training"])
    assert training["prompts"] == ["oil painting"] and training["style_images"] == {"glow": ["1.png"], "ink": ["1.png"]}
    assert training["settings"]["weights"]["contrastive"] == 50.0
    header = (out / "loss.csv").read_text().splitlines()[0].split(",")
    assert "contrastive" in header
    assert main([*common, "--out", str(tmp_path / "none")]) == 2
    assert "no styles to train on" in capsys.readouterr().err
    one = [*common, "--out", str(tmp_path / "one"), "--styles", str(styles), "--batch-size", "4", "--contrastive-weight", "1"]
    assert main(one) == 2
    assert "--contrastive-weight needs 2+ styles and --batch-size 4+" in capsys.readouterr().err
