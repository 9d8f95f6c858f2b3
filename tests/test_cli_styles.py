"""`stylemamba stylize` with style images, weights and masks: each option end to end, and each bad input."""

from __future__ import annotations

import argparse

import pytest
import torch

from comfyui_stylemamba.stylemamba.cli import main
from comfyui_stylemamba.stylemamba.cli.styles import command_style, read_style_arguments
from comfyui_stylemamba.stylemamba.encoders import ImageEncoder, TextEncoder
from comfyui_stylemamba.stylemamba.images import load_image, save_image
from comfyui_stylemamba.stylemamba.mixing import StyleMix


@pytest.fixture
def files(tmp_path):
    """A content photo, two style references (one an RGBA PNG) and left/right masks at the content's size."""
    from PIL import Image

    torch.manual_seed(0)
    content = save_image(torch.rand(1, 3, 32, 48), tmp_path / "content.png")
    paper = save_image(torch.rand(1, 3, 20, 20), tmp_path / "paper.png")
    rgba = (torch.rand(24, 16, 4) * 255).round().byte().numpy()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    left = torch.zeros(1, 3, 32, 48)
    left[..., :24] = 1
    return dict(
        content=content, paper=paper, ink=tmp_path / "ink.png",
        left=save_image(left, tmp_path / "left.png"), right=save_image(1 - left, tmp_path / "right.png"),
    )


def stylize(tmp_path, checkpoint, vae, content, *options: str, name: str = "out.png") -> tuple[int, torch.Tensor | None]:
    out = tmp_path / name
    code = main(["stylize", str(content), "--checkpoint", str(checkpoint), "--vae", str(vae), "-o", str(out), *options])
    return code, load_image(out) if code == 0 else None


def test_a_style_image_alone_restyles_and_transparency_counts_as_white(tmp_path, checkpoint, tiny_vae, files):
    from PIL import Image

    code, styled = stylize(tmp_path, checkpoint, tiny_vae, files["content"], "--style-image", str(files["paper"]))
    assert code == 0 and styled.shape == (1, 3, 32, 48)
    _, unchanged = stylize(tmp_path, checkpoint, tiny_vae, files["content"], "--style-image", str(files["paper"]), "--strength", "0", name="same.png")
    assert (styled - unchanged).abs().mean() > 1 / 255
    Image.new("RGBA", (16, 24), (200, 30, 30, 0)).save(tmp_path / "clear.png")
    Image.new("RGB", (16, 24), (255, 255, 255)).save(tmp_path / "white.png")
    _, clear = stylize(tmp_path, checkpoint, tiny_vae, files["content"], "--style-image", str(tmp_path / "clear.png"), name="clear_out.png")
    _, white = stylize(tmp_path, checkpoint, tiny_vae, files["content"], "--style-image", str(tmp_path / "white.png"), name="white_out.png")
    assert torch.equal(clear, white)


def test_text_and_image_mix_and_a_zero_weight_drops_a_style(tmp_path, checkpoint, tiny_vae, files):
    _, text = stylize(tmp_path, checkpoint, tiny_vae, files["content"], "--style", "oil painting", name="text.png")
    options = ["--style", "oil painting", "--style-image", str(files["ink"])]
    _, dropped = stylize(tmp_path, checkpoint, tiny_vae, files["content"], *options, "--style-weight", "1", "--style-weight", "0", name="dropped.png")
    assert torch.equal(dropped, text)
    _, mixed = stylize(tmp_path, checkpoint, tiny_vae, files["content"], *options, "--style-weight", "1", "--style-weight", "3", name="mixed.png")
    assert (mixed - text).abs().max() > 1 / 255


def test_one_mask_per_style_makes_regions(tmp_path, checkpoint, tiny_vae, files):
    options = ["--style", "oil painting", "--style-image", str(files["paper"])]
    _, everywhere = stylize(tmp_path, checkpoint, tiny_vae, files["content"], *options, name="global.png")
    code, regional = stylize(tmp_path, checkpoint, tiny_vae, files["content"], *options, "--mask", str(files["left"]), "--mask", str(files["right"]), name="regions.png")
    assert code == 0 and regional.shape == everywhere.shape
    assert (regional - everywhere).abs().max() > 1 / 255


def arguments(**values) -> argparse.Namespace:
    defaults = dict(style=None, style_image=[], style_weight=[], mask=[], source="a photo")
    return argparse.Namespace(**{**defaults, **values})


def test_options_map_to_styles_weights_and_masks_in_order(tiny_siglip, files):
    text, images = TextEncoder.from_pretrained(str(tiny_siglip)), ImageEncoder.from_pretrained(str(tiny_siglip))
    both = dict(style="oil painting", style_image=[files["paper"], files["ink"]])
    args = arguments(**both, style_weight=[2.0, 1.0, 1.0], mask=[files["left"], files["right"], files["left"]])
    style, whole = command_style(args, text, images, *read_style_arguments(args))
    assert isinstance(style, StyleMix) and whole is None
    assert [(c.style.description, c.weight, c.mask.shape) for c in style.components] == [
        ("oil painting", 0.5, (1, 32, 48)), ("paper.png", 0.25, (1, 32, 48)), ("ink.png", 0.25, (1, 32, 48))]
    assert torch.equal(style.components[1].mask, 1 - style.components[0].mask)  # a grey-scale file: white = 1
    args = arguments(**both, mask=[files["left"]])
    style, whole = command_style(args, text, images, *read_style_arguments(args))
    assert all(c.mask is None for c in style.components) and whole.shape == (1, 32, 48)  # one mask: the whole result
    args = arguments(style="oil painting", mask=[files["left"]])
    style, whole = command_style(args, text, images, *read_style_arguments(args))
    assert style.description == "oil painting" and whole is not None  # a single style stays a plain style


@pytest.mark.parametrize(
    "options,message",
    [
        ([], "no style given: pass --style TEXT and/or --style-image PATH"),
        (["--style", "ink", "--style-weight", "1", "--style-weight", "2"], "2 --style-weight values for 1 styles"),
        (["--style", "ink", "--style-image", "{paper}", "--mask", "{left}", "--mask", "{left}", "--mask", "{left}"], "3 --mask files for 2 styles"),
        (["--style", "ink", "--style-image", "{paper}", "--style-weight", "1", "--style-weight", "-1"], "weight 2 is -1.0; weights must be finite"),
        (["--style", "ink", "--style-image", "{paper}", "--style-weight", "0", "--style-weight", "0"], "are all zero"),
        (["--style-image", "{missing}"], "image not found"),
        (["--style-image", "{paper}", "--style", "ink", "--mask", "{wide}", "--mask", "{left}"], "another aspect ratio than the 24×16 latent"),
        (["--style-image", "{paper}", "--no-checkpoint"], "fitting on the fly (no --checkpoint) learns a --style text"),
    ],
)
def test_bad_style_options_exit_2_with_a_message(tmp_path, checkpoint, tiny_vae, files, capsys, options, message):
    files = {**files, "missing": tmp_path / "nope.png", "wide": save_image(torch.ones(1, 3, 10, 60), tmp_path / "wide.png")}
    options = [option.format(**files) for option in options]
    args = ["stylize", str(files["content"]), "--vae", str(tiny_vae), "-o", str(tmp_path / "o.png")]
    if "--no-checkpoint" in options:
        options.remove("--no-checkpoint")
    else:
        args += ["--checkpoint", str(checkpoint)]
    assert main(args + options) == 2
    error = capsys.readouterr().err
    assert message in error, error
