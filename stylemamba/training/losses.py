"""Training losses for StyleMamba fits and the CLIPstyler baseline, each a plain function of tensors.

Directional losses compare how an image moved in SigLIP space with how the text moved
(style text minus source text), so a fit changes style, not content. Weights default to
CLIPstyler's published settings (Kwon & Ye, CVPR 2022) where the StyleMamba paper gives none.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F

from ..images import resize
from ..model import latent_statistics
from .temporal import temporal_consistency_loss, temporal_second_order_loss

if TYPE_CHECKING:
    from ..encoders import ImageEncoder
    from .vgg import VGG19Features


#: InfoNCE temperature of CAST's style contrastive loss (Zhang et al., SIGGRAPH 2022; their code's default).
CAST_TEMPERATURE = 0.07

#: VGG-19 layers of the style-statistics loss: relu1_1 … relu4_1 (AdaIN's; Gatys et al. add relu5_1).
#: ``VGG19Features`` names each activation after the conv it follows.
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1")
STYLE_STATISTICS = ("mean_std", "gram")

#: The LossWeights fields of a video fit's temporal terms (0 for images).
TEMPORAL_TERMS = ("temporal_masked", "temporal_second_order", "temporal_consistency")

#: Video-fit weight of the two latent temporal terms: like the latent content term (150) each is a ratio of
#: squared latent changes, so a styled clip that strays from the content's motion by 10 % costs ≈ 1.5, and the
#: same weight acts alike on every VAE's latent scale.
VIDEO_TEMPORAL_WEIGHT = 150.0


@dataclass
class LossWeights:
    """Loss weights and augmentation settings; all settable from the fit code and CLIs.

    ``directional``, ``patch``, ``content``, ``tv``, ``threshold``, ``num_crops`` and ``crop_size``
    are CLIPstyler's published defaults. StyleMamba gives no numbers for its own two terms:
    ``masked`` equals ``directional`` because it is the same 1 − cos quantity on masked views,
    and ``second_order`` (the largest weight the dynamic schedule reaches) is 1000 because
    per-step changes of a unit-embedding difference are ~1e-2, so the term is ~1e-4 × 1000 ≈ 0.1
    against ~10² for the weighted directional term: it damps step-to-step jitter of the direction
    without pulling the fit away from the text. ``distortion`` is the perspective strength of the
    patch crops (torchvision's ``distortion_scale``, 0.5 in CLIPstyler). With the latent content
    term, ``content`` weighs changes measured in each latent channel's own std (``latent_content_loss``),
    so 150 acts alike on SD1.5, SDXL, SD3 and Flux latents. ``crop_resolution`` is the size the patch crops are
    encoded at: 0 is the encoder's input size (224 for SigLIP-base/16-224, what CLIPstyler's CLIP ViT-B/32 sees);
    a smaller one cuts the patch term's cost with the token count. A per-style fit runs the paper's set, without
    the patch term (``training.fit.fit_weights``); these weights are what it and the CLIPstyler baseline use when on.

    Two style terms are off by default: ``style_statistics`` weighs VGG-19 feature statistics of the
    style images (``style_statistics_loss``, needs style images and VGG weights) and ``contrastive``
    CAST's InfoNCE over a multi-style batch (``contrastive_style_loss``) at ``contrastive_temperature``
    0.07, CAST's released setting.

    Three video terms are 0 for images; ``video_weights`` switches them on for a video fit. ``temporal_masked``
    is the masked directional loss with one mask for all frames of the decoded window (StyleMamba-video's
    temporal masked directional loss), ``temporal_second_order`` and ``temporal_consistency`` the flow-free
    latent terms of ``training.temporal`` over the whole clip.
    """

    directional: float = 500.0
    patch: float = 9000.0
    content: float = 150.0
    tv: float = 2e-3
    masked: float = 500.0
    second_order: float = 1000.0
    threshold: float = 0.7
    num_crops: int = 64
    crop_size: int = 128
    crop_resolution: int = 0
    distortion: float = 0.5
    mask_ratio: float = 0.5
    mask_patch_size: int = 16
    style_statistics: float = 0.0
    contrastive: float = 0.0
    contrastive_temperature: float = CAST_TEMPERATURE
    temporal_masked: float = 0.0
    temporal_second_order: float = 0.0
    temporal_consistency: float = 0.0

    def __post_init__(self) -> None:
        if not self.contrastive_temperature > 0:
            raise ValueError(f"LossWeights.contrastive_temperature must be positive, got {self.contrastive_temperature}")
        for name in (
            "directional", "patch", "content", "tv", "masked", "second_order", "threshold", "distortion",
            "style_statistics", "contrastive", *TEMPORAL_TERMS,
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"LossWeights.{name} must be non-negative, got {getattr(self, name)}")
        for name in ("num_crops", "crop_size", "mask_patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LossWeights.{name} must be at least 1, got {getattr(self, name)}")
        if self.crop_resolution < 0:
            raise ValueError(f"LossWeights.crop_resolution must be 0 (the encoder's input size) or more, got {self.crop_resolution}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"LossWeights.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.distortion > 1.0:
            raise ValueError(f"LossWeights.distortion must be at most 1 (corners would cross), got {self.distortion}")


def video_weights(weights: LossWeights) -> LossWeights:
    """A video fit's weights: the per-frame masked term becomes its one-mask-for-all-frames form (same weight,
    same 1 − cos quantity; running both would double the SigLIP cost) and the latent temporal terms are on."""
    return dataclasses.replace(
        weights, masked=0.0, temporal_masked=weights.masked,
        temporal_second_order=VIDEO_TEMPORAL_WEIGHT, temporal_consistency=VIDEO_TEMPORAL_WEIGHT,
    )


def directional_loss(styled_features: torch.Tensor, content_features: torch.Tensor, text_direction: torch.Tensor) -> torch.Tensor:
    """L_dir = mean_b [1 − cos(f_styled − f_content, Δt)], Δt = E_txt(style) − E_txt(source).

    0 when the image moved exactly along the text direction, 1 when orthogonal (or not at all),
    2 when opposite. Features are (b, d); the direction is (1, d) or (b, d).
    """
    difference = styled_features - content_features
    direction = text_direction.to(difference.dtype).expand_as(difference)
    return (1 - F.cosine_similarity(difference, direction, dim=-1)).mean()


def random_patch_mask(
    batch: int, height: int, width: int, mask_ratio: float, patch_size: int, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(batch, 1, height, width) of 0/1: exactly round(ratio × patches) square patches per image are 0.

    Edge patches are cut at the border when the image is not a multiple of ``patch_size``.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if patch_size < 1:
        raise ValueError(f"mask patch_size must be at least 1, got {patch_size}")
    rows, cols = -(-height // patch_size), -(-width // patch_size)
    masked = round(mask_ratio * rows * cols)
    order = torch.rand(batch, rows * cols, generator=generator).argsort(dim=1)
    keep = (order >= masked).float().view(batch, 1, rows, cols)
    keep = keep.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return keep[:, :, :height, :width].to(device)


def masked_directional_loss(
    image_encoder: ImageEncoder,
    styled: torch.Tensor,
    content: torch.Tensor,
    text_direction: torch.Tensor,
    mask_ratio: float = 0.5,
    patch_size: int = 16,
    generator: torch.Generator | None = None,
    fill: float = 0.5,
    same_mask: bool = False,
) -> torch.Tensor:
    """L_mdir = L_dir(E(m ⊙ I_s + (1−m)·fill), E(m ⊙ I_c + (1−m)·fill), Δt) with one random patch mask m.

    Both images get the same mask, so the loss still measures only the style change, but from
    a random subset of regions: no single region can satisfy the text on its own. Images are
    (b, 3, H, W) in [0, 1]; the default fill 0.5 is SigLIP's normalisation mean, i.e. input 0.
    ``same_mask`` gives every image of the batch one mask: on consecutive video frames it is the temporal
    masked directional loss, a region hidden in all frames at once (as under an occlusion) must still follow Δt.
    """
    if styled.shape != content.shape:
        raise ValueError(f"styled {tuple(styled.shape)} and content {tuple(content.shape)} images differ in shape")
    batch, _, height, width = styled.shape
    masks = 1 if same_mask else batch
    keep = random_patch_mask(masks, height, width, mask_ratio, patch_size, generator, styled.device).to(styled.dtype)
    styled_features = image_encoder.encode(styled * keep + fill * (1 - keep))
    content_features = image_encoder.encode(content * keep + fill * (1 - keep))
    return directional_loss(styled_features, content_features, text_direction)


class SecondOrderDirectionalLoss:
    """L_2nd(t) = w(t) · mean_b ‖d_t − sg(d_{t−1})‖², with d = f_styled − f_content and sg = stop-gradient.

    It damps the iteration-to-iteration jitter of the image-feature difference, so the fit
    settles on one direction instead of oscillating around the text direction.

    Schedule of the dynamic weight: an exponential moving average of the first-order loss,
    ℓ̄_t = β ℓ̄_{t−1} + (1 − β) ℓ_t, gives its relative change r_t = |ℓ̄_t − ℓ̄_{t−1}| / ℓ̄_{t−1}, and

        w(t) = weight · tolerance / (tolerance + r_t)

    so w is small while the first-order loss still falls fast (r ≫ tolerance), half the weight
    at r = tolerance (1 % per step by default) and approaches ``weight`` as it settles (r → 0).
    The first call only records d and returns 0. The state assumes the same content batch on
    every call (a per-style fit); a batch of another shape resets it, and ``reset()`` does so
    explicitly (e.g. when the content images change).
    """

    def __init__(self, weight: float = 1000.0, tolerance: float = 0.01, beta: float = 0.9):
        if weight < 0 or tolerance <= 0 or not 0.0 <= beta < 1.0:
            raise ValueError(f"need weight ≥ 0, tolerance > 0 and 0 ≤ beta < 1, got {weight}, {tolerance}, {beta}")
        self.weight, self.tolerance, self.beta = weight, tolerance, beta
        self.reset()

    def reset(self) -> None:
        self.previous: torch.Tensor | None = None
        self.average: torch.Tensor | None = None
        self.current_weight = 0.0

    def dynamic_weight(self, first_order_loss: torch.Tensor) -> torch.Tensor:
        """Update the moving average with this step's first-order loss and return w(t)."""
        value = first_order_loss.detach().float().mean()
        if self.average is None:
            self.average = value
            return torch.zeros_like(value)
        average = self.beta * self.average + (1 - self.beta) * value
        change = (average - self.average).abs() / self.average.abs().clamp_min(1e-8)
        self.average = average
        return self.weight * self.tolerance / (self.tolerance + change)

    def __call__(self, difference: torch.Tensor, first_order_loss: torch.Tensor) -> torch.Tensor:
        if difference.dim() != 2:
            raise ValueError(f"difference must be (batch, dim) image features, got shape {tuple(difference.shape)}")
        if self.previous is not None and self.previous.shape != difference.shape:
            self.reset()
        weight = self.dynamic_weight(first_order_loss).to(difference.device)
        previous, self.previous = self.previous, difference.detach()
        self.current_weight = float(weight)
        if previous is None:
            return (difference * 0.0).sum()
        return weight * (difference - previous).pow(2).sum(dim=-1).mean()


def homography(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(b, 3, 3) matrices H with H·[s, 1] ∝ [t, 1] for four point pairs (b, 4, 2) each.

    Solves x = (h0 u + h1 v + h2) / (h6 u + h7 v + 1), y = (h3 u + h4 v + h5) / (h6 u + h7 v + 1)
    for (u, v) = source, (x, y) = target, in float64 for a well-conditioned 8×8 solve.
    """
    u, v = source.double().unbind(-1)
    x, y = target.double().unbind(-1)
    zeros, ones = torch.zeros_like(u), torch.ones_like(u)
    rows_x = torch.stack([u, v, ones, zeros, zeros, zeros, -u * x, -v * x], dim=-1)
    rows_y = torch.stack([zeros, zeros, zeros, u, v, ones, -u * y, -v * y], dim=-1)
    h = torch.linalg.solve(torch.cat([rows_x, rows_y], dim=1), torch.cat([x, y], dim=1))
    return torch.cat([h, torch.ones_like(h[:, :1])], dim=1).view(-1, 3, 3)


def perspective_grid(
    batch: int, height: int, width: int, distortion: float, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A ``grid_sample`` grid (batch, height, width, 2) for random perspective warps.

    As torchvision's RandomPerspective: each corner moves inwards by up to ``distortion`` × half
    the side, and the image is warped so its corners land there (the rest is filled with 0).
    Works in normalised [-1, 1] coordinates: the homography maps each output point to the input
    point it samples. ``distortion=0`` gives the identity grid, which samples every pixel exactly
    at its centre.
    """
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(batch, 4, 2)
    landed = corners - torch.rand(batch, 4, 2, generator=generator) * distortion * corners  # moved inwards
    matrix = homography(landed, corners)
    ys = (torch.arange(height, dtype=torch.float64) * 2 + 1) / height - 1
    xs = (torch.arange(width, dtype=torch.float64) * 2 + 1) / width - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).view(1, -1, 3)
    mapped = points @ matrix.transpose(1, 2)
    sampled = mapped[..., :2] / mapped[..., 2:]
    return sampled.view(batch, height, width, 2).float().to(device)


def random_perspective(images: torch.Tensor, distortion: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Warp each image with its own random perspective (bilinear, zero fill), differentiably."""
    batch, _, height, width = images.shape
    grid = perspective_grid(batch, height, width, distortion, generator, images.device).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crops(images: torch.Tensor, num_crops: int, crop_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(b, 3, H, W) → (b × num_crops, 3, c, c) square crops at random positions, c = min(crop_size, H, W).

    Crops of image i are rows i·num_crops … (i+1)·num_crops − 1.
    """
    batch, _, height, width = images.shape
    size = min(crop_size, height, width)
    tops = torch.randint(0, height - size + 1, (batch, num_crops), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (batch, num_crops), generator=generator).tolist()
    crops = [
        images[i, :, top : top + size, left : left + size]
        for i in range(batch)
        for top, left in zip(tops[i], lefts[i])
    ]
    return torch.stack(crops)


def patch_directional_loss(
    image_encoder: ImageEncoder,
    styled: torch.Tensor,
    content_features: torch.Tensor,
    text_direction: torch.Tensor,
    num_crops: int = 64,
    crop_size: int = 128,
    threshold: float = 0.7,
    generator: torch.Generator | None = None,
    distortion: float = 0.5,
    resolution: int = 0,
) -> torch.Tensor:
    """CLIPstyler's patch loss: L_patch = (1/N) Σ_n R(1 − cos(E(aug(crop_n(I_s))) − f_content, Δt), τ).

    Each of the N random crops is warped by a random perspective and encoded at ``resolution`` (0: the
    encoder's own input size); R(l, τ) = l if l ≥ τ else 0 rejects patches that already
    follow the text ("easy" patches), so the gradient goes to the regions still lagging.
    As in CLIPstyler's code, rejected patches count as 0 in the mean over all N crops: the loss
    anneals as more patches pass τ instead of concentrating the whole weight on the last few.
    ``content_features`` (b, d) are the whole content image's embeddings.
    """
    if num_crops < 1 or crop_size < 1:
        raise ValueError(f"need num_crops ≥ 1 and crop_size ≥ 1, got {num_crops} and {crop_size}")
    batch = styled.shape[0]
    if content_features.shape[0] not in (1, batch):
        raise ValueError(f"{content_features.shape[0]} content embeddings for {batch} styled images")
    crops = random_perspective(random_crops(styled, num_crops, crop_size, generator), distortion, generator)
    crop_features = image_encoder.encode(crops, resolution).view(batch, num_crops, -1)
    difference = crop_features - content_features.view(-1, 1, content_features.shape[-1])
    direction = text_direction.to(difference.dtype).view(-1, 1, difference.shape[-1]).expand_as(difference)
    per_patch = 1 - F.cosine_similarity(difference, direction, dim=-1)
    return torch.where(per_patch >= threshold, per_patch, torch.zeros_like(per_patch)).mean()


def latent_content_loss(styled_latent: torch.Tensor, content_latent: torch.Tensor) -> torch.Tensor:
    """L_c = mean ((z_s − z_c) / σ_c)²: the cheapest content term, no decoder or feature network needed.

    σ_c is the content latent's per-sample, per-channel std (``latent_statistics``, as the model
    standardises), so the loss counts changes in units of each channel's own spread: SD1.5's raw
    latents (std ≈ 5) and SD3's (std ≈ 1) give the same loss for the same relative change, and one
    ``content`` weight means the same on every VAE family.
    """
    content_latent = content_latent.to(styled_latent.dtype)
    _, std = latent_statistics(content_latent)
    return F.mse_loss(styled_latent / std, content_latent / std)


def siglip_content_loss(image_encoder: ImageEncoder, styled: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """L_c = mean (P(I_s) − P(I_c))² over SigLIP's final patch tokens P (b, tokens, width).

    Patch tokens keep the spatial layout the pooled embedding throws away, so they guard
    structure with the network the fit already loads. The content side is a fixed target.
    """
    model = image_encoder.model.to(styled.device)
    dtype = next(model.parameters()).dtype
    styled_tokens = model(pixel_values=image_encoder.preprocess(styled).to(dtype)).last_hidden_state.float()
    with torch.no_grad():
        content_tokens = model(pixel_values=image_encoder.preprocess(content).to(dtype)).last_hidden_state.float()
    return F.mse_loss(styled_tokens, content_tokens)


def vgg_content_loss(
    vgg: VGG19Features, styled: torch.Tensor, content: torch.Tensor, layers: Sequence[str] = ("conv4_2", "conv5_2")
) -> torch.Tensor:
    """L_c = Σ_l mean (φ_l(I_s) − φ_l(I_c))² over VGG-19 layers (CLIPstyler: conv4_2 + conv5_2).

    φ_l is the activation after layer l's ReLU, which is what CLIPstyler's code ends up storing
    (torchvision's in-place ReLU overwrites the conv output it kept). The content side is fixed.
    """
    styled_features = vgg(styled, layers)
    with torch.no_grad():
        content_features = vgg(content, layers)
    return sum(F.mse_loss(styled_features[name], content_features[name]) for name in layers)


def total_variation_loss(images: torch.Tensor) -> torch.Tensor:
    """CLIPstyler's image prior: L_tv = ‖∂_x I‖₂ + ‖∂_y I‖₂ + ‖∂_↘ I‖₂ + ‖∂_↗ I‖₂.

    Frobenius norms (not squared) of the horizontal, vertical and both diagonal neighbour
    differences over the whole batch; λ_tv = 2e-3 is tuned for this form.
    """
    horizontal = images[..., :, :-1] - images[..., :, 1:]
    vertical = images[..., :-1, :] - images[..., 1:, :]
    diagonal = images[..., :-1, :-1] - images[..., 1:, 1:]
    anti_diagonal = images[..., 1:, :-1] - images[..., :-1, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (horizontal, vertical, diagonal, anti_diagonal))


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(b, C, H, W) → (b, C, C) = F·Fᵀ / (C·H·W), F the (C, H·W) activations: Gatys et al.'s style statistic.

    Dividing by the element count makes it independent of the image size, so a small style image and a
    large styled one compare.
    """
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, height * width)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


def feature_statistics(features: torch.Tensor, kind: str) -> tuple[torch.Tensor, ...]:
    """``mean_std``: AdaIN's per-channel mean and std over the positions, (b, C) each; ``gram``: (b, C, C)."""
    if kind == "gram":
        return (gram_matrix(features),)
    if kind == "mean_std":
        mean = features.mean(dim=(2, 3))
        std = (features.var(dim=(2, 3), unbiased=False) + 1e-5).sqrt()  # AdaIN's epsilon keeps √ differentiable at 0
        return mean, std
    raise ValueError(f"style statistics must be one of {', '.join(STYLE_STATISTICS)}, got {kind!r}")


def vgg_sized(images: torch.Tensor, layers: Sequence[str]) -> torch.Tensor:
    """Upscale images too small to reach the deepest layer (``conv{block}_n`` lies behind block − 1 poolings)."""
    smallest = 2 ** (max(int(name[4]) for name in layers) - 1)
    height, width = images.shape[-2:]
    if min(height, width) >= smallest:
        return images
    scale = smallest / min(height, width)
    return resize(images, (math.ceil(height * scale), math.ceil(width * scale)))


def style_statistics_target(
    vgg: Callable[..., dict[str, torch.Tensor]], style_images: Sequence[torch.Tensor], kind: str,
    layers: Sequence[str] = STYLE_LAYERS,
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per layer, the mean over every style image (batches of any size) of its statistics, each (1, …); no gradients.

    Averaging statistics, not pixels, lets references of different sizes describe one style.
    """
    if not style_images:
        raise ValueError("the style-statistics loss needs at least one style image")
    per_image: dict[str, list[tuple[torch.Tensor, ...]]] = {name: [] for name in layers}
    with torch.no_grad():
        for batch in style_images:
            features = vgg(vgg_sized(batch, layers), tuple(layers))
            for name in layers:
                per_image[name] += [tuple(s[i : i + 1] for s in feature_statistics(features[name], kind)) for i in range(batch.shape[0])]
    return {name: tuple(torch.cat(column).mean(dim=0, keepdim=True) for column in zip(*stats)) for name, stats in per_image.items()}


def style_statistics_loss(
    vgg: Callable[..., dict[str, torch.Tensor]], styled: torch.Tensor, target: dict[str, tuple[torch.Tensor, ...]], kind: str,
) -> torch.Tensor:
    """L_stat = Σ_layers Σ_statistics mean (S(φ_l(I_s)) − S̄_l)², S̄ from ``style_statistics_target``.

    ``mean_std`` is AdaIN's style loss (squared, as its code uses MSE), ``gram`` Gatys et al.'s with equal
    layer weights. ``vgg(images, layers)`` returns {layer: (b, C, H, W)}, as ``VGG19Features`` does.
    """
    features = vgg(vgg_sized(styled, tuple(target)), tuple(target))
    return sum(
        F.mse_loss(statistic, reference.to(statistic).expand_as(statistic))
        for name, references in target.items()
        for statistic, reference in zip(feature_statistics(features[name], kind), references)
    )


def contrastive_style_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = CAST_TEMPERATURE) -> torch.Tensor:
    """CAST's style InfoNCE over a batch of styled images' SigLIP embeddings (b, d) with style labels (b,).

    For every anchor i and positive p (another image of i's style) the term is
    −log( e^{s_ip/τ} / (e^{s_ip/τ} + Σ_n e^{s_in/τ}) ), n over the images of other styles and s the cosine
    similarity; the loss is the mean over all (i, p) pairs. Same-style images are pulled together, other
    styles pushed apart. A batch without such a pair (one style, or no style twice) gives 0, still attached
    to the graph so a backward pass works. τ = 0.07 is CAST's (Zhang et al., SIGGRAPH 2022).
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"need (batch, dim) features and (batch,) labels, got {tuple(features.shape)} and {tuple(labels.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    unit = F.normalize(features.float(), dim=-1)
    logits = unit @ unit.T / temperature
    labels = labels.to(logits.device)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=logits.device)
    negative = ~same
    floor = torch.finfo(logits.dtype).min  # not −inf: an anchor without negatives must not make NaN gradients
    negatives = torch.logsumexp(logits.masked_fill(~negative, floor), dim=1, keepdim=True)
    pairs = positive & negative.any(dim=1, keepdim=True)
    if not pairs.any():
        return (features * 0).sum()
    return (torch.logaddexp(logits, negatives) - logits)[pairs].mean()


def weighted_loss(
    weights: LossWeights,
    image_encoder: ImageEncoder | None,
    images: torch.Tensor,
    references: torch.Tensor,
    reference_features: torch.Tensor | None,
    directions: torch.Tensor,
    content: Callable[[], torch.Tensor],
    generator: torch.Generator | None,
    second_order: SecondOrderDirectionalLoss | None = None,
    style_statistics: Callable[[], torch.Tensor] | None = None,
    style_labels: torch.Tensor | None = None,
    video: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted terms of one step and their ``total``; a term whose weight is 0 is never computed.

    The one assembly shared by the per-style fit, multi-style training and the CLIPstyler baseline.
    ``images`` are the styled images (b, 3, H, W) in [0, 1], ``references`` the unchanged content
    images and ``reference_features`` their SigLIP embeddings (1 or b, d); ``directions`` are the
    text directions (1 or b, d); ``content()`` returns the unweighted content term of the caller's
    choice (latent, SigLIP, VGG or pixel); the second-order term runs when ``second_order`` is given.
    ``style_statistics()`` returns the unweighted VGG style-statistics term and ``style_labels`` (b,) name
    each image's style for the contrastive term; each is required only when its weight is above 0.
    ``video`` (styled, content) latents (b, C, T, H, W) of a video fit, whose decoded window of consecutive
    frames ``images`` are, is what the temporal terms need.
    """
    terms: dict[str, torch.Tensor] = {}
    temporal = [name for name in TEMPORAL_TERMS if getattr(weights, name) > 0]
    if temporal and video is None:
        raise ValueError(f"the temporal losses ({', '.join(temporal)}) need a video fit; set their weights to 0 for images")
    use_second_order = second_order is not None and weights.second_order > 0
    if weights.style_statistics > 0 and style_statistics is None:
        raise ValueError("the style-statistics loss needs style images and VGG-19 weights; set its weight to 0 without them")
    if weights.contrastive > 0 and style_labels is None:
        raise ValueError("the contrastive style loss needs the style of every image in the batch (style_labels)")
    if weights.directional > 0 or use_second_order or weights.contrastive > 0:
        features = image_encoder.encode(images)
    if weights.directional > 0 or use_second_order:
        first_order = directional_loss(features, reference_features, directions)
        if weights.directional > 0:
            terms["directional"] = weights.directional * first_order
        if use_second_order:
            terms["second_order"] = second_order(features - reference_features, first_order)
    if weights.contrastive > 0:
        terms["contrastive"] = weights.contrastive * contrastive_style_loss(features, style_labels, weights.contrastive_temperature)
    if weights.style_statistics > 0:
        terms["style_statistics"] = weights.style_statistics * style_statistics()
    if weights.masked > 0:
        terms["masked"] = weights.masked * masked_directional_loss(
            image_encoder, images, references, directions, weights.mask_ratio, weights.mask_patch_size, generator
        )
    if weights.temporal_masked > 0:
        terms["temporal_masked"] = weights.temporal_masked * masked_directional_loss(
            image_encoder, images, references, directions, weights.mask_ratio, weights.mask_patch_size, generator,
            same_mask=True,
        )
    if weights.temporal_second_order > 0:
        terms["temporal_second_order"] = weights.temporal_second_order * temporal_second_order_loss(*video)
    if weights.temporal_consistency > 0:
        terms["temporal_consistency"] = weights.temporal_consistency * temporal_consistency_loss(*video)
    if weights.patch > 0:
        terms["patch"] = weights.patch * patch_directional_loss(
            image_encoder, images, reference_features, directions,
            weights.num_crops, weights.crop_size, weights.threshold, generator, weights.distortion, weights.crop_resolution,
        )
    if weights.content > 0:
        terms["content"] = weights.content * content()
    if weights.tv > 0:
        terms["tv"] = weights.tv * total_variation_loss(images)
    if not terms:
        raise ValueError("every loss weight is 0: nothing to optimise")
    terms["total"] = sum(terms.values())
    return terms

