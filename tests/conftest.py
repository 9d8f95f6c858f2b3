"""Tiny random-config SigLIP and VAE models saved in the real on-disk formats, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from builders import word_level_tokenizer

SHARED_ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
TINY_EMBED_DIM = 32
TINY_WORDS = "a an the photo of in style painting oil by van gogh watercolor sketch rendering picture artwork pencil".split()


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


def build_tiny_vae(folder: Path, latent_channels: int = 4) -> Path:
    """A 2-stage AutoencoderKL (2× down-sampling) saved as a diffusers folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=4, sample_size=32,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    return build_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tiny-siglip")


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    return build_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny-vae")


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"shared test assets not found at {SHARED_ASSETS} (only present in the project checkout)")
    return SHARED_ASSETS
