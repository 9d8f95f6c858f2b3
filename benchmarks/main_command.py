"""Wall time of the README's main command, ``stylemamba stylize PHOTO --style TEXT -o OUT``, at its defaults.

The command fits a StyleMamba model for the prompt on the fly (every fit default: steps, resolution, losses,
the full VAE as training decoder, weights kept on the fixed evaluation) and applies it to the photo. The hub is
not reachable from the project machines, so the command runs on local folders with random weights in the real
shapes: SigLIP-base/16-224 (text and vision towers; a word-level tokenizer stands in for its SentencePiece one,
which changes nothing but the token ids) and the SD VAE (``stabilityai/sd-vae-ft-mse``'s AutoencoderKL shape).
Random weights change the pictures, not the compute. The goal is ≤ 10 min wall on the 2-core CPU machine.

The command's own output says how long its fit took; the rest is loading the models and applying the model
(encode, fuse, decode at the photo's size). Inside the fit, ``benchmarks/fit.py --encoders base --sizes 256
--decoders sd-vae`` gives the stage costs of one step.

    python benchmarks/main_command.py                 # builds the random models once under .cache/, then times the command
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from fit import ASSETS, FULL_VAES

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 600
FIT_SUMMARY = re.compile(r"fitted (\d+) steps in ([\d.]+) s; kept the weights after update (\d+)")


def build_sd_vae(folder: Path) -> Path:
    """A random AutoencoderKL of the SD VAE's shape, saved as a diffusers folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = len(FULL_VAES["sd15"]["block_out_channels"])
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        scaling_factor=0.18215, sample_size=512, **FULL_VAES["sd15"],
    ).save_pretrained(folder)
    return folder


def build_siglip_base(folder: Path) -> Path:
    """A random SigLIP at siglip-base-patch16-224's shape (its config defaults), with a word-level tokenizer."""
    sys.path.insert(0, str(REPO / "tests"))
    from builders import TINY_WORDS, word_level_tokenizer
    from transformers import SiglipConfig, SiglipModel

    tokenizer = word_level_tokenizer(TINY_WORDS, max_length=64)
    torch.manual_seed(0)
    config = SiglipConfig(text_config=dict(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2, bos_token_id=2))
    SiglipModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=ASSETS / "images" / "boat.jpg", help="content photo (default: %(default)s)")
    parser.add_argument("--style", default="an oil painting by Van Gogh", help="style text (default: %(default)r)")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "main-command", help="where the random models are kept")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="options passed on to stylize after --, e.g. -- --keep last")
    args = parser.parse_args()
    vae = args.cache / "sd-vae"
    siglip = args.cache / "siglip-base"
    if not (vae / "config.json").is_file():
        build_sd_vae(vae)
    if not (siglip / "config.json").is_file():
        build_siglip_base(siglip)
    output = args.cache / "out" / f"{args.image.stem}.png"
    extra = [arg for arg in args.extra if arg != "--"]
    command = [str(Path(sys.executable).parent / "stylemamba"), "stylize", str(args.image), "--style", args.style, "-o", str(output),
               "--vae", str(vae), "--text-encoder", str(siglip), "--overwrite", *extra]
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=args.cache)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"the command failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = FIT_SUMMARY.search(done.stdout + done.stderr)
    fit_seconds = float(summary.group(2)) if summary else float("nan")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{v:.1f}' for v in load_before)} before, {' '.join(f'{v:.1f}' for v in os.getloadavg())} after")
    print(f"command: stylemamba stylize {args.image.name} --style {args.style!r} -o OUT (random SigLIP-base + SD-VAE folders) {' '.join(extra)}")
    print(f"| total wall s | CPU s (all threads) | fit wall s | load + apply wall s | goal |")
    print("|---|---|---|---|---|")
    verdict = "met" if wall <= GOAL_SECONDS else f"missed by {wall - GOAL_SECONDS:.0f} s"
    print(f"| {wall:.0f} | {cpu:.0f} | {fit_seconds:.0f} | {wall - fit_seconds:.0f} | ≤ {GOAL_SECONDS} s: {verdict} |")
    if summary:
        print(f"fit: {summary.group(0)}")
    if wall > GOAL_SECONDS:
        stage = "the fit" if fit_seconds > wall - fit_seconds else "loading and applying"
        print(f"held by {stage}; inside the fit see benchmarks/fit.py --encoders base --sizes 256 --decoders sd-vae")


if __name__ == "__main__":
    main()
