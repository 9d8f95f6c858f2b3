"""``evaluate`` end to end on tiny models: table, grid, per-method images, and its input errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from comfyui_stylemamba.stylemamba.checkpoint import new_style_mamba, save_checkpoint
from comfyui_stylemamba.stylemamba.cli import build_parser, main
from comfyui_stylemamba.stylemamba.cli.evaluate import Score, markdown_table, read_styles
from comfyui_stylemamba.stylemamba.config import StyleMambaConfig
from comfyui_stylemamba.stylemamba.images import load_image, save_image, square
from comfyui_stylemamba.stylemamba.vae import load_diffusers_vae
from comfyui_stylemamba.stylemamba.training.vgg import VGG19Features

from test_metrics import build_tiny_clip

STYLES = "# prompts for the test\noil painting\n\npencil sketch  # a comment\noil painting\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_siglip):
    root = tmp_path_factory.mktemp("evaluate")
    config = StyleMambaConfig(latent_channels=4, style_dim=32, width=16, depth=1, d_state=4, dt_rank=2)
    checkpoint = save_checkpoint(new_style_mamba(config, text_encoder=str(tiny_siglip)), root / "tiny.safetensors")
    images = root / "images"
    generator = torch.Generator().manual_seed(0)
    save_image(torch.rand(1, 3, 40, 48, generator=generator), images / "wide.png")
    save_image(torch.rand(1, 3, 32, 32, generator=generator), images / "square.png")
    styles = root / "styles.txt"
    styles.write_text("# one prompt keeps the baseline run short\noil painting\n")
    torch.manual_seed(0)
    vgg = root / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in VGG19Features().features.state_dict().items()}, vgg)
    return dict(root=root, checkpoint=checkpoint, images=images, styles=styles, vgg=vgg, clip=build_tiny_clip(root / "clip"))


def arguments(setup, tiny_vae, output: Path, *extra: str) -> list[str]:
    return [
        "evaluate", "--checkpoint", str(setup["checkpoint"]), "--images", str(setup["images"]),
        "--styles", str(setup["styles"]), "--vae", str(tiny_vae), "--size", "32", "-o", str(output), *extra,
    ]


def test_evaluate_end_to_end_with_baseline(setup, tiny_vae, tmp_path, capsys):
    output = tmp_path / "out"
    extra = ["--baseline", "clipstyler", "--baseline-iterations", "2", "--clip-model", str(setup["clip"]), "--vgg-weights", str(setup["vgg"])]
    assert main(arguments(setup, tiny_vae, output, *extra)) == 0
    report = (output / "results.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| StyleMamba") or line.startswith("| CLIPstyler")]
    assert len(rows) == 4  # 2 methods × (1 style + all styles)
    header = next(line for line in report.splitlines() if line.startswith("| method"))
    for column in ("CLIP score (SigLIP)", "CLIP score (CLIP)", "SSIM to content", "VGG content loss", "training time", "inference time"):
        assert column in header
    stylemamba_all = next(row for row in rows if row.startswith("| StyleMamba | **all styles**")).split("|")[3:-1]
    clipstyler_all = next(row for row in rows if row.startswith("| CLIPstyler | **all styles**")).split("|")[3:-1]
    assert stylemamba_all[4].strip() == "n/a"  # this checkpoint records no fit time
    assert float(clipstyler_all[4]) > 0 and float(clipstyler_all[5]) > 0
    for cell in stylemamba_all[:4] + clipstyler_all[:4]:
        assert re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", cell.strip())
    assert "| StyleMamba | **all styles** |" in capsys.readouterr().out

    # an untrained StyleMamba is the identity: its images are the VAE round trip of the square crops
    vae = load_diffusers_vae(str(tiny_vae))
    content = square(load_image(setup["images"] / "wide.png"), 32)
    with torch.no_grad():
        round_trip = vae.decode(vae.encode(content))
    saved = load_image(output / "images" / "StyleMamba" / "wide-png__oil-painting.png")
    assert (saved - round_trip).abs().max() <= 1 / 255 + 1e-6
    assert (output / "images" / "CLIPstyler" / "square-png__oil-painting.png").is_file()

    from PIL import Image

    with Image.open(output / "grid.png") as grid:
        assert grid.size == (3 * 256, 22 + 2 * (18 + 256))  # content | StyleMamba | CLIPstyler, 2 images × 1 style

    assert main(arguments(setup, tiny_vae, output)) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--baseline-iterations", "0"], "--baseline-iterations must be at least 1"),
        (["--size", "8"], "--size must be at least 16"),
        (["--vgg-weights", "absent.pth"], "--vgg-weights file not found"),
    ],
)
def test_evaluate_rejects_bad_arguments(setup, tiny_vae, tmp_path, capsys, extra, message):
    assert main(arguments(setup, tiny_vae, tmp_path / "out", *extra)) == 2
    assert message in capsys.readouterr().err


def test_evaluate_needs_a_vae_and_a_styles_file(setup, tmp_path, capsys):
    base = ["evaluate", "--checkpoint", str(setup["checkpoint"]), "--images", str(setup["images"]), "-o", str(tmp_path / "out")]
    assert main(base + ["--styles", str(setup["styles"])]) == 2
    assert "pass --vae" in capsys.readouterr().err
    assert main(base + ["--styles", str(tmp_path / "none.txt")]) == 2
    assert "styles file not found" in capsys.readouterr().err


def test_read_styles(tmp_path):
    path = tmp_path / "styles.txt"
    path.write_text(STYLES)
    assert read_styles(path) == ["oil painting", "pencil sketch"]
    path.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="no style prompts"):
        read_styles(path)


def test_markdown_table_means_and_optional_columns():
    scores = [
        Score("StyleMamba", "ink", "a", 0.2, None, 0.8, None, None, 0.5),
        Score("StyleMamba", "ink", "b", 0.4, None, 0.6, None, None, 1.5),
    ]
    table = markdown_table(scores)
    assert "CLIP score (CLIP)" not in table and "VGG" not in table
    assert "| StyleMamba | ink | 0.3000 | 0.7000 | n/a | 1.000 |" in table


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["evaluate", "--help"])
    assert exit_info.value.code == 0
    assert "--baseline-iterations" in capsys.readouterr().out


def test_style_images_are_scored_by_image_style_similarity(setup, tiny_vae, tmp_path, tiny_siglip):
    from comfyui_stylemamba.stylemamba.encoders import ImageEncoder

    reference = save_image(torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(5)), tmp_path / "paper.png")
    output = tmp_path / "out"
    assert main([*arguments(setup, tiny_vae, output), "--style-image", str(reference), "--baseline", "clipstyler", "--baseline-iterations", "1"]) == 0
    report = (output / "results.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| method"))
    assert "CLIP score (SigLIP)" in header and "image-style similarity (SigLIP)" in header
    row = next(line for line in report.splitlines() if line.startswith(f"| StyleMamba | {reference} |")).split("|")[3:-1]
    assert row[0].strip() == "n/a"  # no text to score against
    encoder = ImageEncoder.from_pretrained(str(tiny_siglip))
    with torch.no_grad():
        target = encoder.encode(load_image(reference))
        styled = [load_image(output / "images" / "StyleMamba" / f"{name}-png__{re.sub('[^a-z0-9]+', '-', str(reference).lower()).strip('-')[:40]}.png")
                  for name in ("wide", "square")]
        expected = torch.stack([torch.cosine_similarity(encoder.encode(image), target) for image in styled]).mean().item()
    assert float(row[1]) == pytest.approx(expected, abs=2e-3)  # the saved PNGs are 8-bit
    assert not any(line.startswith(f"| CLIPstyler | {reference} |") for line in report.splitlines())  # the baseline is text-driven
    text_only = next(line for line in report.splitlines() if line.startswith("| StyleMamba | oil painting |")).split("|")[3:-1]
    assert text_only[1].strip() == "n/a" and float(text_only[0]) == float(text_only[0])


def test_evaluate_needs_prompts_or_style_images(setup, tiny_vae, tmp_path, capsys):
    base = ["evaluate", "--checkpoint", str(setup["checkpoint"]), "--images", str(setup["images"]), "--vae", str(tiny_vae), "-o", str(tmp_path / "out")]
    assert main(base) == 2
    assert "no styles to evaluate: pass --styles FILE (prompts) and/or --style-image PATH" in capsys.readouterr().err
    assert main(base + ["--style-image", str(tmp_path / "absent.png")]) == 2
    assert "image not found" in capsys.readouterr().err
