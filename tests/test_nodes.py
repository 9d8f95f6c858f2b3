"""Node classes without ComfyUI: declared sockets match the functions, and the StyleMamba graph runs."""

from __future__ import annotations

import inspect
import shutil
import sys
import types

import pytest
import torch

from comfyui_stylemamba import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_stylemamba.nodes import comfy_bridge
from comfyui_stylemamba.nodes.stylemamba_nodes import NEW_MODEL, LoadStyleMamba, StyleFuse, TextStyleEncode
from comfyui_stylemamba.stylemamba.checkpoint import StyleMamba, save_checkpoint

from builders import TINY_EMBED_DIM, tiny_config, trained_like


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_declared_inputs_match_the_function(name):
    node = NODE_CLASS_MAPPINGS[name]
    spec = node.INPUT_TYPES()
    required, optional = spec.get("required", {}), spec.get("optional", {})
    parameters = inspect.signature(getattr(node, node.FUNCTION)).parameters
    names = [p for p in parameters if p != "self"]
    declared = list(required) + list(optional)
    hidden = list(spec.get("hidden", {}))
    assert sorted(names) == sorted(declared + hidden), f"{name}: function takes {names}, node declares {declared + hidden}"
    for p in optional:
        assert parameters[p].default is not inspect.Parameter.empty, f"{name}: optional input {p} needs a default"
    for p in required:
        assert parameters[p].default is inspect.Parameter.empty or p in hidden, f"{name}: required input {p} has a default"


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_node_metadata_is_complete(name):
    node = NODE_CLASS_MAPPINGS[name]
    assert NODE_DISPLAY_NAME_MAPPINGS[name]
    assert node.CATEGORY.startswith("style_transfer/")
    assert len(node.DESCRIPTION) > 20
    assert isinstance(node.RETURN_TYPES, tuple)
    for key in ("RETURN_NAMES", "OUTPUT_TOOLTIPS"):
        if hasattr(node, key):
            assert len(getattr(node, key)) == len(node.RETURN_TYPES), f"{name}.{key}"


def test_fuse_graph_without_comfyui(tiny_siglip):
    (style_mamba,) = LoadStyleMamba().load(NEW_MODEL, str(tiny_siglip), latent_channels=4)
    style_mamba.model = trained_like(tiny_config(style_dim=32))
    (style,) = TextStyleEncode().encode(style_mamba, "an oil painting by van gogh")
    latent = {"samples": torch.randn(2, 4, 8, 8), "noise_mask": torch.ones(1, 1, 8, 8), "batch_index": [3, 4]}
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1
    with torch.inference_mode():  # ComfyUI runs nodes like this
        (out,) = StyleFuse().fuse(style_mamba, latent, style, 1.0, mask)
    assert out["noise_mask"] is latent["noise_mask"] and out["batch_index"] == [3, 4]
    assert out["samples"].shape == (2, 4, 8, 8)
    assert torch.equal(out["samples"][..., 5:], latent["samples"][..., 5:])
    assert (out["samples"][..., :3] - latent["samples"][..., :3]).abs().max() > 1e-4


def test_new_model_takes_its_style_width_from_the_chosen_encoder_and_changes_nothing(tiny_siglip):
    (style_mamba,) = LoadStyleMamba().load(NEW_MODEL, str(tiny_siglip), latent_channels=16)
    assert (style_mamba.config.latent_channels, style_mamba.config.style_dim) == (16, TINY_EMBED_DIM)  # not SigLIP-base's 768
    assert style_mamba.text_encoder == str(tiny_siglip)
    (style,) = TextStyleEncode().encode(style_mamba, "watercolor sketch")
    samples = torch.randn(1, 16, 6, 6)
    (out,) = StyleFuse().fuse(style_mamba, {"samples": samples}, style, 2.0)
    assert torch.equal(out["samples"], samples)


def test_style_fuse_refuses_a_style_from_another_encoder_until_the_loader_names_it(tiny_siglip, tmp_path, fake_folder_paths):
    other = tmp_path / "models" / "siglip" / "other-siglip"
    shutil.copytree(tiny_siglip, other)  # same width and weights, another model as far as ids go
    saved = StyleMamba(model=trained_like(tiny_config(style_dim=TINY_EMBED_DIM)), text_encoder=str(tiny_siglip))
    save_checkpoint(saved, fake_folder_paths[1] / "ink.safetensors")
    (style,) = TextStyleEncode().encode(LoadStyleMamba().load(NEW_MODEL, "other-siglip")[0], "oil painting")
    assert style.encoder == str(other)
    latent = {"samples": torch.randn(1, 4, 6, 6)}
    (trained,) = LoadStyleMamba().load("ink.safetensors", "from checkpoint")
    with pytest.raises(ValueError, match=f"encoded with SigLIP '{other}' .32-d. but this StyleMamba model reads styles from SigLIP '{tiny_siglip}'"):
        StyleFuse().fuse(trained, latent, style, 1.0)
    (overridden,) = LoadStyleMamba().load("ink.safetensors", "other-siglip")
    assert StyleFuse().fuse(overridden, latent, style, 1.0)[0]["samples"].shape == (1, 4, 6, 6)


def test_empty_style_text_is_refused():
    with pytest.raises(ValueError, match="style text is empty"):
        TextStyleEncode().encode(StyleMamba(model=trained_like(tiny_config())), " \n ")


@pytest.fixture
def fake_folder_paths(tmp_path, monkeypatch):
    """A stand-in for ComfyUI's folder_paths with a user path already set for stylemamba."""
    module = types.ModuleType("folder_paths")
    module.models_dir = str(tmp_path / "models")
    user_folder = tmp_path / "elsewhere" / "styles"
    user_folder.mkdir(parents=True)
    module.folder_names_and_paths = {"stylemamba": ([str(user_folder)], {".safetensors"})}

    def get_folder_paths(name):
        return list(module.folder_names_and_paths[name][0])

    def get_filename_list(name):
        paths, extensions = module.folder_names_and_paths[name]
        from pathlib import Path

        return sorted(p.name for folder in paths if Path(folder).is_dir() for p in Path(folder).iterdir() if p.suffix in extensions)

    def get_full_path_or_raise(name, filename):
        from pathlib import Path

        for folder in module.folder_names_and_paths[name][0]:
            if (Path(folder) / filename).is_file():
                return str(Path(folder) / filename)
        raise FileNotFoundError(filename)

    module.get_folder_paths = get_folder_paths
    module.get_filename_list = get_filename_list
    module.get_full_path_or_raise = get_full_path_or_raise
    monkeypatch.setitem(sys.modules, "folder_paths", module)
    return module, user_folder


def test_model_folders_keep_user_paths(fake_folder_paths, tmp_path):
    module, user_folder = fake_folder_paths
    comfy_bridge.register_model_folders()
    comfy_bridge.register_model_folders()  # idempotent
    paths, extensions = module.folder_names_and_paths["stylemamba"]
    assert paths == [str(user_folder), str(tmp_path / "models" / "stylemamba")]
    assert extensions == {".safetensors"}
    assert module.folder_names_and_paths["siglip"] == ([str(tmp_path / "models" / "siglip")], {"folder"})
    assert module.folder_names_and_paths["ipadapter"] == ([str(tmp_path / "models" / "ipadapter")], {".safetensors", ".bin"})


def test_load_node_lists_and_loads_checkpoints(fake_folder_paths, tiny_siglip):
    _, user_folder = fake_folder_paths
    saved = StyleMamba(model=trained_like(tiny_config()), text_encoder=str(tiny_siglip))
    save_checkpoint(saved, user_folder / "ink.safetensors")
    choices = LoadStyleMamba.INPUT_TYPES()["required"]["checkpoint"][0]
    assert choices == [NEW_MODEL, "ink.safetensors"]
    (loaded,) = LoadStyleMamba().load("ink.safetensors", "from checkpoint")
    assert loaded.text_encoder == str(tiny_siglip)
    latent, style = torch.randn(1, 4, 6, 6), torch.randn(1, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(latent, style), saved.model(latent, style))


def test_new_checkpoint_path_counts_up_and_stays_inside(fake_folder_paths):
    _, user_folder = fake_folder_paths
    first = comfy_bridge.new_checkpoint_path("styles/ink")
    assert first == user_folder / "styles" / "ink_00001.safetensors"
    first.parent.mkdir(parents=True)
    first.write_bytes(b"x")
    assert comfy_bridge.new_checkpoint_path("styles/ink").name == "ink_00002.safetensors"
    with pytest.raises(ValueError, match="must stay inside"):
        comfy_bridge.new_checkpoint_path("../outside")


def test_encoder_resolution_prefers_local_folders(fake_folder_paths, tmp_path):
    module, _ = fake_folder_paths
    local = tmp_path / "models" / "siglip" / "siglip-base-patch16-224"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")
    assert comfy_bridge.resolve_encoder("google/siglip-base-patch16-224") == str(local)
    assert comfy_bridge.list_local_encoders() == ["siglip-base-patch16-224"]
    assert comfy_bridge.resolve_encoder("google/siglip-large-patch16-384") == "google/siglip-large-patch16-384"
