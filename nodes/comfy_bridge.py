"""The one seam to ComfyUI: model folders, devices, progress and interrupts.

Every ComfyUI import happens here, lazily, so the nodes import and unit-test without ComfyUI;
outside ComfyUI each helper falls back to plain CPU behaviour.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch

#: Model folders under ComfyUI/models that this pack adds (or extends), with the files each may hold
#: ("folder" = a diffusers-style directory). ``ipadapter`` is shared with other IP-Adapter packs.
MODEL_FOLDERS = {"stylemamba": {".safetensors"}, "siglip": {"folder"}, "ipadapter": {".safetensors", ".bin"}}


def _optional(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ImportError:
        return None


def register_model_folders() -> None:
    """Add our folders under ComfyUI/models, keeping any paths from extra_model_paths.yaml or other packs."""
    folder_paths = _optional("folder_paths")
    if folder_paths is None:
        return
    for name, extensions in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        paths, known = folder_paths.folder_names_and_paths.get(name, ([], set()))
        if default not in paths:
            paths = [*paths, default]
        folder_paths.folder_names_and_paths[name] = (paths, set(known) | extensions)


def model_folder_paths(name: str) -> list[str]:
    folder_paths = _optional("folder_paths")
    if folder_paths is None:
        return []
    register_model_folders()
    return folder_paths.get_folder_paths(name)


def list_model_files(folder: str) -> list[str]:
    """Files of a model folder (ours or ComfyUI's, e.g. ``vae_approx``); empty outside ComfyUI."""
    folder_paths = _optional("folder_paths")
    if folder_paths is None:
        return []
    register_model_folders()
    return folder_paths.get_filename_list(folder)


def model_file_path(folder: str, name: str) -> str:
    """Full path of a listed model file; outside ComfyUI the name is taken as a path."""
    folder_paths = _optional("folder_paths")
    if folder_paths is None:
        return name
    register_model_folders()
    return folder_paths.get_full_path_or_raise(folder, name)


def new_checkpoint_path(filename_prefix: str) -> Path:
    """A not-yet-existing ``<prefix>_00001.safetensors`` in the first stylemamba folder."""
    folders = model_folder_paths("stylemamba")
    base = Path(folders[0]) if folders else Path.cwd()
    prefix = Path(filename_prefix)
    if prefix.is_absolute() or ".." in prefix.parts:
        raise ValueError(f"filename_prefix must stay inside the stylemamba folder, got {filename_prefix!r}")
    folder = base / prefix.parent
    index = 1
    while (folder / f"{prefix.name}_{index:05d}.safetensors").exists():
        index += 1
    return folder / f"{prefix.name}_{index:05d}.safetensors"


def list_local_encoders() -> list[str]:
    """Sub-folders of models/siglip that hold a transformers config."""
    names = set()
    for folder in model_folder_paths("siglip"):
        root = Path(folder)
        if root.is_dir():
            names.update(child.name for child in root.iterdir() if (child / "config.json").is_file())
    return sorted(names)


def resolve_encoder(name: str) -> str:
    """A local folder (by path, by its name under models/siglip, or by a hub id's last part) beats the hub."""
    if Path(name).is_dir():
        return name
    for folder in model_folder_paths("siglip"):
        for candidate in (Path(folder) / name, Path(folder) / name.rstrip("/").split("/")[-1]):
            if (candidate / "config.json").is_file():
                return str(candidate)
    return name


def compute_device() -> torch.device:
    model_management = _optional("comfy.model_management")
    if model_management is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model_management.get_torch_device()


def offload_device() -> torch.device:
    model_management = _optional("comfy.model_management")
    return torch.device("cpu") if model_management is None else model_management.unet_offload_device()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 math where the GPU has it (the scan keeps its state in fp32); plain fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


@contextlib.contextmanager
def on_compute_device(module: torch.nn.Module) -> Iterator[torch.device]:
    """Hold a module on the GPU only while it works, as ComfyUI does with its own models."""
    device = compute_device()
    module.to(device)
    try:
        yield device
    finally:
        module.to(offload_device())
        model_management = _optional("comfy.model_management")
        if model_management is not None:
            model_management.soft_empty_cache()


class Progress:
    """ComfyUI's progress bar when running inside ComfyUI; silent otherwise."""

    def __init__(self, total: int):
        utils = _optional("comfy.utils")
        self._bar = utils.ProgressBar(total) if utils is not None else None

    def __call__(self, done: int, total: int, preview: object | None = None) -> None:
        if self._bar is not None:
            self._bar.update_absolute(done, total, preview)


def throw_if_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    model_management = _optional("comfy.model_management")
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


def interrupt_requested() -> bool:
    """True once the user pressed Cancel, without raising: a fit stops cleanly and keeps its best model."""
    model_management = _optional("comfy.model_management")
    return model_management is not None and model_management.processing_interrupted()


def load_patcher(patcher: object | None) -> None:
    """Put a ComfyUI-managed model (e.g. ``vae.patcher``) fully on its device before calling it directly."""
    model_management = _optional("comfy.model_management")
    if model_management is not None and patcher is not None:
        model_management.load_models_gpu([patcher], force_full_load=True)


def free_memory() -> None:
    """Return cached GPU memory after a memory-hungry node (e.g. a training run)."""
    model_management = _optional("comfy.model_management")
    if model_management is not None:
        model_management.soft_empty_cache()
