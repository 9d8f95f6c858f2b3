"""SigLIP text and image embeddings through transformers, loaded from a local folder or a hub id.

Both towers share one embedding space, so a style can come from words or from a picture, and
the directional losses compare image changes with text changes in that space.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from ..errors import PackError
from .images import resize
from .pretrained import pretrained_source, quiet_loading
from .tower_identity import is_clip_vision

#: Files a SigLIP folder needs; quoted in the error when a model cannot be found.
REQUIRED_FILES = "config.json, model.safetensors (or pytorch_model.bin), tokenizer_config.json, spiece.model / tokenizer.json"

#: Prompt templates averaged into one text embedding, as CLIPstyler does to steady the direction.
STYLE_TEMPLATES = (
    "a photo of {}.",
    "a rendering of {}.",
    "a painting of {}.",
    "an artwork in the style of {}.",
    "a picture of {}.",
    "{}",
)


class EncoderNotFoundError(PackError, FileNotFoundError):
    """The SigLIP weights are neither in a local folder nor downloadable."""


def _folder_name(name: str) -> str:
    """The folder a SigLIP goes in under ComfyUI/models/siglip/: a path's or hub id's last part."""
    return name.replace("\\", "/").rstrip("/").split("/")[-1]


def check_encoder_source(name: str) -> bool:
    """A SigLIP folder that exists, or a hub id that is cached or downloadable now; returns ``local_files_only``."""
    files = f"{REQUIRED_FILES}; in ComfyUI the folder goes in ComfyUI/models/siglip/{_folder_name(name)}/"
    return pretrained_source(name, "SigLIP encoder", files, EncoderNotFoundError)


@contextlib.contextmanager
def _loading(name: str) -> Iterator[bool]:
    """Check where ``name`` comes from (yields ``local_files_only``), quiet transformers while it loads, and turn
    its not-found errors into one that says where the files go."""
    folder = _folder_name(name)
    local_files_only = check_encoder_source(name)
    try:
        with quiet_loading("transformers"):
            yield local_files_only
    except (OSError, ValueError) as error:
        raise EncoderNotFoundError(
            f"SigLIP encoder {name!r} could not be loaded ({type(error).__name__}: {error}). "
            f"Put its files ({REQUIRED_FILES}) in a folder such as ComfyUI/models/siglip/{folder}/ "
            f"(or pass that folder's path), or run once with network access so transformers can download {name!r}."
        ) from error


def text_embedding_width(config: object) -> int:
    """Width of SigLIP's pooled text embedding: the head's projection size (hidden size in older configs)."""
    text_config = getattr(config, "text_config", None) or config
    return getattr(text_config, "projection_size", None) or text_config.hidden_size


def embedding_width(name_or_path: str) -> int:
    """The style width a SigLIP gives, read from its config alone: no weights are loaded or downloaded."""
    from transformers import AutoConfig

    with _loading(name_or_path) as local_files_only:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_files_only)
    return text_embedding_width(config)


def encoder_identity(name_or_path: str, width: int) -> tuple[str, int]:
    """What makes two encoder ids the same SigLIP: the folder name or hub id's last part, and the width.

    A model records the id it was trained with (a hub id such as ``google/siglip-base-patch16-224``
    or a folder name from models/siglip), while an embedding records the path its encoder was
    loaded from; ComfyUI's models/siglip folders are named after the hub id's last part, so both
    name one model when those tails agree (case-insensitively). Two different folders with the same
    name and width are taken as the same model: name them apart.
    """
    return _folder_name(name_or_path).casefold(), width


def refuse_empty(texts: list[str]) -> None:
    for text in texts:
        if not text or not text.strip():
            raise ValueError("style text is empty: describe the style, e.g. 'an oil painting by Van Gogh'")


class StyleTextEncoder:
    """A text tower that puts words in the space of the model's image tower: SigLIP's own text tower, or a ComfyUI
    CLIP paired with its CLIP_VISION (``text_towers.ClipPairTextEncoder``). ``name`` is the id styles record;
    ``encode`` returns unit-length embeddings (n, dim); the empty-text refusal and the template averaging are shared,
    a tower only implements ``embed``."""

    name: str

    def embed(self, texts: list[str], device: torch.device | str | None) -> torch.Tensor:
        """Unit-length embeddings (n, dim) of texts already checked to be non-empty."""
        raise NotImplementedError

    def encode(self, texts: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        refuse_empty(texts)
        return self.embed(texts, device)

    def encode_style(self, text: str, device: torch.device | str | None = None, templates: tuple[str, ...] = STYLE_TEMPLATES) -> torch.Tensor:
        """Mean of the template embeddings of one style text, renormalised: (1, dim)."""
        refuse_empty([text])  # before the templates wrap it in words of their own
        prompts = [template.format(text.strip()) for template in templates] if templates else [text]
        return F.normalize(self.encode(prompts, device).mean(dim=0, keepdim=True), dim=-1)


@dataclass
class TextEncoder(StyleTextEncoder):
    """SigLIP text tower + tokenizer; ``encode`` returns unit-length embeddings (n, dim)."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    max_length: int

    @property
    def embed_dim(self) -> int:
        return text_embedding_width(self.model.config)

    @classmethod
    def from_pretrained(cls, name_or_path: str, local_files_only: bool = False) -> "TextEncoder":
        from transformers import AutoTokenizer, SiglipTextModel

        with _loading(name_or_path) as on_disk:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only or on_disk)
            model = SiglipTextModel.from_pretrained(name_or_path, local_files_only=local_files_only or on_disk)
        model.eval().requires_grad_(False)
        return cls(name_or_path, model, tokenizer, model.config.max_position_embeddings)

    def embed(self, texts: list[str], device: torch.device | str | None) -> torch.Tensor:
        """Embed each text; SigLIP was trained with max-length padding, so pad the same way."""
        device = device or next(self.model.parameters()).device
        tokens = self.tokenizer(
            list(texts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        model = self.model.to(device)
        features = model(input_ids=tokens["input_ids"].to(device)).pooler_output
        return F.normalize(features.float(), dim=-1)


@dataclass
class ImageEncoder:
    """SigLIP vision tower with a differentiable preprocess, so losses can backpropagate into images."""

    name: str
    model: torch.nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_pretrained(cls, name_or_path: str, local_files_only: bool = False) -> "ImageEncoder":
        from transformers import SiglipVisionModel

        with _loading(name_or_path) as on_disk:
            model = SiglipVisionModel.from_pretrained(name_or_path, local_files_only=local_files_only or on_disk)
        model.eval().requires_grad_(False)
        mean, std = image_normalisation(name_or_path, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        return cls(name_or_path, model, model.config.image_size, mean, std)

    def preprocess(self, images: torch.Tensor, size: int = 0) -> torch.Tensor:
        """(b, 3, H, W) in [0, 1] → resized to ``size`` (0: the encoder's own), normalised; keeps the autograd graph."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (batch, 3, height, width) in [0, 1], got {tuple(images.shape)}")
        x = self.fit_to_input(images, size or self.image_size)
        mean = x.new_tensor(self.mean)[:, None, None]
        std = x.new_tensor(self.std)[:, None, None]
        return (x - mean) / std

    def fit_to_input(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """The images at ``size`` × ``size`` as SigLIP's processor makes them: squashed, not cropped."""
        return resize(images, (size, size))

    def encode(self, images: torch.Tensor, size: int = 0) -> torch.Tensor:
        """Unit-length image embeddings (b, dim), differentiable with respect to ``images``.

        ``size`` other than the encoder's input size (0) encodes at that resolution with interpolated position
        embeddings: the cost of a ViT grows with its token count, so small crops can be encoded for less.
        """
        model = self.model.to(images.device)
        pixels = self.preprocess(images, size).to(next(model.parameters()).dtype)
        other_size = bool(size) and size != self.image_size
        output = model(pixel_values=pixels, interpolate_pos_encoding=True) if other_size else model(pixel_values=pixels)
        return F.normalize(output.pooler_output.float(), dim=-1)


def image_normalisation(
    name_or_path: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model family's pixel mean and std (SigLIP's 0.5, CLIP's ImageNet-like values), unless a local
    preprocessor_config.json says otherwise."""
    config_file = Path(name_or_path) / "preprocessor_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        return tuple(config.get("image_mean", mean)), tuple(config.get("image_std", std))
    return mean, std


@functools.lru_cache(maxsize=2)
def load_text_encoder(name_or_path: str) -> TextEncoder:
    """Cached: re-encoding a prompt in a graph must not reload SigLIP from disk."""
    return TextEncoder.from_pretrained(name_or_path)


@functools.lru_cache(maxsize=1)
def load_image_encoder(name_or_path: str) -> ImageEncoder:
    return ImageEncoder.from_pretrained(name_or_path)
