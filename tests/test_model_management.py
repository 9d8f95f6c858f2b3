"""SigLIP and StyleMamba under ComfyUI's model management, through the bridge (the real thing: tests/comfyui)."""

from __future__ import annotations

import gc
import sys
import types

import pytest
import torch

from comfyui_stylemamba.nodes import comfy_bridge


class _Owner:
    """Holds a module, as the cached SigLIP or a STYLE_MAMBA value does."""

    def __init__(self, module: torch.nn.Module):
        self.model = module


@pytest.fixture
def fake_comfy(monkeypatch):
    """comfy.model_management / comfy.model_patcher reduced to the calls the bridge makes, with a GPU as load device."""
    loads = []

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    management = types.SimpleNamespace(
        get_torch_device=lambda: gpu, unet_offload_device=lambda: cpu,
        text_encoder_device=lambda: gpu, text_encoder_offload_device=lambda: cpu,
        text_encoder_dtype=lambda device: torch.float16,
        load_models_gpu=lambda models, force_full_load=False: loads.append((models, force_full_load)),
    )
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher = management, types.SimpleNamespace(ModelPatcher=ModelPatcher)
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", management)
    monkeypatch.setitem(sys.modules, "comfy.model_patcher", comfy.model_patcher)
    return loads


def test_outside_comfyui_modules_stay_on_the_cpu_in_fp32():
    owner = _Owner(torch.nn.Linear(3, 2))
    assert comfy_bridge.load_model(owner, owner.model, "text encoder") == torch.device("cpu")
    assert owner.model.weight.dtype == torch.float32 and owner.model.weight.device.type == "cpu"


def test_one_patcher_per_owner_loaded_fully_and_gone_with_its_owner(fake_comfy):
    owner = _Owner(torch.nn.Linear(3, 2))
    assert comfy_bridge.load_model(owner, owner.model) == torch.device("cuda", 0)
    comfy_bridge.load_model(owner, owner.model)
    (first, full), (second, _) = fake_comfy
    assert full and first[0] is second[0] and first[0].model.module is owner.model  # ComfyUI sees one model
    assert owner.model.weight.dtype == torch.float32  # StyleMamba keeps fp32 weights

    owner.model = torch.nn.Linear(3, 2)  # the owner now holds another module: it gets its own patcher
    comfy_bridge.load_model(owner, owner.model)
    assert fake_comfy[-1][0][0] is not first[0] and fake_comfy[-1][0][0].model.module is owner.model

    key = id(owner)
    del owner, first, second
    fake_comfy.clear()
    gc.collect()
    assert key not in comfy_bridge._PATCHERS


def test_siglip_takes_comfyuis_text_encoder_dtype_on_a_gpu_and_bf16_or_fp32_when_differentiated(fake_comfy, monkeypatch):
    text, image = _Owner(torch.nn.Linear(3, 2)), _Owner(torch.nn.Linear(3, 2))
    comfy_bridge.load_model(text, text.model, "text encoder")
    assert text.model.weight.dtype == torch.float16
    comfy_bridge.load_model(image, image.model, "differentiable encoder")
    assert image.model.weight.dtype == torch.float32  # this "GPU" has no bf16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    bf16 = _Owner(torch.nn.Linear(3, 2))
    comfy_bridge.load_model(bf16, bf16.model, "differentiable encoder")
    assert bf16.model.weight.dtype == torch.bfloat16


class _Model:
    """A MODEL's ModelPatcher reduced to what ``attach_model`` reads and calls."""

    def __init__(self, weight_dtype: torch.dtype, manual_cast_dtype: torch.dtype | None):
        self.model = types.SimpleNamespace(manual_cast_dtype=manual_cast_dtype)
        self.weight_dtype, self.additional = weight_dtype, {}
        self.load_device, self.offload_device = torch.device("cuda", 0), torch.device("cpu")

    def model_dtype(self) -> torch.dtype:
        return self.weight_dtype

    def set_additional_models(self, key: str, models: list) -> None:
        self.additional[key] = models

    def get_additional_models_with_key(self, key: str) -> list:
        return self.additional.get(key, [])


def test_attached_weights_join_the_models_additional_models_in_its_compute_dtype(fake_comfy):
    module, fp8_model, bf16_model = torch.nn.Linear(3, 2), _Model(torch.float8_e4m3fn, torch.bfloat16), _Model(torch.float16, None)
    comfy_bridge.attach_model(fp8_model, module, "ours")
    (patcher,) = fp8_model.additional["ours"]
    assert patcher.model.module is module and type(patcher.model).__name__ == "Linear"  # ComfyUI logs "Requested to load Linear"
    assert (patcher.load_device, patcher.offload_device) == (torch.device("cuda", 0), torch.device("cpu"))  # the MODEL's
    assert module.weight.dtype == torch.bfloat16 and module.weight.device.type == "cpu"  # fp8 weights compute in bf16
    comfy_bridge.attach_model(bf16_model, module, "ours")
    assert module.weight.dtype == torch.float16 and not fake_comfy  # attached, not loaded: sampling loads it with the MODEL
    second = torch.nn.Linear(3, 2)
    comfy_bridge.attach_model(fp8_model, second, "ours")  # a second node of ours on the same MODEL keeps the first's
    assert [p.model.module for p in fp8_model.additional["ours"]] == [module, second]


def test_outside_comfyui_attached_weights_stay_as_they_are():
    module, model = torch.nn.Linear(3, 2), _Model(torch.float16, None)
    comfy_bridge.attach_model(model, module, "ours")
    assert module.weight.dtype == torch.float32 and not model.additional
