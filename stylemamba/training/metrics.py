"""Evaluation metrics: CLIP score in SigLIP or OpenAI-CLIP space, and SSIM to the content image.

The VGG content loss used in the evaluation table is ``losses.vgg_content_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..encoders import ImageEncoder, TextEncoder, image_normalisation
from ..images import square
from ..pretrained import pretrained_source, quiet_loading

#: OpenAI CLIP's preprocessing statistics, used when a model folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: What a local CLIP folder holds; quoted when one cannot be found.
CLIP_FILES = "config.json, model.safetensors, tokenizer files"

#: ITU-R BT.601 luma weights: SSIM is computed on luminance, as in Wang et al.'s reference code.
LUMA = (0.299, 0.587, 0.114)


def cosine_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """CLIP score as a plain cosine (b,) between each image and the (1 or b) text embeddings.

    Reported without CLIPScore's ×100 / ×2.5 rescaling so SigLIP and CLIP numbers stay comparable.
    """
    return F.cosine_similarity(image_features.float(), text_features.float().expand_as(image_features), dim=-1)


@torch.no_grad()
def siglip_clip_score(image_encoder: ImageEncoder, text_encoder: TextEncoder, images: torch.Tensor, text: str) -> torch.Tensor:
    """Cosine between SigLIP image embeddings of (b, 3, H, W) images in [0, 1] and the style text's."""
    image_features = image_encoder.encode(images)
    return cosine_scores(image_features, text_encoder.encode_style(text, device=image_features.device))


def check_clip_source(name_or_path: str) -> bool:
    """A CLIP folder that exists, or a hub id that is cached or downloadable now; returns ``local_files_only``."""
    return pretrained_source(name_or_path, "CLIP model", CLIP_FILES)


@dataclass
class OpenAIClip:
    """A transformers ``CLIPModel`` (e.g. openai/clip-vit-base-patch32) for the CLIP-score column."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "OpenAIClip":
        from transformers import AutoTokenizer, CLIPModel

        local_files_only = check_clip_source(name_or_path)
        try:
            with quiet_loading("transformers"):
                model = CLIPModel.from_pretrained(name_or_path, local_files_only=local_files_only)
                tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"CLIP model {name_or_path!r} could not be loaded ({type(error).__name__}: {error}); pass a local "
                f"transformers CLIP folder ({CLIP_FILES}) or a hub id with network access"
            ) from error
        mean, std = image_normalisation(name_or_path, CLIP_MEAN, CLIP_STD)
        return cls(name_or_path, model.eval().requires_grad_(False), tokenizer, model.config.vision_config.image_size, mean, std)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's own preprocessing: resize the short side to the input size, centre-crop, normalise."""
        x = square(images, self.image_size)
        return (x - x.new_tensor(self.mean).view(1, 3, 1, 1)) / x.new_tensor(self.std).view(1, 3, 1, 1)

    @torch.no_grad()
    def score(self, images: torch.Tensor, text: str) -> torch.Tensor:
        """Cosine (b,) between each image and ``text`` in CLIP space."""
        model = self.model.to(images.device)
        tokens = self.tokenizer([text], padding=True, truncation=True, return_tensors="pt").to(images.device)
        text_features = model.get_text_features(**tokens)
        image_features = model.get_image_features(pixel_values=self.preprocess(images))
        return cosine_scores(_as_tensor(image_features), _as_tensor(text_features))


def _as_tensor(features: object) -> torch.Tensor:
    """Newer transformers return a model output from get_*_features; older ones the tensor itself."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D gaussian of ``size`` taps."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(coords**2) / (2 * sigma**2))
    return weights / weights.sum()


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(b, 3, H, W) RGB → (b, 1, H, W) BT.601 luma; single-channel input passes through."""
    if images.shape[1] == 1:
        return images
    return (images * images.new_tensor(LUMA).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def ssim(
    images: torch.Tensor, references: torch.Tensor, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """Mean SSIM (b,) of images in [0, data_range] against references, on luminance.

    SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), C1 = (0.01 L)², C2 = (0.03 L)²,
    with local statistics under an 11-tap σ = 1.5 gaussian, averaged over the 'valid' window
    positions (no padding), as Wang et al. (2004). Luminance, because structure is what a style
    transfer should keep; colour is exactly what it is meant to change.
    """
    if images.shape != references.shape:
        raise ValueError(f"SSIM needs equal shapes, got {tuple(images.shape)} and {tuple(references.shape)}")
    if min(images.shape[-2:]) < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size}×{window_size} pixels, got {tuple(images.shape[-2:])}")
    x, y = luminance(images.double()), luminance(references.double())
    taps = gaussian_window(window_size, sigma).to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t, taps.view(1, 1, 1, -1))
        return F.conv2d(t, taps.view(1, 1, -1, 1))

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2, 3)).float()
