"""Multi-style training: one StyleMamba model over many style prompts, so StyleFuse works zero-shot.

Runs as one process or under ``torchrun`` (DDP: gloo on CPU, nccl on GPU). Every step each rank
draws its own (image, style) pairs from a generator seeded by (seed, step, rank), so a resumed
run repeats exactly the batches an uninterrupted one would have seen. Only rank 0 writes files.

Per step: fusion model → differentiable decode → global, masked and patch directional losses
(each sample against its own style direction) + latent content + TV, and CAST's contrastive term
when its weight is above 0 (each batch then holds its styles in pairs, so every image has a same-style
partner and other-style negatives). Styles are text prompts or folders of reference images (their
direction runs from the mean content embedding to the mean style embedding). The second-order term is
left out here: it tracks one fixed (content, style) pair across steps, which a shuffled
multi-style batch never repeats.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..atomic import write_atomically
from ..checkpoint import StyleMamba, load_checkpoint, save_checkpoint
from ..encoders import ImageEncoder
from ..images import labelled_grid, to_pil
from .losses import LossWeights, latent_content_loss, weighted_loss

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT_PATTERN = re.compile(r"step_(\d{6,})\.safetensors$")


@dataclass
class TrainSettings:
    """Everything that shapes a multi-style run; stored in every checkpoint's metadata."""

    steps: int = 2000
    batch_size: int = 4  # per process and micro-step
    grad_accumulation: int = 1
    lr: float = 5e-4
    lr_halving_steps: int = 500
    seed: int = 0
    precision: str = "fp32"
    checkpoint_every: int = 200
    samples: int = 4  # images and styles in each checkpoint's sample grid
    weights: LossWeights = field(default_factory=lambda: LossWeights(num_crops=16))

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accumulation", "lr_halving_steps", "checkpoint_every", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def record(self) -> dict:
        return {**asdict(self), "weights": asdict(self.weights)}


@dataclass
class TrainingData:
    """Everything fixed during a run, computed once: content latents and their decoded references, style vectors."""

    latents: torch.Tensor  # (n_images, C, h, w)
    references: torch.Tensor  # (n_images, 3, H, W): decode(latents), what an identity model would give
    reference_features: torch.Tensor  # (n_images, d)
    prompts: list[str]
    targets: torch.Tensor  # (n_styles, d): conditioning; the prompts' first, then the image styles'
    directions: torch.Tensor  # (n_styles, d): unit text or image directions for the losses
    image_styles: dict[str, list[str]] = field(default_factory=dict)  # style name → its reference file names


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Distributed:
    """Join the torchrun process group when launched by torchrun, else run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(device=torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), device=chosen)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Randomness of one (step, rank), independent of history: the key to exact resumes."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 4099 + rank) % 2**63)


def draw_styles(count: int, batch: int, generator: torch.Generator, paired: bool) -> torch.Tensor:
    """(batch,) style indices: independent draws, or (``paired``) distinct styles each drawn twice in a row,
    which gives the contrastive loss a positive for every image and negatives from the other pairs."""
    if not paired:
        return torch.randint(0, count, (batch,), generator=generator)
    pairs = (batch + 1) // 2
    order = torch.randperm(count, generator=generator)
    return order[torch.arange(pairs) % count].repeat_interleave(2)[:batch]


def multi_style_loss(
    model: torch.nn.Module,
    decode: Callable[[torch.Tensor], torch.Tensor],
    image_encoder: ImageEncoder,
    data: TrainingData,
    images: torch.Tensor,
    styles: torch.Tensor,
    weights: LossWeights,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Weighted loss terms for (image index, style index) pairs; zero-weight terms are skipped."""
    device = data.latents.device
    latents, references = data.latents[images], data.references[images]
    directions = data.directions[styles].to(device)
    styled_latents = model(latents, data.targets[styles].to(device))
    decoded = decode(styled_latents).float()
    return weighted_loss(
        weights, image_encoder, decoded, references, data.reference_features[images], directions,
        lambda: latent_content_loss(styled_latents.float(), latents), generator, style_labels=styles,
    )


def latest_checkpoint(folder: Path) -> tuple[int, Path] | None:
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.safetensors") if (m := CHECKPOINT_PATTERN.search(p.name))]
    return max(found) if found else None


def draw_loss_curve(rows: list[dict[str, float]], path: Path, size: tuple[int, int] = (640, 360)) -> None:
    """Total loss per step as a PNG line chart (PIL only, no plotting library)."""
    from PIL import Image, ImageDraw

    width, height, margin = *size, 40
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle([margin, 10, width - 10, height - margin], outline="black")
    steps = [r["step"] for r in rows]
    losses = [r["total"] for r in rows]
    if steps:
        low, high = min(losses), max(losses)
        span_loss = (high - low) or 1.0
        first, last = steps[0], steps[-1]
        span_steps = (last - first) or 1

        def point(step: float, loss: float) -> tuple[float, float]:
            x = margin + (step - first) / span_steps * (width - 10 - margin)
            y = height - margin - (loss - low) / span_loss * (height - margin - 10)
            return x, y

        draw.line([point(s, l) for s, l in zip(steps, losses)] if len(steps) > 1 else [point(first, losses[0])] * 2, fill="royalblue", width=2)
        draw.text((2, 10), f"{high:.4g}", fill="black")
        draw.text((2, height - margin - 10), f"{low:.4g}", fill="black")
        draw.text((margin, height - margin + 8), f"step {first}", fill="black")
        draw.text((width - 90, height - margin + 8), f"step {last}", fill="black")
    draw.text((width // 2 - 40, height - 18), "total loss", fill="black")
    write_atomically(path, picture.save, overwrite=True)


def draw_sample_grid(images: torch.Tensor, rows: int, path: Path) -> None:
    """(rows × cols, 3, H, W) in [0, 1] → one PNG; row = content image, column = style."""
    cols = images.shape[0] // rows
    grid = labelled_grid([list(images[row * cols:(row + 1) * cols]) for row in range(rows)])
    write_atomically(path, to_pil(grid).save, overwrite=True)


class Trainer:
    """One run: model, optimiser and data on this rank; ``run`` trains to ``settings.steps``."""

    def __init__(
        self,
        style_mamba: StyleMamba,
        data: TrainingData,
        decode: Callable[[torch.Tensor], torch.Tensor],
        image_encoder: ImageEncoder,
        settings: TrainSettings,
        out_dir: Path,
        distributed: Distributed,
        record: dict | None = None,
    ):
        self.style_mamba, self.data, self.decode, self.image_encoder = style_mamba, data, decode, image_encoder
        self.settings, self.out_dir, self.dist = settings, Path(out_dir), distributed
        self.record = record or {}
        device = distributed.device
        self.module = style_mamba.model.to(device).float().train().requires_grad_(True)
        # Images never reach the temporal mixers, and DDP refuses parameters that get no gradient.
        self.module.temporal.requires_grad_(False)
        self.model = (
            DistributedDataParallel(self.module, device_ids=[device.index] if device.type == "cuda" else None)
            if distributed.world_size > 1 else self.module
        )
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=settings.lr)
        self.schedule = torch.optim.lr_scheduler.StepLR(self.optimizer, settings.lr_halving_steps, gamma=0.5)
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
        self.step = 0

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def resume(self) -> int:
        """Continue from the newest checkpoint in ``out_dir`` (weights + optimiser state); returns its step."""
        latest = latest_checkpoint(self.checkpoint_dir)
        if latest is None:
            return 0
        step, path = latest
        loaded = load_checkpoint(path, device=self.dist.device)
        self.module.load_state_dict(loaded.model.state_dict())
        state = torch.load(path.with_suffix(".state.pt"), map_location=self.dist.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = step
        return step

    def train_step(self) -> dict[str, float]:
        settings, data = self.settings, self.data
        device_type = self.dist.device.type
        dtype = PRECISIONS[settings.precision]
        totals: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(settings.grad_accumulation):
            generator = step_generator(settings.seed, self.step * settings.grad_accumulation + micro, self.dist.rank)
            images = torch.randint(0, data.latents.shape[0], (settings.batch_size,), generator=generator)
            styles = draw_styles(data.targets.shape[0], settings.batch_size, generator, settings.weights.contrastive > 0)
            last = micro == settings.grad_accumulation - 1
            sync = contextlib.nullcontext() if last or self.dist.world_size == 1 else self.model.no_sync()
            precision = torch.autocast(device_type, dtype=dtype) if dtype else contextlib.nullcontext()
            with sync:
                with precision:
                    terms = multi_style_loss(self.model, self.decode, self.image_encoder, data, images, styles, settings.weights, generator)
                self.scaler.scale(terms["total"] / settings.grad_accumulation).backward()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.item() / settings.grad_accumulation
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.step += 1
        return self.averaged(totals)

    def averaged(self, totals: dict[str, float]) -> dict[str, float]:
        """Mean over ranks, for the log only (gradients are already averaged by DDP)."""
        if self.dist.world_size == 1:
            return totals
        names = sorted(totals)
        values = torch.tensor([totals[n] for n in names], dtype=torch.float64, device=self.dist.device)
        dist.all_reduce(values)
        return dict(zip(names, (values / self.dist.world_size).tolist()))

    def save(self) -> Path:
        """Checkpoint (a normal StyleMamba file), optimiser state for resume, loss curve and sample grid."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step_{self.step:06d}.safetensors"
        self.style_mamba.training = {
            **self.record, "prompts": self.data.prompts, "settings": self.settings.record(), "step": self.step,
            **({"style_images": self.data.image_styles} if self.data.image_styles else {}),
        }
        self.module.eval()
        save_checkpoint(self.style_mamba, path, overwrite=True)
        state = {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict()}
        write_atomically(path.with_suffix(".state.pt"), lambda name: torch.save(state, name), overwrite=True)
        draw_loss_curve(read_log(self.log_path), self.out_dir / "loss.png")
        self.save_samples(self.out_dir / "samples" / f"step_{self.step:06d}.png")
        self.module.train()
        return path

    @torch.no_grad()
    def save_samples(self, path: Path) -> None:
        count = min(self.settings.samples, self.data.latents.shape[0])
        styles = min(self.settings.samples, self.data.targets.shape[0])
        latents = self.data.latents[:count].repeat_interleave(styles, dim=0)
        conditions = self.data.targets[:styles].to(latents.device).repeat(count, 1)
        decoded = torch.cat([self.decode(self.module(latents[i : i + 1], conditions[i : i + 1])).float() for i in range(latents.shape[0])])
        draw_sample_grid(torch.cat([self.data.references[:count, None], decoded.view(count, styles, *decoded.shape[1:])], dim=1).flatten(0, 1), count, path)

    @property
    def log_path(self) -> Path:
        return self.out_dir / "loss.csv"

    def log(self, row: dict[str, float]) -> None:
        new = not self.log_path.exists()
        with self.log_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def run(self, progress: Callable[[int, dict[str, float]], None] | None = None) -> StyleMamba:
        """Train from ``self.step`` to ``settings.steps``; checkpoints every ``checkpoint_every`` and at the end."""
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            truncate_log(self.log_path, self.step)
        start = time.perf_counter()
        while self.step < self.settings.steps:
            terms = self.train_step()
            if not math.isfinite(terms["total"]):
                raise FloatingPointError(f"training diverged at step {self.step} (loss {terms['total']}); lower the learning rate")
            if self.dist.is_main:
                self.log({"step": self.step, **terms, "lr": self.schedule.get_last_lr()[0], "seconds": round(time.perf_counter() - start, 3)})
                if self.step % self.settings.checkpoint_every == 0 or self.step == self.settings.steps:
                    self.save()
            if progress is not None:
                progress(self.step, terms)
        if self.dist.world_size > 1:
            dist.barrier()
        self.module.eval().requires_grad_(False)
        return self.style_mamba


def read_log(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def truncate_log(path: Path, step: int) -> None:
    """On resume, drop log rows after the checkpoint so the CSV has each step once."""
    rows = [row for row in read_log(path) if row["step"] <= step]
    if not path.exists():
        return
    if not rows:
        path.unlink()
        return

    def write(name: str) -> None:
        with open(name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: (int(v) if k == "step" else v) for k, v in row.items()} for row in rows)

    write_atomically(path, write, overwrite=True)
