"""The one seam to ComfyUI: model folders, devices and model management, progress and interrupts.

Every ComfyUI import happens here, lazily, so the nodes import and unit-test without ComfyUI;
outside ComfyUI each helper falls back to plain CPU behaviour.
"""

from __future__ import annotations

import functools
import importlib
import os
import weakref
from pathlib import Path
from types import ModuleType
from collections.abc import Callable
from typing import Any, Literal

import torch

from ..stylestudio.attention import sdpa_attention

#: Model folders under ComfyUI/models that this pack adds (or extends), with the files each may hold
#: ("folder" = a diffusers-style directory). ``ipadapter`` is shared with other IP-Adapter packs;
#: ``vgg`` holds the user's torchvision VGG-19 state dict for TrainStyleMamba's style-statistics loss.
MODEL_FOLDERS = {
    "stylemamba": {".safetensors"}, "siglip": {"folder"}, "ipadapter": {".safetensors", ".bin"},
    "vgg": {".pth", ".pt", ".safetensors"},
}


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


def input_directory() -> Path | None:
    """ComfyUI's input folder (where LoadImage lists files), or None outside ComfyUI."""
    folder_paths = _optional("folder_paths")
    return None if folder_paths is None else Path(folder_paths.get_input_directory())


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
    return torch.device("cpu") if model_management is None else model_management.get_torch_device()


def offload_device() -> torch.device:
    model_management = _optional("comfy.model_management")
    return torch.device("cpu") if model_management is None else model_management.unet_offload_device()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 math where the GPU has it (the scan keeps its state in fp32); plain fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


#: Which of ComfyUI's placements a managed module gets (see ``load_model``): "model" is ComfyUI's diffusion-model
#: device in fp32 (StyleMamba); "text encoder" is ComfyUI's text-encoder device and dtype, which ComfyUI also gives
#: its CLIP vision (either SigLIP tower, used without gradients); "differentiable encoder" is a SigLIP tower that a
#: fit backpropagates through, on the compute device.
ModelKind = Literal["model", "text encoder", "differentiable encoder"]

#: id(owner) -> the ModelPatcher of the module it holds; an entry leaves with its owner (see ``load_model``).
_PATCHERS: dict[int, Any] = {}


class _Managed(torch.nn.Module):
    """The module ComfyUI's ModelPatcher manages: it sets ``.device`` on its model, which transformers models refuse."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module


@functools.cache
def _managed_class(name: str) -> type[_Managed]:
    """``_Managed`` named after the wrapped class, so ComfyUI's log says "Requested to load SiglipTextModel"."""
    return type(name, (_Managed,), {})


def load_model(owner: object, module: torch.nn.Module, kind: ModelKind = "model") -> torch.device:
    """Put ``module`` on its device through ComfyUI's model management and return that device.

    ComfyUI then counts its memory, keeps it loaded between prompts and unloads it when a diffusion
    model needs the room, as it does with its own CLIP and VAE. ComfyUI knows a model by its
    ``ModelPatcher``, so the patcher lives exactly as long as ``owner``, the object that holds the
    module (the cached SigLIP, the STYLE_MAMBA value): a patcher made per call would leave the last
    one behind as a "memory leak" in ComfyUI's list. Outside ComfyUI the module stays on the CPU.
    """
    model_management = _optional("comfy.model_management")
    if model_management is None:
        module.to("cpu")
        return torch.device("cpu")
    patcher = _PATCHERS.get(id(owner))
    if patcher is None or patcher.model.module is not module:
        patcher = _new_patcher(owner, module, kind, model_management)
    model_management.load_models_gpu([patcher], force_full_load=True)  # plain torch modules cannot run half-loaded
    return patcher.load_device


def _new_patcher(owner: object, module: torch.nn.Module, kind: ModelKind, model_management: ModuleType) -> Any:
    from comfy.model_patcher import ModelPatcher

    if kind == "text encoder":
        load, offload = model_management.text_encoder_device(), model_management.text_encoder_offload_device()
    else:
        load, offload = model_management.get_torch_device(), model_management.unet_offload_device()
    module.to(device=offload, dtype=_weight_dtype(kind, load, model_management))
    patcher = ModelPatcher(_managed_class(type(module).__name__)(module), load_device=load, offload_device=offload)
    if id(owner) not in _PATCHERS:
        weakref.finalize(owner, _PATCHERS.pop, id(owner), None)
    _PATCHERS[id(owner)] = patcher
    return patcher


def attach_model(model: Any, module: torch.nn.Module, key: str) -> None:
    """Have ComfyUI load ``module`` together with the MODEL ``model`` (a ModelPatcher, e.g. the node's patched clone).

    The module goes to the MODEL's offload device in the dtype the MODEL computes in, inside a ModelPatcher with the
    MODEL's load/offload devices, added to the MODEL's additional models under ``key`` (beside any attached there
    before: two of our nodes in a row keep both): ComfyUI's sampler (``sampler_helpers.prepare_sampling``) passes a
    MODEL's additional models to ``load_models_gpu`` with it, so they are loaded, counted, offloaded and (low VRAM)
    partly loaded like its own weights; clones of the MODEL clone the patcher. Outside ComfyUI nothing happens: the
    module stays where it is, on the CPU.
    """
    if _optional("comfy.model_management") is None:
        return
    from comfy.model_patcher import ModelPatcher

    dtype = model.model.manual_cast_dtype or model.model_dtype()
    module.to(device=model.offload_device, dtype=dtype)
    patcher = ModelPatcher(_managed_class(type(module).__name__)(module), load_device=model.load_device,
                           offload_device=model.offload_device)
    model.set_additional_models(key, [*model.get_additional_models_with_key(key), patcher])


def _weight_dtype(kind: ModelKind, device: torch.device, model_management: ModuleType) -> torch.dtype:
    """SigLIP on a GPU in ComfyUI's text-encoder dtype (fp16 unless told otherwise); fp32 on the CPU and for the
    small StyleMamba model. A tower that gradients flow through gets bf16 rather than fp16, whose backward underflows
    without loss scaling, or fp32 where the GPU lacks bf16."""
    if kind == "model" or device.type == "cpu":
        return torch.float32
    if kind == "differentiable encoder":
        return autocast_dtype(device) or torch.float32
    chosen = model_management.text_encoder_dtype(device)
    return chosen if chosen in (torch.float16, torch.bfloat16, torch.float32) else torch.float16  # fp8 needs ComfyUI's ops


def optimized_attention() -> Callable[..., torch.Tensor]:
    """ComfyUI's attention function (the backend its launch options chose), which our attention patches call as its own
    layers do; PyTorch's fused attention in the same ``(q, k, v, heads)`` layout outside ComfyUI."""
    attention = _optional("comfy.ldm.modules.attention")
    return sdpa_attention if attention is None else attention.optimized_attention


class Progress:
    """ComfyUI's progress bar when running inside ComfyUI; silent otherwise."""

    def __init__(self, total: int):
        utils = _optional("comfy.utils")
        self._bar = utils.ProgressBar(total) if utils is not None else None

    def __call__(self, done: int, total: int, preview: object | None = None) -> None:
        if self._bar is not None:
            self._bar.update_absolute(done, total, preview)

    def update_unless_cancelled(self, done: int, total: int, preview: object | None = None) -> bool:
        """Update the bar and return False, or return True once the user pressed Cancel, never raising.

        ComfyUI's progress hook raises its interrupt (and clears the Cancel) when Cancel comes while
        it runs; here that Cancel is caught and set again, so a fit can stop cleanly, keep its best
        model, and the prompt still ends as cancelled before the next node.
        """
        if interrupt_requested():
            return True
        model_management = _optional("comfy.model_management")
        try:
            self(done, total, preview)
        except Exception as error:
            if model_management is None or not isinstance(error, model_management.InterruptProcessingException):
                raise
            model_management.interrupt_current_processing(True)
            return True
        return False


def throw_if_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    model_management = _optional("comfy.model_management")
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


def interrupt_requested() -> bool:
    """True once the user pressed Cancel, without raising: a fit stops cleanly and keeps its best model."""
    model_management = _optional("comfy.model_management")
    return model_management is not None and model_management.processing_interrupted()


def load_patcher(*patchers: object | None) -> None:
    """Put ComfyUI-managed models (e.g. ``vae.patcher``) fully on their device before calling them directly; models
    used together are loaded in one call, so loading one does not unload another."""
    model_management = _optional("comfy.model_management")
    given = [patcher for patcher in patchers if patcher is not None]
    if model_management is not None and given:
        model_management.load_models_gpu(given, force_full_load=True)


def free_memory() -> None:
    """Return cached GPU memory after a memory-hungry node (e.g. a training run)."""
    model_management = _optional("comfy.model_management")
    if model_management is not None:
        model_management.soft_empty_cache()

