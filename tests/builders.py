"""Small models shared by the tests."""

from __future__ import annotations

import types
from pathlib import Path

import torch

from comfyui_stylemamba.stylemamba.config import StyleMambaConfig
from comfyui_stylemamba.stylemamba.model import StyleFusionModel

TINY_EMBED_DIM = 32
TINY_WORDS = "a an the photo of in style painting oil by van gogh watercolor sketch rendering picture artwork pencil".split()


def tiny_config(**overrides) -> StyleMambaConfig:
    values = dict(latent_channels=4, style_dim=8, width=16, depth=2, d_state=4, dt_rank=2, patch_size=2)
    values.update(overrides)
    return StyleMambaConfig(**values)


def trained_like(config: StyleMambaConfig, seed: int = 0) -> StyleFusionModel:
    """A model whose zero-initialised gates and head were given random values, as training would."""
    torch.manual_seed(seed)
    model = StyleFusionModel(config)
    with torch.no_grad():
        for block in model.blocks:
            block.modulation.weight.normal_(std=0.2)
            block.modulation.bias.normal_(std=0.2)
        for layer in (model.final_modulation, model.head):
            layer.weight.normal_(std=0.2)
            layer.bias.normal_(std=0.2)
    return model


def word_level_tokenizer(words: list[str], max_length: int = 16):
    """A fast tokenizer over a fixed word list (<pad> 0, <unk> 1, </s> 2), savable like a hub tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    tokenizer.model_max_length = max_length
    return tokenizer


def build_tiny_siglip(folder: Path) -> Path:
    """A 2-layer SigLIP with a word-level tokenizer, saved like a hub folder (config, weights, tokenizer)."""
    from transformers import SiglipConfig, SiglipModel

    tokenizer = word_level_tokenizer(TINY_WORDS)
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=TINY_EMBED_DIM, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, eos_token_id=2, bos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=TINY_EMBED_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
    )
    SiglipModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def pan_zoom_clip(picture: torch.Tensor, frames: int, height: int, width: int, zoom: float = 0.35) -> torch.Tensor:
    """A camera move over a still photo (3, H, W) in [0, 1] → (frames, height, width, 3), ComfyUI IMAGE layout.

    The window pans left to right while zooming in by ``zoom``: real parallax-free footage whose
    frame-to-frame change is known to be smooth, for flicker measurements and the video workflow.
    """
    grid = torch.nn.functional.affine_grid(pan_zoom_path(frames, zoom), (frames, 3, height, width), align_corners=False)
    source = picture[None].float().expand(frames, -1, -1, -1)
    return torch.nn.functional.grid_sample(source, grid, mode="bilinear", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)


def pan_zoom_path(frames: int, zoom: float = 0.35) -> torch.Tensor:
    """The camera of ``pan_zoom_clip``: per frame the affine map (frames, 2, 3) from the frame's normalised
    coordinates (-1..1, ``affine_grid``'s) to the photo's."""
    steps = torch.linspace(0, 1, frames)
    scale = 1 - zoom * steps  # fraction of the photo the window covers
    theta = torch.zeros(frames, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, 0, 2] = (1 - scale) * (2 * steps - 1)  # pan from the left edge to the right edge
    return theta


def pan_zoom_flow(frames: int, height: int, width: int, zoom: float = 0.35) -> torch.Tensor:
    """The exact optical flow of ``pan_zoom_clip`` at any resolution: (frames − 1, 2, height, width) in pixels (x, y),
    entry t−1 pointing from each pixel of frame t to where the same photo point sits in frame t−1.

    Normalised coordinates do not depend on resolution, so at an 8×-pooled latent's size this is the latent's flow.
    """
    theta = pan_zoom_path(frames, zoom)
    matrix, shift = theta[:, :, :2], theta[:, :, 2:]
    # frame t → photo → frame t−1: x' = M_{t−1}⁻¹ (M_t x + b_t − b_{t−1})
    inverse = torch.linalg.inv(matrix[:-1])
    relative = torch.cat([inverse @ matrix[1:], inverse @ (shift[1:] - shift[:-1])], dim=-1)
    target = torch.nn.functional.affine_grid(relative, (frames - 1, 1, height, width), align_corners=False)
    source = torch.nn.functional.affine_grid(torch.eye(2, 3).expand(frames - 1, -1, -1), (frames - 1, 1, height, width),
                                             align_corners=False)
    return ((target - source) * torch.tensor([width / 2, height / 2])).permute(0, 3, 1, 2)


class ResidualInPlaceLayer(torch.nn.Module):
    """A pre-norm transformer layer with ComfyUI's ``CLIPLayer`` attribute names and its in-place residual adds."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.layer_norm1, self.layer_norm2 = torch.nn.LayerNorm(hidden), torch.nn.LayerNorm(hidden)
        self.attention = torch.nn.MultiheadAttention(hidden, 2, batch_first=True)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, 2 * hidden), torch.nn.GELU(), torch.nn.Linear(2 * hidden, hidden))

    def self_attn(self, x: torch.Tensor, mask=None, optimized_attention=None) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0]

    def forward(self, x: torch.Tensor, mask=None, optimized_attention=None) -> torch.Tensor:
        x += self.self_attn(self.layer_norm1(x), mask, optimized_attention)
        x += self.mlp(self.layer_norm2(x))
        return x


class TinyVisionTower(torch.nn.Module):
    """A few-layer ViT laid out as ComfyUI's ``CLIPVisionModelProjection``: ``vision_model.encoder.layers``,
    ``vision_model.post_layernorm``, a ``visual_projection`` (CLIP) or none (SigLIP), and its output tuple
    (tokens, intermediate, image embeds, mm projection). CLIP's embeds are the projected class token; SigLIP's are
    all post-norm tokens, as ComfyUI returns them. The tier tests check the real one."""

    def __init__(self, hidden: int = 24, layers: int = 2, image_size: int = 32, patch: int = 8,
                 projection: int | None = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.siglip = projection is None
        self.vision_model = torch.nn.Module()
        self.vision_model.patch = torch.nn.Conv2d(3, hidden, patch, stride=patch)
        self.vision_model.position = torch.nn.Parameter(torch.randn((image_size // patch) ** 2 + (0 if self.siglip else 1), hidden) * 0.1)
        self.vision_model.class_embedding = None if self.siglip else torch.nn.Parameter(torch.randn(hidden) * 0.1)
        self.vision_model.encoder = torch.nn.Module()
        self.vision_model.encoder.layers = torch.nn.ModuleList(ResidualInPlaceLayer(hidden) for _ in range(layers))
        self.vision_model.post_layernorm = torch.nn.LayerNorm(hidden)
        self.visual_projection = (lambda x: x) if self.siglip else torch.nn.Linear(hidden, projection, bias=False)

    def forward(self, pixel_values: torch.Tensor, intermediate_output=None):
        vision = self.vision_model
        x = vision.patch(pixel_values).flatten(2).transpose(1, 2)
        if vision.class_embedding is not None:
            x = torch.cat([vision.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        x = x + vision.position
        for layer in vision.encoder.layers:
            x = layer(x, None, None)
        pooled = vision.post_layernorm(x) if self.siglip else vision.post_layernorm(x[:, 0])
        return x, None, self.visual_projection(pooled), None


class FakeClipVision:
    """What the pack reads of ``comfy.clip_vision.ClipVisionModel``: ``model``, its input size, mean, std, ``patcher``."""

    def __init__(self, model: TinyVisionTower, image_size: int = 32, mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711)) -> None:
        self.model, self.image_size, self.image_mean, self.image_std = model.eval(), image_size, list(mean), list(std)
        self.patcher = None


class TinyTextTower(torch.nn.Module):
    """A few-layer text transformer laid out as ComfyUI's ``CLIPTextModel``: ``text_model.encoder.layers``,
    ``text_model.final_layer_norm`` and a square ``text_projection``; ``pooled`` is the final-norm end token."""

    def __init__(self, hidden: int = 16, layers: int = 2, vocab: int = 97, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.text_model = torch.nn.Module()
        self.text_model.embeddings = torch.nn.Embedding(vocab, hidden)
        self.text_model.encoder = torch.nn.Module()
        self.text_model.encoder.layers = torch.nn.ModuleList(ResidualInPlaceLayer(hidden) for _ in range(layers))
        self.text_model.final_layer_norm = torch.nn.LayerNorm(hidden)
        self.text_projection = torch.nn.Linear(hidden, hidden, bias=False)
        self.num_layers = layers

    def pooled(self, token_ids: list[int]) -> torch.Tensor:
        x = self.text_model.embeddings(torch.tensor([token_ids]))
        for layer in self.text_model.encoder.layers:
            x = layer(x, None, None)
        return self.text_model.final_layer_norm(x)[:, -1]


class FakeSDClipModel(torch.nn.Module):
    """What the pack calls on ComfyUI's ``SDClipModel``: clip options and ``encode_token_weights`` → (tokens, pooled).
    By default it returns the unprojected pooled output, as SDXL's clip_l does; ``projected_pooled`` switches."""

    def __init__(self, transformer: TinyTextTower, projected_by_default: bool = False) -> None:
        super().__init__()
        self.transformer = transformer.eval()
        self.default_projected = self.return_projected_pooled = projected_by_default

    def set_clip_options(self, options: dict) -> None:
        self.return_projected_pooled = options.get("projected_pooled", self.return_projected_pooled)

    def reset_clip_options(self) -> None:
        self.return_projected_pooled = self.default_projected

    def encode_token_weights(self, token_weight_pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.transformer.pooled([token for token, _ in token_weight_pairs[0]])
        return torch.zeros(1, 1, pooled.shape[-1]), self.transformer.text_projection(pooled) if self.return_projected_pooled else pooled


class FakeTokenizer:
    """Word-level token ids (a stable hash) between start and end tokens, as ``tokenize_with_weights`` lays them out."""

    def __init__(self, vocab: int = 97) -> None:
        self.vocab, self.calls = vocab, []

    def ids(self, text: str) -> list[int]:
        import zlib

        return [1, *(3 + zlib.crc32(word.encode()) % (self.vocab - 3) for word in text.lower().split()), 2]

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs) -> list:
        self.calls.append(kwargs)
        return [[(token, 1.0) for token in self.ids(text)]]


class FakeClip:
    """What the pack reads of ``comfy.sd.CLIP``: ``cond_stage_model`` and ``tokenizer`` with one attribute per tower."""

    def __init__(self, **towers: FakeSDClipModel) -> None:
        self.cond_stage_model, self.tokenizer, self.patcher = torch.nn.Module(), types.SimpleNamespace(), None
        for name, model in towers.items():
            setattr(self.cond_stage_model, name, model)
            setattr(self.tokenizer, name, FakeTokenizer())
