"""The StyleStudioCrossAdaIN node's ComfyUI-free parts: its interface and the token/key preparation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from comfyui_stylemamba import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_stylemamba.nodes.stylestudio_nodes import StyleStudioCrossAdaIN
from comfyui_stylemamba.stylestudio.layers import existing_patch
from comfyui_stylemamba.stylestudio.ip_adapter import IPAdapterWeights, style_tokens
from comfyui_stylemamba.stylestudio.layers import PRESETS
from comfyui_stylemamba.stylestudio.patches import style_kv


def test_node_is_registered_with_sockets_widgets_and_tooltips():
    assert NODE_CLASS_MAPPINGS["StyleStudioCrossAdaIN"] is StyleStudioCrossAdaIN
    assert NODE_DISPLAY_NAME_MAPPINGS["StyleStudioCrossAdaIN"] == "StyleStudio Cross-Modal AdaIN"
    spec = StyleStudioCrossAdaIN.INPUT_TYPES()
    required, optional = spec["required"], spec["optional"]
    assert [required[n][0] for n in ("model", "clip_vision", "style_image")] == ["MODEL", "CLIP_VISION", "IMAGE"]
    assert optional["negative_style_image"][0] == "IMAGE"
    assert tuple(required["layers"][0]) == PRESETS and required["teacher"][0] == "BOOLEAN"
    assert required["strength"][1]["min"] == 0.0 and required["strength"][1]["max"] == 1.0
    assert all("tooltip" in s[1] for s in (*required.values(), *optional.values()))
    assert StyleStudioCrossAdaIN.RETURN_TYPES == ("MODEL",) and hasattr(StyleStudioCrossAdaIN, StyleStudioCrossAdaIN.FUNCTION)


def test_style_tokens_join_a_batch_of_reference_images():
    g = torch.Generator().manual_seed(0)
    proj = {"proj.weight": torch.randn(2 * 6, 5, generator=g), "proj.bias": torch.zeros(12),
            "norm.weight": torch.ones(6), "norm.bias": torch.zeros(6)}
    weights = IPAdapterWeights("w", "standard", proj, {1: (torch.randn(4, 6), torch.randn(4, 6))})
    embeds = torch.randn(3, 5, generator=g)
    tokens = style_tokens(weights, embeds)
    assert tokens.shape == (1, 6, 6)
    torch.testing.assert_close(tokens[0, 2:4], style_tokens(weights, embeds[1:2])[0])


def test_style_kv_projects_both_halves_with_the_layer_weights():
    k_w, v_w = torch.randn(8, 6), torch.randn(8, 6)
    positive, negative = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    kv = style_kv((k_w, v_w), positive, negative)
    torch.testing.assert_close(kv.k_pos, F.linear(positive, k_w))
    torch.testing.assert_close(kv.v_neg, F.linear(negative, v_w))
    assert kv.for_half(1, torch.zeros(1, dtype=torch.float16))[0].dtype == torch.float16


def test_existing_patches_are_found_by_exact_key_then_block_key():
    exact, block = object(), object()
    assert existing_patch({("output", 1, 0): exact, ("output", 1): block}, ("output", 1, 0)) is exact
    assert existing_patch({("output", 1): block}, ("output", 1, 3)) is block
    assert existing_patch({}, ("output", 1, 3)) is None


class _RecordingClipVision:
    """CLIP vision stand-in: features that depend on the image, and a record of the images it saw."""

    image_size = 32

    def __init__(self):
        self.seen = []

    def encode_image(self, image):
        self.seen.append(image)
        level = image.mean(dim=(1, 2, 3))
        return {"image_embeds": level[:, None] + torch.arange(5.0), "penultimate_hidden_states": level[:, None, None] + torch.ones(1, 4, 6)}


def test_plus_adapters_see_a_black_image_as_the_empty_image_and_the_others_zeroed_embeddings():
    positive_embeds, positive_hidden = torch.randn(2, 5), torch.randn(2, 4, 6)
    standard = IPAdapterWeights("ip-adapter.bin", "standard", {"proj.weight": torch.zeros(6, 5)}, {})
    plus = IPAdapterWeights("ip-adapter-plus.bin", "plus", {"latents": torch.zeros(1, 2, 6), "proj_in.weight": torch.zeros(6, 6)}, {})

    clip_vision = _RecordingClipVision()
    assert torch.equal(StyleStudioCrossAdaIN._empty_image_features(clip_vision, standard, positive_embeds), torch.zeros(2, 5))
    assert clip_vision.seen == []

    features = StyleStudioCrossAdaIN._empty_image_features(clip_vision, plus, positive_hidden)
    (black,) = clip_vision.seen
    assert black.shape == (1, 32, 32, 3) and torch.count_nonzero(black) == 0  # a ComfyUI IMAGE, all black
    assert torch.equal(features, torch.ones(1, 4, 6))  # the black image's penultimate hidden states
