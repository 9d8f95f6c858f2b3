"""Draw the templates' example inputs (workflows/inputs/): a landscape photo stand-in, a second scene, a painted style
reference, the first scene's sky mask and a short camera move over it as an H.264 clip.

Why drawn, not photographed: the templates must run as opened on any install, and a file the pack ships has to be
ours to license (the test photos in ../shared/assets are not). The pack copies these into ComfyUI's input folder on
load (nodes/example_inputs.py), so every LoadImage / LoadImageMask / LoadVideo of a template finds its file.

Deterministic: the same files on every run. Needs numpy, Pillow and PyAV (ComfyUI's own venv has all three):
    <ComfyUI venv>/bin/python tests/comfyui/tools/make_example_inputs.py
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 512
OUT = Path(__file__).resolve().parents[3] / "workflows" / "inputs"
#: Wan 2.1's VAE takes 4k+1 frames; 17 frames are 5 latent frames.
CLIP_FRAMES, CLIP_SIZE, CLIP_FPS = 17, 256, 8


@dataclass(frozen=True)
class Palette:
    sky_top: tuple[int, int, int]
    sky_horizon: tuple[int, int, int]
    sun: tuple[int, int, int]
    far_hills: tuple[int, int, int]
    near_hills: tuple[int, int, int]
    water: tuple[int, int, int]


DAY = Palette((40, 90, 170), (190, 215, 235), (255, 244, 210), (110, 130, 150), (45, 85, 50), (60, 100, 140))
DUSK = Palette((35, 30, 80), (240, 150, 90), (255, 210, 140), (90, 60, 90), (40, 35, 45), (70, 60, 100))


def ridge(rng: np.random.Generator, width: int, base: float, roughness: float) -> np.ndarray:
    """A hill line (height in pixels per column) from a few octaves of smoothed noise."""
    line = np.zeros(width)
    for octave in range(5):
        knots = rng.normal(size=2 ** (octave + 2) + 1)
        line += np.interp(np.linspace(0, len(knots) - 1, width), np.arange(len(knots)), knots) * roughness / 2 ** octave
    return base + line


def scene(palette: Palette, seed: int) -> tuple[Image.Image, Image.Image]:
    """A landscape (RGB) and its sky mask (L, white = sky): sky, sun, two hill ranges, a lake with reflections, trees."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, SIZE)[:, None, None]
    sky = np.array(palette.sky_top) * (1 - rows) + np.array(palette.sky_horizon) * rows
    picture = np.broadcast_to(sky, (SIZE, SIZE, 3)).copy()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    sun_x, sun_y = rng.uniform(0.25, 0.75) * SIZE, rng.uniform(0.15, 0.3) * SIZE
    glow = np.exp(-((xx - sun_x) ** 2 + (yy - sun_y) ** 2) / (2 * 60.0 ** 2))[..., None]
    picture = picture * (1 - 0.5 * glow) + np.array(palette.sun) * 0.5 * glow
    picture[(xx - sun_x) ** 2 + (yy - sun_y) ** 2 < 28 ** 2] = palette.sun
    horizon = int(SIZE * 0.68)
    far, near = ridge(rng, SIZE, SIZE * 0.45, 40), ridge(rng, SIZE, SIZE * 0.56, 30)
    for line, colour in ((far, palette.far_hills), (near, palette.near_hills)):
        shade = 1 - 0.25 * (yy - line[None, :]) / SIZE  # darker downhill
        land = (yy > line[None, :]) & (yy < horizon)
        picture[land] = (np.array(colour) * shade[..., None])[land]
    sky_mask = yy < far[None, :]
    # The lake mirrors what is above the horizon, rippled and darkened towards the viewer.
    depth = np.arange(SIZE - horizon)
    source_rows = np.clip(horizon - 1 - depth, 0, SIZE - 1)
    ripple = (3 * np.sin(depth[:, None] * 0.35 + xx[horizon:] * 0.05)).astype(int)
    mirrored = picture[source_rows[:, None], np.clip(xx[horizon:] + ripple, 0, SIZE - 1)]
    fade = (depth / (SIZE - horizon))[:, None, None]
    picture[horizon:] = mirrored * (1 - 0.5 - 0.3 * fade) + np.array(palette.water) * (0.5 + 0.3 * fade)
    image = Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for x in rng.uniform(0.05, 0.95, 9) * SIZE:  # dark conifers on the near shore
        top, height = near[int(x)] - rng.uniform(30, 60), rng.uniform(50, 80)
        draw.polygon([(x, top), (x - height / 4, top + height), (x + height / 4, top + height)], fill=(20, 45, 30))
    mask = Image.fromarray((sky_mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    return image.filter(ImageFilter.GaussianBlur(0.6)), mask


def painted_style(seed: int) -> Image.Image:
    """A swirling brush-stroke painting: short strokes following a few vortices, in a blue/yellow palette."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (SIZE, SIZE), (25, 45, 95))
    draw = ImageDraw.Draw(image)
    centres = rng.uniform(0.1, 0.9, size=(5, 2)) * SIZE
    spins = rng.choice([-1.0, 1.0], size=5) * rng.uniform(0.6, 1.2, size=5)
    colours = np.array([(245, 205, 70), (250, 235, 150), (70, 120, 200), (40, 80, 160), (140, 180, 220), (230, 160, 50)])

    def flow(point: np.ndarray) -> np.ndarray:
        offsets = point - centres
        distance = np.linalg.norm(offsets, axis=1, keepdims=True) + 20
        swirl = np.stack([-offsets[:, 1], offsets[:, 0]], axis=1) * spins[:, None] / distance ** 1.5
        direction = swirl.sum(axis=0) + np.array([0.02, 0.0])
        return direction / (np.linalg.norm(direction) + 1e-9)

    for _ in range(2600):
        point = rng.uniform(0, SIZE, 2)
        near_centre = np.min(np.linalg.norm(centres - point, axis=1))
        colour = colours[rng.integers(0, 2) if near_centre < 60 else rng.integers(2, len(colours))]
        colour = tuple(int(c) for c in np.clip(colour + rng.normal(0, 12, 3), 0, 255))
        path = [tuple(point)]
        for _ in range(int(rng.integers(6, 14))):
            point = point + 4 * flow(point)
            path.append(tuple(point))
        draw.line(path, fill=colour, width=int(rng.integers(3, 7)), joint="curve")
    return image.filter(ImageFilter.GaussianBlur(0.7))


def camera_move(picture: Image.Image) -> list[Image.Image]:
    """A pan from left to right while zooming in: smooth, known motion for the video template."""
    frames = []
    for step in np.linspace(0, 1, CLIP_FRAMES):
        side = SIZE * (1 - 0.35 * step)
        left, top = (SIZE - side) * step, (SIZE - side) / 2
        frames.append(picture.resize((CLIP_SIZE, CLIP_SIZE), Image.BICUBIC, box=(left, top, left + side, top + side)))
    return frames


def write_clip(frames: list[Image.Image], path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = CLIP_SIZE, CLIP_SIZE, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryslow"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode())


def main(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    photo, sky = scene(DAY, seed=3)
    second, _ = scene(DUSK, seed=11)
    files = {
        "stylemamba_example_photo.jpg": photo, "stylemamba_example_photo_dusk.jpg": second,
        "stylemamba_example_style.jpg": painted_style(seed=5), "stylemamba_example_sky_mask.png": sky,
    }
    for name, image in files.items():
        image.save(out / name, quality=90) if name.endswith(".jpg") else image.save(out / name, optimize=True)
    write_clip(camera_move(photo), out / "stylemamba_example_clip.mp4")
    return sorted(out.iterdir())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write to (default {OUT})")
    for written in main(parser.parse_args().out):
        print(f"{written.stat().st_size:>8} B  {written}")
