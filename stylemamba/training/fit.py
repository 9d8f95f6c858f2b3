"""Per-style fit: optimise a StyleMamba model so decoded latents move along one text or image direction.

The content latents are encoded once; every step runs the fusion model, decodes differentiably
(the full VAE, or a tiny autoencoder of the same latent family as a cheap proxy) and applies the
paper's losses. Shared by the TrainStyleMamba node and the ``fit`` / ``stylize`` commands.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from ..checkpoint import StyleMamba, new_style_mamba
from ..config import config_for_encoder
from ..encoders import ImageEncoder
from ..image_style import siglip_rgb
from ..images import fit_resolution
from ..temporal import TemporalContext
from ..latent_families import VideoInputError
from .losses import (
    STYLE_STATISTICS,
    LossWeights,
    video_weights,
    SecondOrderDirectionalLoss,
    latent_content_loss,
    siglip_content_loss,
    style_statistics_loss,
    style_statistics_target,
    vgg_content_loss,
    weighted_loss,
)
from ..style import StyleEmbedding
from .video_fit import VideoClip, as_video, encode_clip

CONTENT_LOSSES = ("latent", "siglip", "vgg")

#: Longer image side a fit decodes at by default (node and shell). On a 2-core CPU with an SD-sized VAE as the training
#: decoder a step at 512 px costs about 4x one at 256 px (benchmarks/results/fit-cpu.md); the model then applies at any size.
DEFAULT_FIT_RESOLUTION = 256

#: Which weights a fit hands back: the lowest on the fixed evaluation after any update, or the last update's.
KEEP_CHOICES = ("best", "last")

#: ``callback(step, total_loss, preview)`` after each step; ``preview`` is an image batch in [0, 1]
#: every ``preview_every`` steps, else None. Returning True stops the fit (the weights ``keep`` names so far are kept).
FitCallback = Callable[[int, float, "torch.Tensor | None"], bool]


def fit_weights(
    patch_loss: bool = False, crops: int = 64, crop_resolution: int = 0, style_statistics: float = 0.0, video: bool = False,
) -> LossWeights:
    """A per-style fit's loss set: StyleMamba's global, masked and second-order directional terms, content and TV.

    CLIPstyler's patch-wise term is what the paper replaces with the masked one, and with a real-sized encoder
    its ``crops`` crops are most of a step's cost (benchmarks/results/fit-cpu.md), so it is an option:
    ``patch_loss`` turns it on at CLIPstyler's weight, ``crops`` crops encoded at ``crop_resolution``
    (0: the encoder's input size). ``video`` switches to the video terms (``video_weights``).
    """
    weights = LossWeights(
        patch=LossWeights.patch if patch_loss else 0.0, num_crops=crops, crop_resolution=crop_resolution,
        style_statistics=style_statistics,
    )
    return video_weights(weights) if video else weights


@dataclass
class FitSettings:
    """Everything that shapes a fit besides the data; recorded in the checkpoint's metadata.

    Optimiser defaults follow CLIPstyler (Adam 5e-4 halved every 100 steps); the step count is
    StyleMamba's claim of 5× fewer iterations than CLIPstyler's 200. Raise it for a stronger style.
    The loss set is the paper's (``fit_weights``). The content term
    defaults to latent L2 because it needs no extra weights; ``vgg`` needs ``vgg`` passed to
    ``fit_style`` (CLIPstyler's choice, weights supplied by the user). ``style_statistics`` is the kind
    of VGG statistics (AdaIN's ``mean_std`` or Gatys's ``gram``) the style-statistics term matches when
    ``weights.style_statistics`` > 0, which needs style images and ``vgg`` too.

    ``keep`` says which weights the fit returns: ``best`` evaluates the weights after every update on one
    fixed draw (``FixedEvaluation``) and keeps the lowest, ``last`` skips that evaluation and keeps the
    weights after the last update.

    ``video`` reads the content as the frames of one clip: the temporal mixers train, and each step decodes
    a random run of ``frames_per_step`` latent frames (4: enough consecutive frames for the temporal masked
    term, few enough that decoding stays cheap on any clip length). Pair it with ``fit_weights(video=True)``.
    """

    iterations: int = 40
    lr: float = 5e-4
    lr_halving_steps: int = 100
    seed: int = 0
    weights: LossWeights = field(default_factory=fit_weights)
    content_loss: str = "latent"
    preview_every: int = 10
    train_decoder: str = "vae"  # recorded only: which decoder the caller passed
    style_statistics: str = "mean_std"
    video: bool = False
    frames_per_step: int = 4
    keep: str = "best"

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.lr_halving_steps < 1:
            raise ValueError(f"lr_halving_steps must be at least 1, got {self.lr_halving_steps}")
        if self.content_loss not in CONTENT_LOSSES:
            raise ValueError(f"content_loss must be one of {', '.join(CONTENT_LOSSES)}, got {self.content_loss!r}")
        if self.frames_per_step < 1:
            raise ValueError(f"frames_per_step must be at least 1, got {self.frames_per_step}")
        if self.preview_every < 1:
            raise ValueError(f"preview_every must be at least 1, got {self.preview_every}")
        if self.style_statistics not in STYLE_STATISTICS:
            raise ValueError(f"style_statistics must be one of {', '.join(STYLE_STATISTICS)}, got {self.style_statistics!r}")
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_CHOICES)}, got {self.keep!r}")

    def record(self) -> dict:
        return {**asdict(self), "weights": asdict(self.weights)}


@dataclass
class FitResult:
    """The kept model, which update it is from and why, and what happened on the way.

    ``history`` holds each step's training terms (each step its own random draw); ``evaluations[k]`` the fixed
    evaluation's terms of the weights after k updates, from the untrained k = 0 on (empty with ``keep='last'``).
    """

    style_mamba: StyleMamba
    history: list[dict[str, float]]
    evaluations: list[dict[str, float]]
    kept_step: int
    kept_reason: str
    stopped_early: bool
    seconds: float

    @property
    def kept_loss(self) -> float | None:
        """The kept weights' fixed-evaluation loss; None when they were not evaluated (``keep='last'``)."""
        return self.evaluations[self.kept_step]["total"] if self.evaluations else None

    def summary(self) -> str:
        """One line for the node's text and the shell: steps, time and which weights came back."""
        return f"{len(self.history)} steps in {self.seconds:.1f} s; kept the weights after update {self.kept_step}: {self.kept_reason}"


@dataclass
class ContentReference:
    """The decoded content the styled images are compared with, and its SigLIP embeddings when a term needs them."""

    images: torch.Tensor
    features: torch.Tensor | None


class StyleObjective:
    """The weighted loss of one fit; terms with weight 0 are never computed (their encoders never run).

    References are the *decoded content latents*, not the original photos: an untrained model
    then scores zero content loss and zero image change, so the losses only see what the fusion
    model changed, not the autoencoder's own reconstruction error.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder | None,
        style: StyleEmbedding,
        content_latents: torch.Tensor,
        reference: torch.Tensor,
        settings: FitSettings,
        vgg: torch.nn.Module | None = None,
        style_images: Sequence[torch.Tensor] = (),
    ):
        self.image_encoder, self.settings, self.vgg = image_encoder, settings, vgg
        self.weights = settings.weights
        if settings.content_loss == "vgg" and self.weights.content > 0 and vgg is None:
            raise ValueError("content_loss='vgg' needs VGG-19 weights: pass a VGG19Features model (or choose 'latent'/'siglip')")
        self.style_target = None
        if self.weights.style_statistics > 0:
            if vgg is None or not style_images:
                raise ValueError(
                    "the style-statistics loss needs style images and VGG-19 weights; give both, or set its weight to 0"
                )
            rgb = [siglip_rgb(batch, "style images").to(content_latents.device) for batch in style_images]
            self.style_target = style_statistics_target(vgg, rgb, settings.style_statistics)
        self.content_latents = content_latents
        self.direction = style.direction.to(content_latents.device)
        self.second_order = SecondOrderDirectionalLoss(self.weights.second_order)
        self.needs_features = any(getattr(self.weights, name) > 0 for name in ("directional", "patch", "second_order"))
        masked = self.weights.masked > 0 or self.weights.temporal_masked > 0
        needs_encoder = self.needs_features or masked or (settings.content_loss == "siglip" and self.weights.content > 0)
        if needs_encoder and image_encoder is None:
            raise ValueError("the directional, patch and SigLIP content losses need a SigLIP image encoder; none was given")
        self.reference = self.reference_of(reference)

    @torch.no_grad()
    def reference_of(self, images: torch.Tensor) -> ContentReference:
        """The decoded content ``images`` as a reference (a video fit's changes with its window)."""
        return ContentReference(images, self.image_encoder.encode(images) if self.needs_features else None)

    def __call__(
        self, latents: torch.Tensor, images: torch.Tensor, reference: ContentReference, generator: torch.Generator,
        video: tuple[torch.Tensor, torch.Tensor] | None = None, second_order: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The weighted terms; ``second_order=False`` leaves out the one term that depends on the previous call."""
        return weighted_loss(
            self.weights, self.image_encoder, images, reference.images, reference.features, self.direction,
            lambda: self.content_term(latents, images, reference.images), generator,
            self.second_order if second_order else None,
            lambda: style_statistics_loss(self.vgg, images, self.style_target, self.settings.style_statistics),
            video=video,
        )

    def content_term(self, latents: torch.Tensor, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        kind = self.settings.content_loss
        if kind == "latent":
            return latent_content_loss(latents, self.content_latents)
        if kind == "siglip":
            return siglip_content_loss(self.image_encoder, images, reference)
        return vgg_content_loss(self.vgg, images, reference)


@dataclass
class StyledBatch:
    """One forward pass of a fit: the styled latents, the decoded images the losses see, and (video) both clips."""

    latents: torch.Tensor
    images: torch.Tensor
    video: tuple[torch.Tensor, torch.Tensor] | None


def style_content(
    model: torch.nn.Module, content_latents: torch.Tensor, condition: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor], clip: VideoClip | None, window: slice | None,
) -> StyledBatch:
    """Run the model over all content latents (a clip: every frame, with the temporal layers) and decode
    the images (a clip: the ``window`` of frames)."""
    if clip is None:
        latents = model(content_latents, condition)
        return StyledBatch(latents, decode(latents), None)
    latents = model(content_latents, condition, temporal=TemporalContext(frames=clip.frames))
    return StyledBatch(latents, clip.decode(decode, as_video(latents), window), (as_video(latents), clip.latents))


class FixedEvaluation:
    """The loss the returned weights are chosen on: one draw of crops, masks and (video) frame window, reused every time.

    Each training step draws new crops, masks and window, so the training loss mostly ranks the draws, not the
    weights. Here the generator restarts from one saved state at every evaluation, and the content side of the
    window is decoded once. The second-order term is left out: it measures the change since the previous call.
    An image fit's training step already styled and decoded every content image with the weights to evaluate:
    passing that ``batch`` leaves only the loss terms to compute (the decode is most of a step's cost).
    """

    def __init__(
        self, objective: StyleObjective, content_latents: torch.Tensor, condition: torch.Tensor,
        decode: Callable[[torch.Tensor], torch.Tensor], clip: VideoClip | None, settings: FitSettings,
    ):
        self.objective, self.content_latents, self.condition, self.decode, self.clip = objective, content_latents, condition, decode, clip
        generator = torch.Generator().manual_seed(settings.seed)
        self.window = clip.window(settings.frames_per_step, generator) if clip is not None else None
        self.draw = generator.get_state()
        with torch.no_grad():
            self.reference = objective.reference if clip is None else objective.reference_of(
                clip.decode(decode, clip.latents, self.window).float()
            )

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, batch: StyledBatch | None = None) -> dict[str, float]:
        generator = torch.Generator()
        generator.set_state(self.draw)
        if batch is None or self.clip is not None:  # a video step decoded another window
            batch = style_content(model, self.content_latents, self.condition, self.decode, self.clip, self.window)
        video = tuple(part.detach() for part in batch.video) if batch.video is not None else None
        terms = self.objective(batch.latents.detach(), batch.images.detach(), self.reference, generator, video, second_order=False)
        return {name: value.item() for name, value in terms.items()}


class WeightKeeper:
    """Which weights a fit returns: the last update's, or the lowest on the fixed evaluation after an update.

    A video fit only keeps weights whose temporal layers its updates moved: with the zero-initialised head the
    first update cannot reach them, and weights from before they moved style a clip frame by frame.
    """

    def __init__(self, model: torch.nn.Module, settings: FitSettings):
        self.keep, self.video = settings.keep, settings.video
        self.start_temporal = {k: v.detach().clone() for k, v in model.temporal.state_dict().items()}
        self.state: dict[str, torch.Tensor] | None = None
        self.step, self.loss, self.first_moved = 0, math.inf, 0

    def temporal_moved(self, model: torch.nn.Module) -> bool:
        return any(not torch.equal(self.start_temporal[k], v) for k, v in model.temporal.state_dict().items())

    def offer(self, model: torch.nn.Module, step: int, loss: float | None) -> None:
        """The weights after update ``step`` and their fixed-evaluation loss (None with ``keep='last'``: offered once, at the end)."""
        if self.video and not self.first_moved and self.temporal_moved(model):
            self.first_moved = step
        eligible = not self.video or self.first_moved
        if self.state is None or (eligible and loss is not None and loss < self.loss):
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.step, self.loss = step, (loss if eligible and loss is not None else math.inf)

    def reason(self, total: int) -> str:
        if self.video and not self.first_moved:
            return (f"the weights after update {self.step} of {total}; no update moved the temporal layers (a zero-initialised "
                    "model needs 2 or more), so the clip is styled frame by frame: run more steps")
        if self.keep == "last":
            return f"the last update's weights (keep=last), {self.step} of {total}"
        moved = f" among the updates that had moved the temporal layers (from update {self.first_moved})" if self.video else ""
        return f"lowest loss on the fixed evaluation ({self.loss:.4g}) after update {self.step} of {total}{moved}"


def fit_style(
    style_mamba: StyleMamba,
    content: torch.Tensor,
    style: StyleEmbedding,
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    image_encoder: ImageEncoder | None,
    settings: FitSettings | None = None,
    callback: FitCallback | None = None,
    vgg: torch.nn.Module | None = None,
    device: torch.device | str = "cpu",
    style_images: Sequence[torch.Tensor] = (),
) -> FitResult:
    """Fit a copy of ``style_mamba`` to ``style`` on ``content`` (b, 3, H, W in [0, 1]; frames of one clip with ``settings.video``).

    ``style_images`` (batches (n, 1/3/4, h, w) in [0, 1], any size) feed the style-statistics term only;
    an image style's direction is already in ``style`` (``reference_styles.fit_target_style``).

    ``encode`` maps images to the latents the model will see (run once, without gradients);
    ``decode`` must be differentiable and return images in [0, 1]. The input model is not
    changed (ComfyUI may reuse it); the result holds the weights ``settings.keep`` names (``WeightKeeper``),
    also after an early stop. Same seed, inputs and device → same result.
    A video fit runs the model across all frames with the temporal mixers (``video_fit``); an image fit
    leaves them untouched, as images never reach them.
    """
    settings = settings or FitSettings()
    if content.dim() != 4 or content.shape[1] != 3:
        kind = "video frames must be (frames, 3, height, width)" if settings.video else "content images must be (batch, 3, height, width)"
        raise ValueError(f"{kind} in [0, 1], got {tuple(content.shape)}")
    start = time.perf_counter()
    model = copy.deepcopy(style_mamba.model).to(device).float().train().requires_grad_(True)
    model.temporal.requires_grad_(settings.video)
    generator = torch.Generator().manual_seed(settings.seed)
    condition = style.target.to(device)
    clip = None
    with torch.no_grad():
        if settings.video:
            clip = encode_clip(encode, content.to(device))
            check_clip_length(clip, content.shape[0], settings)
            content_latents = clip.flat
        else:
            content_latents = encode(content.to(device)).float()
        style_mamba.model.check_latent_channels(content_latents.shape[1])
        reference = decode(content_latents).float() if clip is None else clip.decode(decode, clip.latents, slice(0, 1)).float()
    objective = StyleObjective(image_encoder, style, content_latents, reference, settings, vgg, style_images)
    evaluate = FixedEvaluation(objective, content_latents, condition, decode, clip, settings) if settings.keep == "best" else None
    keeper = WeightKeeper(model, settings)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_halving_steps, gamma=0.5)

    history: list[dict[str, float]] = []
    evaluations: list[dict[str, float]] = []  # entry k: the weights after k updates
    stopped = False
    for step in range(settings.iterations):
        window = clip.window(settings.frames_per_step, generator) if clip is not None else None
        step_reference = objective.reference if clip is None else objective.reference_of(clip.decode(decode, clip.latents, window).float())
        batch = style_content(model, content_latents, condition, decode, clip, window)
        terms = objective(batch.latents, batch.images, step_reference, generator, batch.video)
        loss = terms["total"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fit diverged at step {step} (loss {loss.item()}); lower the learning rate")
        history.append({name: value.item() for name, value in terms.items()})
        if evaluate is not None:  # this step's weights, before its update
            evaluations.append(evaluate(model, batch))
            if step:
                keeper.offer(model, step, evaluations[-1]["total"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if callback is not None:
            preview = batch.images.detach() if (step + 1) % settings.preview_every == 0 or step + 1 == settings.iterations else None
            if callback(step + 1, loss.item(), preview):
                stopped = True
                break
    if evaluate is not None:
        evaluations.append(evaluate(model))
    keeper.offer(model, len(history), evaluations[-1]["total"] if evaluate is not None else None)

    model.load_state_dict(keeper.state)
    model.eval().requires_grad_(False)
    reason = keeper.reason(len(history))
    training = {
        "style": style.description,
        "text_encoder": style.encoder,
        "content_images": content.shape[0],
        "content_size": list(content.shape[-2:]),
        **({"latent_frames": clip.frames} if clip is not None else {}),
        "settings": settings.record(),
        "steps_run": len(history),
        "kept_step": keeper.step,
        "kept_reason": reason,
        "evaluation_losses": [entry["total"] for entry in evaluations],
        "previous": style_mamba.training or None,
    }
    fitted = StyleMamba(model=model, text_encoder=style_mamba.text_encoder, training=training, source="fit")
    return FitResult(fitted, history, evaluations, keeper.step, reason, stopped, time.perf_counter() - start)


def check_clip_length(clip: VideoClip, video_frames: int, settings: FitSettings) -> None:
    """A clip too short for the temporal terms is an error, not a silent image fit: a 1-frame video has no motion to learn."""
    needed = 3 if settings.weights.temporal_second_order > 0 else 2
    if clip.frames < needed:
        raise VideoInputError(
            f"a video fit needs at least {needed} latent frames{' (the temporal second-order term compares 3)' if needed == 3 else ''}; "
            f"the {video_frames} frame(s) given encode to {clip.frames}: give more frames of the clip, or fit them as images (video off)"
        )


def fit_model(
    style: StyleEmbedding,
    content: torch.Tensor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    image_encoder: ImageEncoder | None,
    settings: FitSettings,
    text_encoder: str,
    latent_channels: int,
    max_resolution: int,
    multiple: int = 8,
    start: StyleMamba | None = None,
    callback: FitCallback | None = None,
    vgg: torch.nn.Module | None = None,
    device: torch.device | str = "cpu",
    record: dict | None = None,
    style_images: Sequence[torch.Tensor] = (),
) -> FitResult:
    """The fit as TrainStyleMamba and the ``fit`` / ``stylize`` commands set it up: one path, one record.

    ``content`` (b, 3, H, W) in [0, 1], a clip's frames with ``settings.video``, is fitted at ``fit_resolution(max_resolution, multiple)``;
    ``start`` is fine-tuned, else a new model is made by ``config_for_encoder`` for the style's
    SigLIP (``style.encoder`` must be loadable) and the VAE's ``latent_channels``. The fitted model
    reads styles from ``text_encoder`` (the id as the user named it) and its training record holds
    that id, whether the fit stopped early, the seconds it took and ``record``. ``style_images`` are
    scaled like the content for the style-statistics term, and their count is recorded.
    """
    if max_resolution < multiple:
        raise ValueError(f"max_resolution must be at least the VAE's downscale factor {multiple}, got {max_resolution}")
    if start is None:
        start = new_style_mamba(config_for_encoder(style.encoder, latent_channels), text_encoder=text_encoder, seed=settings.seed)
    content = fit_resolution(content, max_resolution, multiple)
    style_images = [fit_resolution(batch, max_resolution, multiple=1) for batch in style_images]
    result = fit_style(start, content, style, encode, decode, image_encoder, settings, callback, vgg, device, style_images)
    result.style_mamba.text_encoder = text_encoder
    result.style_mamba.training.update(
        record or {}, text_encoder=text_encoder, stopped_early=result.stopped_early, seconds=round(result.seconds, 2),
        style_image_count=sum(batch.shape[0] for batch in style_images),
    )
    return result

