"""Tiny random-config SigLIP and VAE models saved in the real on-disk formats, built once per session."""

from __future__ import annotations

from pathlib import Path

from comfyui_stylemamba.sys_path_guard import drop_package_folder

drop_package_folder()  # ``python -m pytest`` from the repository root put it first: see sys_path_guard

import pytest
import torch

from builders import TINY_EMBED_DIM, TINY_WORDS, build_tiny_siglip  # noqa: F401 (tests import them from here)
from builders import tiny_config, trained_like
from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba, save_checkpoint

SHARED_ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
REPO_ROOT = Path(__file__).resolve().parents[1]


class RootAsPlainDirectory:
    """Collect the repository root as a plain directory, not as the package it is.

    The root is the custom-node package (its ``__init__.py`` imports ``.nodes`` relatively). pytest would set it
    up as a test package by importing that ``__init__.py`` by path, which fails wherever the clone's folder is not a
    valid module name (``comfyui-stylemamba``, as ComfyUI Manager names it). A conftest's own hooks do not reach
    the collection of folders above it, so this is registered as a plugin of the session.
    """

    @staticmethod
    def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        return pytest.Dir.from_parent(parent, path=path) if path.resolve() == REPO_ROOT else None


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(RootAsPlainDirectory(), "stylemamba-root-as-plain-directory")


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


@pytest.fixture
def checkpoint(tmp_path, tiny_siglip) -> Path:
    """A trained-like StyleMamba checkpoint for the tiny SigLIP, as the commands load it."""
    style_mamba = StyleMamba(model=trained_like(tiny_config(style_dim=TINY_EMBED_DIM)), text_encoder=str(tiny_siglip))
    return save_checkpoint(style_mamba, tmp_path / "style.safetensors")
