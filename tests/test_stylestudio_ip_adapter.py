"""IP-Adapter files: both on-disk formats with the real key layouts, projection, model fit, and bad files."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from comfyui_stylemamba.stylestudio.adapter_files import IPAdapterError
from comfyui_stylemamba.stylestudio.ip_adapter import load_ip_adapter, project_image_features, weights_per_layer
from comfyui_stylemamba.stylestudio.layers import SD15_BLOCKS

CONTEXT = 24
# A tiny SD1.5-shaped layout: 16 single-transformer blocks, three channel widths.
MODEL_LAYERS = {(name, block_id, 0): ({1: 8, 2: 8, 4: 16, 5: 16}.get(block_id, 32) if name == "input" else 32, CONTEXT)
                for name, block_id in SD15_BLOCKS}
DIFFUSERS_ORDER = [l for part in ("input", "output", "middle") for l in MODEL_LAYERS if l[0] == part]


def ip_layers(g, skip_down=False):
    out = {}
    for i, layer in enumerate(DIFFUSERS_ORDER):
        if skip_down and layer[0] != "output":
            continue
        inner = MODEL_LAYERS[layer][0]
        out[f"{2 * i + 1}.to_k_ip.weight"] = torch.randn(inner, CONTEXT, generator=g)
        out[f"{2 * i + 1}.to_v_ip.weight"] = torch.randn(inner, CONTEXT, generator=g)
    return out


def standard_proj(g, embed=20, tokens=4):
    return {"proj.weight": torch.randn(tokens * CONTEXT, embed, generator=g), "proj.bias": torch.randn(tokens * CONTEXT, generator=g),
            "norm.weight": torch.rand(CONTEXT, generator=g) + 0.5, "norm.bias": torch.randn(CONTEXT, generator=g)}


def resampler_proj(g, embed=20, queries=6, depth=2, inner=64):
    sd = {"latents": torch.randn(1, queries, CONTEXT, generator=g), "proj_in.weight": torch.randn(CONTEXT, embed, generator=g) * 0.2,
          "proj_in.bias": torch.zeros(CONTEXT), "proj_out.weight": torch.randn(CONTEXT, CONTEXT, generator=g) * 0.2,
          "proj_out.bias": torch.zeros(CONTEXT), "norm_out.weight": torch.ones(CONTEXT), "norm_out.bias": torch.zeros(CONTEXT)}
    for i in range(depth):
        p = f"layers.{i}."
        sd |= {p + "0.norm1.weight": torch.ones(CONTEXT), p + "0.norm1.bias": torch.zeros(CONTEXT),
               p + "0.norm2.weight": torch.ones(CONTEXT), p + "0.norm2.bias": torch.zeros(CONTEXT),
               p + "0.to_q.weight": torch.randn(inner, CONTEXT, generator=g) * 0.2,
               p + "0.to_kv.weight": torch.randn(2 * inner, CONTEXT, generator=g) * 0.2,
               p + "0.to_out.weight": torch.randn(CONTEXT, inner, generator=g) * 0.2,
               p + "1.0.weight": torch.ones(CONTEXT), p + "1.0.bias": torch.zeros(CONTEXT),
               p + "1.1.weight": torch.randn(4 * CONTEXT, CONTEXT, generator=g) * 0.2,
               p + "1.3.weight": torch.randn(CONTEXT, 4 * CONTEXT, generator=g) * 0.2}
    return sd


def save_flat(path, nested):
    save_file({f"{group}.{key}": value.contiguous() for group, values in nested.items() for key, value in values.items()}, str(path))


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


def test_safetensors_flat_and_bin_nested_give_the_same_weights(tmp_path, g):
    nested = {"image_proj": standard_proj(g), "ip_adapter": ip_layers(g)}
    save_flat(tmp_path / "a.safetensors", nested)
    torch.save(nested, tmp_path / "a.bin")
    flat, pickled = load_ip_adapter(str(tmp_path / "a.safetensors")), load_ip_adapter(str(tmp_path / "a.bin"))
    for weights in (flat, pickled):
        assert weights.kind == "standard" and not weights.uses_hidden_states
        assert sorted(weights.layers) == list(range(1, 32, 2)) and weights.context_dim == CONTEXT and weights.feature_dim == 20
    for index in flat.layers:
        assert all(torch.equal(a, b) for a, b in zip(flat.layers[index], pickled.layers[index]))
    # processor 2i+1 -> i-th layer in (input, output, middle) order: 31 is the middle block
    assigned = weights_per_layer(flat, MODEL_LAYERS)
    assert len(assigned) == 16 and assigned[("middle", 0, 0)][0] is flat.layers[31][0]
    assert assigned[("output", 3, 0)][0] is flat.layers[13][0]


def test_standard_projection_gives_normalised_tokens(tmp_path, g):
    torch.save({"image_proj": standard_proj(g), "ip_adapter": ip_layers(g)}, tmp_path / "s.bin")
    weights = load_ip_adapter(str(tmp_path / "s.bin"))
    tokens = project_image_features(weights, torch.randn(3, 20, generator=g))
    assert tokens.shape == (3, 4, CONTEXT)
    norm = weights.image_proj
    normalised = (tokens - norm["norm.bias"]) / norm["norm.weight"]
    torch.testing.assert_close(normalised.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)


def test_plus_resampler_projection_pools_patches_order_free_and_per_image(tmp_path, g):
    torch.save({"image_proj": resampler_proj(g), "ip_adapter": ip_layers(g)}, tmp_path / "plus.bin")
    weights = load_ip_adapter(str(tmp_path / "plus.bin"))
    assert weights.kind == "plus" and weights.uses_hidden_states and weights.feature_dim == 20
    hidden = torch.randn(2, 10, 20, generator=g)
    tokens = project_image_features(weights, hidden)
    assert tokens.shape == (2, 6, CONTEXT) and torch.isfinite(tokens).all()
    torch.testing.assert_close(project_image_features(weights, hidden[:, torch.randperm(10)]), tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(project_image_features(weights, hidden[1:]), tokens[1:], atol=1e-5, rtol=1e-5)
    assert (tokens[0] - tokens[1]).abs().max() > 1e-3


def test_csgo_layout_uses_the_style_projection_and_up_block_weights_only(tmp_path, g):
    csgo = {"content_image_proj": standard_proj(g), "style_image_proj": resampler_proj(g, queries=8),
            "ip_adapter": ip_layers(g), "controlnet_adapter_modules": {"x.weight": torch.zeros(1)}}
    save_flat(tmp_path / "csgo.safetensors", csgo)
    weights = load_ip_adapter(str(tmp_path / "csgo.safetensors"))
    assert weights.kind == "csgo" and weights.image_proj["latents"].shape == (1, 8, CONTEXT)
    assigned = weights_per_layer(weights, MODEL_LAYERS)
    assert sorted(assigned) == sorted(l for l in MODEL_LAYERS if l[0] == "output")
    torch.save({**csgo, "ip_adapter": ip_layers(g, skip_down=True)}, tmp_path / "csgo_up_only.bin")
    assert len(weights_per_layer(load_ip_adapter(str(tmp_path / "csgo_up_only.bin")), MODEL_LAYERS)) == 9


def test_adapter_model_and_clip_vision_mismatches_name_the_culprit(tmp_path, g):
    torch.save({"image_proj": standard_proj(g), "ip_adapter": ip_layers(g)}, tmp_path / "sd15.bin")
    weights = load_ip_adapter(str(tmp_path / "sd15.bin"))
    other_context = {layer: (inner, 2048) for layer, (inner, _) in MODEL_LAYERS.items()}
    with pytest.raises(IPAdapterError, match="24-d text context.*2048.*different model families"):
        weights_per_layer(weights, other_context)
    more_layers = {**MODEL_LAYERS, ("output", 0, 0): (32, CONTEXT), ("output", 1, 0): (32, CONTEXT)}
    with pytest.raises(IPAdapterError, match="16 cross-attention layers, the model has 18"):
        weights_per_layer(weights, more_layers)
    wider = {layer: (inner * 2, ctx) for layer, (inner, ctx) in MODEL_LAYERS.items()}
    with pytest.raises(IPAdapterError, match="gives 8 channels, the model's has 16"):
        weights_per_layer(weights, wider)
    with pytest.raises(IPAdapterError, match="CLIP vision model gives image embeddings of shape \\(1, 32\\).*expects 20-d"):
        project_image_features(weights, torch.randn(1, 32))
    with pytest.raises(IPAdapterError, match="CLIP vision"):
        project_image_features(weights, torch.randn(1, 5, 20))  # hidden states where embeds are needed


@pytest.mark.parametrize("case", ["missing", "garbage_safetensors", "garbage_bin", "not_a_dict", "pickled_object",
                                  "no_projection", "no_layers", "k_without_v", "k_v_shapes_differ", "faceid_lora", "mlp_projection",
                                  "context_mismatch"])
def test_bad_files_raise_a_clear_error(tmp_path, g, case):
    good = {"image_proj": standard_proj(g), "ip_adapter": ip_layers(g)}
    path, expected = tmp_path / f"{case}.bin", None
    if case == "missing":
        expected = "not found"
    elif case == "garbage_safetensors":
        path = tmp_path / "garbage.safetensors"
        path.write_bytes(b"\x00" * 64)
        expected = "Cannot read IP-Adapter file 'garbage.safetensors'"
    elif case == "garbage_bin":
        path.write_bytes(b"not a checkpoint at all")
        expected = "Cannot read"
    elif case == "not_a_dict":
        torch.save([torch.zeros(1)], path)
        expected = "holds a list, not a state dict"
    elif case == "pickled_object":
        path.write_bytes(pickle.dumps(torch.nn.Linear(2, 2), protocol=2))  # arbitrary objects are refused by weights_only
        expected = "Cannot read"
    elif case == "no_projection":
        torch.save({"ip_adapter": good["ip_adapter"]}, path)
        expected = "not an IP-Adapter.*ip_adapter"
    elif case == "no_layers":
        torch.save({"image_proj": good["image_proj"]}, path)
        expected = "no 'ip_adapter.N.to_k_ip.weight' layers"
    elif case == "k_without_v":
        torch.save({**good, "ip_adapter": {k: v for k, v in good["ip_adapter"].items() if k != "5.to_v_ip.weight"}}, path)
        expected = "layer 5 has to_k_ip but not both"
    elif case == "k_v_shapes_differ":
        torch.save({**good, "ip_adapter": {**good["ip_adapter"], "3.to_v_ip.weight": torch.zeros(8, 12)}}, path)
        expected = "layer 3 to_k_ip \\(8, 24\\) / to_v_ip \\(8, 12\\) are not matching matrices"
    elif case == "faceid_lora":
        torch.save({**good, "ip_adapter": {**good["ip_adapter"], "1.to_q_lora.down.weight": torch.zeros(4, 8)}}, path)
        expected = "unsupported per-layer weight 'ip_adapter.1.to_q_lora.down.weight'"
    elif case == "mlp_projection":
        torch.save({**good, "image_proj": {"proj.0.weight": torch.zeros(4, 4), "proj.0.bias": torch.zeros(4)}}, path)
        expected = "unsupported image projection"
    elif case == "context_mismatch":
        torch.save({**good, "image_proj": standard_proj(g) | {"norm.weight": torch.ones(12), "norm.bias": torch.zeros(12)}}, path)
        expected = "12-d tokens but to_k_ip layers take \\[24\\]"
    with pytest.raises(IPAdapterError, match=expected):
        load_ip_adapter(str(path))
