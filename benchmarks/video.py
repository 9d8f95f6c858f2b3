"""Video StyleFuse: flicker of frame-by-frame vs temporal fusion, frames per second, and memory against length.

Footage: pan-and-zoom clips over the ``../shared/assets`` photos (``tests/builders.pan_zoom_clip``). No
video VAE runs here (a random Wan VAE would only add noise on CPU), so the clip's "latent" is a fixed
stand-in with a video latent's geometry: 8×8 average pooling and a fixed random 1×1 projection to 16
channels (Wan 2.1's channel count and spatial compression; one latent frame per clip frame).

Flicker = mean |Δstyled − Δcontent| / mean |Δcontent| over consecutive frames (``training.temporal.flicker``).
Warping error = mean |s_t − warp(s_{t−1})| over the latent pixels visible in both frames
(``training.temporal.warping_error``), in latent space (nothing is decoded here), along the camera's exact
flow (``builders.pan_zoom_flow``); the unstyled content's own warping error is its floor (bilinear
sampling between latent pixels and the pooling leave a residue), so it is reported too, and so is the
same figure with no flow (mean |s_t − s_{t−1}| over the same pixels): how much of the frame-to-frame
change the camera motion explains.
A fresh temporal model is the identity, so the comparison needs temporal weights that do something:

* ``frame by frame``: the spatial model alone (random "trained-like" spatial weights: AdaLN gates and
  head opened, std 0.2), each frame on its own;
* ``temporal, random``: the same spatial weights plus random temporal output projections (std 0.2):
  what an untrained-but-opened temporal path does (no reason to be better);
* ``temporal, fitted``: the temporal mixers alone fitted for ``--steps`` Adam steps on the *fit clip* with
  the flow-free terms (consistency + second order) plus staying near the frame-by-frame style
  (so flicker cannot fall by dropping the style), then measured on a *different* clip;
* ``temporal, fitted, forward+backward``: the same, but every temporal mixer also scans backward in time
  (K = 2; a benchmark-only variant of the model's forward-only mixers, fitted the same way from the same
  start). It runs each clip as one chunk: chunked, a backward scan would need the state coming from the
  frames after the chunk, which bounded-memory chunking does not have.
The style strength column (mean |styled − content| / mean |content|) shows the style was kept.
The last row per clip, frame by frame with its style scaled down in latent space to the fitted forward
model's strength, shows how much of the fit's gain a merely weaker style would give.

``--autoencoder taef2`` swaps the stand-in for a real autoencoder: the TAEF2 weights in
``../shared/assets/taef2`` (FLUX.2's tiny autoencoder, 32 latent channels, 8× down). It is an *image*
autoencoder, so each clip frame is encoded on its own (one latent frame per video frame, no temporal
compression). The model is built for 32 channels, fitted by the same recipe in latent space, and every
styled latent is decoded by the TAEF2 decoder: flicker, warping error (along the camera's exact flow at
pixel resolution) and style strength are measured on the decoded frames against the clip's own pixels.
The content row is then the clip's TAEF2 round trip, the floor the autoencoder alone sets. This mode
prints the flicker table only (the speed and memory tables are about Wan's 16-channel latents).

    python benchmarks/video.py                      # everything, CPU, writes nothing
    python benchmarks/video.py --record benchmarks/results/video-cpu.md
    python benchmarks/video.py --autoencoder taef2  # flicker in decoded pixels through the real TAEF2
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the clip builder is shared with the ComfyUI stand-ins

from builders import pan_zoom_clip, pan_zoom_flow, trained_like  # noqa: E402

from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba  # noqa: E402
from comfyui_stylemamba.stylemamba.config import StyleMambaConfig  # noqa: E402
from comfyui_stylemamba.stylemamba.style import StyleEmbedding  # noqa: E402
from comfyui_stylemamba.stylemamba.stylize import stylize_latents  # noqa: E402
from comfyui_stylemamba.stylemamba.temporal import TemporalContext  # noqa: E402
from comfyui_stylemamba.stylemamba.training.taesd import load_tiny_autoencoder  # noqa: E402
from comfyui_stylemamba.stylemamba.training.temporal import (  # noqa: E402
    flicker,
    temporal_consistency_loss,
    temporal_second_order_loss,
    warping_error,
)

PHOTOS = REPO.parent / "shared" / "assets" / "images"
TAEF2 = REPO.parent / "shared" / "assets" / "taef2"
CHANNELS, SPATIAL = 16, 8
#: Wan 2.1 latents of 480p (832×480) and 720p (1280×720) video.
SIZES = {"480p": (60, 104), "720p": (90, 160)}
ENCODER = "google/siglip-base-patch16-224"


def load_photo(name: str) -> torch.Tensor:
    from PIL import Image

    picture = Image.open(PHOTOS / name).convert("RGB")
    return torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8).reshape(picture.height, picture.width, 3).permute(2, 0, 1) / 255


def stand_in_latent(clip: torch.Tensor) -> torch.Tensor:
    """(T, h, w, 3) frames → (1, 16, T, h/8, w/8): pooled and projected by a fixed random 1×1 map."""
    projection = torch.randn(CHANNELS, 3, generator=torch.Generator().manual_seed(0))
    pooled = torch.nn.functional.avg_pool2d(clip.permute(0, 3, 1, 2) * 2 - 1, SPATIAL)  # (T, 3, H, W)
    return torch.einsum("cr,trhw->cthw", projection, pooled)[None]


@dataclass(frozen=True)
class Space:
    """How a clip becomes a latent video, and the space its figures are measured in."""

    name: str
    channels: int
    encode: Callable[[torch.Tensor], torch.Tensor]  # clip (T, h, w, 3) → latent (1, C, T, h/8, w/8)
    decode: Callable[[torch.Tensor], torch.Tensor]  # latent → the measured video (1, C', T, H', W')
    reference: Callable[[torch.Tensor], torch.Tensor]  # clip → the same space, unstyled and never encoded
    per_pixel: int  # clip pixels per measured pixel: the flow's resolution

    def round_trip(self, clip: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(clip))


STAND_IN = Space("stand-in", CHANNELS, stand_in_latent, lambda latent: latent, stand_in_latent, SPATIAL)


def taef2_space() -> Space | None:
    """The real TAEF2 of ``../shared/assets/taef2``, frame by frame (an image autoencoder); None when absent."""
    encoder, decoder = TAEF2 / "taef2_encoder.pth", TAEF2 / "taef2_decoder.pth"
    if not (encoder.is_file() and decoder.is_file()):
        return None
    tiny = load_tiny_autoencoder(decoder, encoder)

    @torch.no_grad()
    def encode(clip: torch.Tensor) -> torch.Tensor:
        return tiny.encode(clip.permute(0, 3, 1, 2)).movedim(0, 1)[None]

    @torch.no_grad()
    def decode(latent: torch.Tensor) -> torch.Tensor:
        return tiny.decode(latent[0].movedim(1, 0)).movedim(0, 1)[None]

    return Space("TAEF2", tiny.latent_channels, encode, decode, lambda clip: clip.permute(3, 0, 1, 2)[None], 1)


def model(config: StyleMambaConfig, temporal_std: float) -> StyleMamba:
    """The tests' trained-like spatial weights (same seed every time) plus temporal output projections of ``temporal_std``."""
    fusion = trained_like(config)
    with torch.no_grad():
        for mixer in fusion.temporal:
            mixer.out_proj.weight.normal_(std=temporal_std)
    return StyleMamba(model=fusion.eval(), text_encoder=ENCODER)


def bidirectional(sm: StyleMamba) -> StyleMamba:
    """Every temporal mixer scans forward and backward in time (K = 2), both directions starting as the
    forward one; D is halved per direction, as both add D·u to the same output."""
    for mixer in sm.model.temporal:
        for name in ("x_proj", "dt_proj", "dt_bias", "A_log", "D"):
            forward = getattr(mixer, name).detach()
            both = forward.repeat(2, *[1] * (forward.dim() - 1))
            setattr(mixer, name, torch.nn.Parameter(both / 2 if name == "D" else both))
    return sm


def style(config: StyleMambaConfig) -> StyleEmbedding:
    target = torch.nn.functional.normalize(torch.randn(1, config.style_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    return StyleEmbedding(target=target, source=-target, description="benchmark style", encoder=ENCODER)


def fit_temporal(sm: StyleMamba, latent: torch.Tensor, condition: torch.Tensor, steps: int) -> list[float]:
    """Adam on the temporal mixers only: flow-free consistency + second order + staying near frame-by-frame style."""
    fusion = sm.model.train()
    frames = latent.shape[2]
    flat = latent.movedim(1, 2).flatten(0, 1)
    with torch.no_grad():
        per_frame = fusion(flat, condition)
    parameters = list(fusion.temporal.parameters())
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    losses = []
    for _ in range(steps):
        styled_flat = fusion(flat, condition, temporal=TemporalContext(frames=frames))
        styled = styled_flat.unflatten(0, (1, frames)).movedim(1, 2)
        keep = (styled_flat - per_frame).square().mean() / (per_frame - flat).square().mean()
        loss = temporal_consistency_loss(styled, latent) + temporal_second_order_loss(styled, latent) + keep
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    fusion.eval()
    return losses


def strength(styled: torch.Tensor, content: torch.Tensor) -> float:
    return ((styled - content).abs().mean() / content.abs().mean()).item()


def figures(video: torch.Tensor, reference: torch.Tensor, flow: torch.Tensor) -> tuple[float, float, float, float]:
    """Flicker and style strength against ``reference``; warping error along ``flow`` and with no flow."""
    return (flicker(video, reference), warping_error(video, flow), warping_error(video, torch.zeros_like(flow)),
            strength(video, reference))


def weakened(space: Space, content: torch.Tensor, styled: torch.Tensor, reference: torch.Tensor, target: float,
             ) -> tuple[float, torch.Tensor]:
    """The frame-by-frame style scaled down in latent space, ``content + a·(styled − content)``, until its decoded
    strength is ``target`` (bisection on ``a`` in [0, 1]): the flicker a merely weaker style has, to tell the temporal
    fit's steadiness apart from the style it gave up. Returns ``a`` and the decoded video."""
    def scaled(weight: float) -> torch.Tensor:
        return space.decode(content + weight * (styled - content))

    low, high = 0.0, 1.0
    for _ in range(12):
        middle = (low + high) / 2
        low, high = (middle, high) if strength(scaled(middle), reference) < target else (low, middle)
    weight = (low + high) / 2
    return weight, scaled(weight)


def flicker_table(
    config: StyleMambaConfig, frames: int, size: tuple[int, int], steps: int, space: Space = STAND_IN
) -> tuple[list[str], dict]:
    """Flicker, warping error (with and without the camera flow) and style strength of the four fusions in ``space``,
    and of frame by frame weakened to the fitted forward model's strength:
    each styled latent is decoded by ``space`` and compared with the clip as ``space`` sees it unencoded; the content
    row is the clip's round trip (for the stand-in, the latent itself: zeros but its warping error)."""
    pictures = {name: pan_zoom_clip(load_photo(name), frames, *size) for name in ("boat.jpg", "tubingen.jpeg")}
    fit_clip, test_clip = (space.encode(pictures[name]) for name in pictures)
    flow = pan_zoom_flow(frames, size[0] // space.per_pixel, size[1] // space.per_pixel)[None]
    emb = style(config)
    spatial, random_temporal = model(config, 0.0), model(config, 0.2)
    fitted, fitted_both = model(config, 0.0), bidirectional(model(config, 0.0))
    fits = []
    for sm in (fitted, fitted_both):
        start = time.perf_counter()
        losses = fit_temporal(sm, fit_clip, emb.target, steps)
        fits.append((time.perf_counter() - start, losses[0], losses[-1]))
    rows, numbers = [], {}
    for name, clip, picture in (("fit clip (boat.jpg)", fit_clip, pictures["boat.jpg"]),
                                ("held-out clip (tubingen.jpeg)", test_clip, pictures["tubingen.jpeg"])):
        reference, content = space.reference(picture), space.round_trip(picture)
        numbers[(name, "content")] = figures(content, reference, flow)
        latents = {}
        for label, sm, mode, chunk in (
            ("frame by frame", spatial, "frame by frame", 4),
            ("temporal, random", random_temporal, "across frames", 4),
            ("temporal, fitted, forward", fitted, "across frames", 4),
            ("temporal, fitted, forward+backward", fitted_both, "across frames", frames),
        ):
            latents[label] = stylize_latents(sm, clip, emb, temporal=mode, batch_size=chunk)
            numbers[(name, label)] = figures(space.decode(latents[label]), reference, flow)
        fitted_strength = numbers[(name, "temporal, fitted, forward")][3]
        weight, weaker = weakened(space, clip, latents["frame by frame"], reference, fitted_strength)
        numbers[(name, f"frame by frame, style ×{weight:.2f} (fitted forward's strength)")] = figures(weaker, reference, flow)
        rows += [f"| {name} | {label} | {f:.3f} | {w:.4f} | {w0:.4f} | {st:.3f} |"
                 for (clip_name, label), (f, w, w0, st) in numbers.items() if clip_name == name]
    fit_notes = "; ".join(
        f"{kind} {seconds:.0f} s, loss {first:.3f} → {last:.3f}"
        for kind, (seconds, first, last) in zip(("forward", "forward+backward"), fits)
    )
    measured = (
        "Warping error in latent space along the camera's exact flow; "
        "the content row is the unstyled latent's own (the floor)."
        if space is STAND_IN else
        f"Every row measured in {space.name}-decoded pixels ({size[1]}×{size[0]}) against the clip's pixels, "
        "warping error along the camera's exact flow at pixel resolution; "
        "the content row is the clip's round trip (the autoencoder's floor)."
    )
    header = [
        f"Clip: {frames} frames of {size[1]}×{size[0]} px pan+zoom → {space.name} latent (1, {space.channels}, "
        f"{frames}, {size[0] // 8}, {size[1] // 8}); temporal fits: {steps} Adam steps (lr 3e-3) on the fit clip "
        f"({fit_notes}). {measured}",
        "",
        "| clip | fusion | flicker | warping error | … without flow | style strength |",
        "|---|---|---:|---:|---:|---:|",
    ]
    return header + rows, numbers


def fps_table(config: StyleMambaConfig, frames: int, repeats: int) -> list[str]:
    rows = ["| latent | fusion | chunk | s per chunk (median) | frames/s |", "|---|---|---:|---:|---:|"]
    sm, emb = model(config, 0.2), style(config)
    for label, (height, width) in SIZES.items():
        latent = torch.randn(1, CHANNELS, frames, height, width, generator=torch.Generator().manual_seed(2))
        for mode in ("frame by frame", "across frames"):
            stylize_latents(sm, latent[:, :, :1], emb, temporal=mode)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                stylize_latents(sm, latent, emb, temporal=mode, batch_size=frames)
                times.append(time.perf_counter() - start)
            median = sorted(times)[len(times) // 2]
            rows.append(f"| {label} Wan 2.1 (16×{height}×{width}) | {mode} | {frames} | {median:.2f} | {frames / median:.2f} |")
    return rows


def peak_rss_mb(frames: int, chunk: int, size: tuple[int, int]) -> float:
    """Peak RSS of a fresh process styling ``frames`` latent frames in chunks of ``chunk`` (see ``--memory-probe``)."""
    command = [sys.executable, __file__, "--memory-probe", str(frames), str(chunk), str(size[0]), str(size[1])]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])["peak_mb"]


def memory_probe(frames: int, chunk: int, height: int, width: int) -> None:
    import resource

    config = StyleMambaConfig(latent_channels=CHANNELS, style_dim=768)
    sm, emb = model(config, 0.2), style(config)
    latent = torch.randn(1, CHANNELS, frames, height, width)
    stylize_latents(sm, latent, emb, batch_size=chunk)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory_table(lengths: list[int], chunk: int, size: tuple[int, int]) -> list[str]:
    rows = ["| latent frames | input+output latents (MB) | peak RSS (MB) |", "|---:|---:|---:|"]
    for frames in lengths:
        tensors = 2 * CHANNELS * frames * size[0] * size[1] * 4 / 2**20
        rows.append(f"| {frames} | {tensors:.1f} | {peak_rss_mb(frames, chunk, size):.0f} |")
    return rows


def title() -> str:
    return (f"Video StyleFuse on CPU ({datetime.date.today()}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__})")


def taef2_lines(space: Space, frames: int, size: tuple[int, int], steps: int) -> list[str]:
    config = StyleMambaConfig(latent_channels=space.channels, style_dim=768)
    flicker_rows, _ = flicker_table(config, frames, size, steps, space)
    return [f"# {title()}", "", f"Default StyleMambaConfig with {space.channels} latent channels ({space.name}); "
            "`python benchmarks/video.py --autoencoder taef2`.", "", "## Flicker in decoded pixels", "",
            *flicker_rows]


def stand_in_lines(args: argparse.Namespace) -> list[str]:
    config = StyleMambaConfig(latent_channels=CHANNELS, style_dim=768)
    flicker_rows, _ = flicker_table(config, args.frames, tuple(args.clip_size), args.steps)
    return [
        f"# {title()}",
        "",
        "Default StyleMambaConfig with 16 latent channels (Wan 2.1 / HunyuanVideo / Cosmos); `python benchmarks/video.py`.",
        "",
        "## Flicker",
        "",
        *flicker_rows,
        "",
        "## Speed",
        "",
        *fps_table(config, args.fps_frames, args.repeats),
        "",
        f"## Memory against length (chunks of 4 latent frames, 16×{SIZES['480p'][0]}×{SIZES['480p'][1]} latents)",
        "",
        *memory_table(args.lengths, 4, SIZES["480p"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=9, help="clip length for the flicker table")
    parser.add_argument("--clip-size", type=int, nargs=2, default=(192, 256), help="clip height width in px")
    parser.add_argument("--steps", type=int, default=40, help="Adam steps of the temporal fit")
    parser.add_argument("--fps-frames", type=int, default=4, help="latent frames per timed chunk")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="*", default=[4, 16, 64], help="latent frames for the memory table")
    parser.add_argument("--autoencoder", choices=("stand-in", "taef2"), default="stand-in",
                        help="stand-in: fixed random latent, figures in latent space (default); taef2: the real TAEF2, "
                             "figures in decoded pixels, flicker table only")
    parser.add_argument("--record", type=Path, help="write the tables as markdown here")
    parser.add_argument("--memory-probe", type=int, nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return
    torch.set_num_threads(torch.get_num_threads())
    if args.autoencoder == "taef2":
        space = taef2_space()
        if space is None:
            print(f"skipped: --autoencoder taef2 needs taef2_encoder.pth and taef2_decoder.pth in {TAEF2} (not found)")
            return
        lines = taef2_lines(space, args.frames, tuple(args.clip_size), args.steps)
    else:
        lines = stand_in_lines(args)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        args.record.write_text(text)


if __name__ == "__main__":
    main()
