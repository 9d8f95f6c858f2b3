"""StyleStudio beside other packs: IPAdapter_plus's collecting attn2 patches in either order, clones, device moves."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

from collecting_patch import CollectingPatch, ImagePromptCallback, apply_collecting_patch, comfy_lookup, ipadapter_keys
from comfyui_stylemamba.stylestudio.layers import existing_patch, patch_key
from comfyui_stylemamba.stylestudio.adain import cross_modal_adain
from comfyui_stylemamba.stylestudio.layers import select_layers
from comfyui_stylemamba.stylestudio.attention import sdpa_attention
from comfyui_stylemamba.stylestudio.hooks import SigmaWindow
from comfyui_stylemamba.stylestudio.patches import CrossAdaINPatch, StyleKV, TeacherAttn1Patch, TeacherWrapper
from test_stylestudio_patches import HEADS, INNER, SD15_LAYERS, SDXL_LAYERS, options, random_style, reference_attention

WINDOW = SigmaWindow(high=10.0, low=0.0)


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 9, INNER, generator=g), torch.randn(2, 5, INNER, generator=g), torch.randn(2, 5, INNER, generator=g)


def apply_stylestudio(attn2: dict, layers, selected, style: StyleKV) -> dict:
    """What StyleStudioCrossAdaIN.patch does to the attn2 dict: each selected layer gets a patch chained to the old one."""
    per_block = Counter(layer[:2] for layer in layers)
    patched = dict(attn2)
    for layer in selected:
        patch = CrossAdaINPatch(style, 0.8, WINDOW, existing_patch(attn2, layer), sdpa_attention)
        patched[patch_key(attn2, layer, per_block[layer[:2]])] = patch
    return patched


def apply_ipadapter(attn2: dict, layers, callback) -> dict:
    options_ = {"patches_replace": {"attn2": attn2}}
    for key in ipadapter_keys(layers):
        options_ = apply_collecting_patch(options_, key, callback, sdpa_attention, weight=0.7)
    return options_["patches_replace"]["attn2"]


@pytest.mark.parametrize("family, layers", [("SD1.5", SD15_LAYERS), ("SDXL", SDXL_LAYERS)])
def test_ipadapter_plus_before_or_after_stylestudio_both_take_effect_with_the_same_result(family, layers):
    selected = select_layers(layers, "style")
    style = random_style()
    q, k, v = qkv()
    outputs = {}
    for order in ("ours first", "theirs first"):
        callback = ImagePromptCallback(sdpa_attention)
        if order == "ours first":
            attn2 = apply_ipadapter(apply_stylestudio({}, layers, selected, style), layers, callback)
        else:
            attn2 = apply_stylestudio(apply_ipadapter({}, layers, callback), layers, selected, style)
        for layer in selected:
            patch = comfy_lookup(attn2, layer)
            assert isinstance(patch, CrossAdaINPatch), f"{order}: ComfyUI runs {type(patch).__name__} on {layer}"
            outputs[order, layer] = patch(q, k, v, options([0, 1], block=layer[:2], index=layer[2]))
        assert set(callback.calls) == set(selected) and set(callback.calls.values()) == {1}, f"{order}: {callback.calls}"

    text = reference_attention(q, k, v)
    keys, values = ImagePromptCallback(sdpa_attention).tokens(INNER, q)
    with_ip = text + 0.7 * reference_attention(q, keys.expand(2, -1, -1), values.expand(2, -1, -1))
    alone = CrossAdaINPatch(style, 0.8, WINDOW, attention=sdpa_attention)
    for layer in selected:
        torch.testing.assert_close(outputs["ours first", layer], outputs["theirs first", layer], rtol=0, atol=1e-6)
        extra = options([0, 1], block=layer[:2], index=layer[2])
        expected = cross_modal_adain(with_ip, alone.style_attention(q, extra), 0.8)
        torch.testing.assert_close(outputs["ours first", layer], expected, rtol=1e-5, atol=1e-5)
        assert (expected - alone(q, k, v, extra)).abs().max() > 1e-2  # the image prompt changed the result


def test_sd15_patches_take_the_block_key_unless_the_indexed_key_is_taken():
    assert patch_key({}, ("output", 3, 0), layers_in_block=1) == ("output", 3)
    assert patch_key({("output", 3, 0): object()}, ("output", 3, 0), layers_in_block=1) == ("output", 3, 0)
    assert patch_key({("output", 1): object()}, ("output", 1, 4), layers_in_block=10) == ("output", 1, 4)


def test_a_pack_adding_to_a_clone_leaves_the_original_model_unchanged():
    style = random_style()
    original = {"patches_replace": {"attn2": apply_stylestudio({}, SD15_LAYERS, [("output", 3, 0)], style)}}
    cloned = copy.deepcopy(original)  # ModelPatcher.clone()
    callback = ImagePromptCallback(sdpa_attention)
    apply_collecting_patch(cloned, ("output", 3), callback, sdpa_attention)
    ours, theirs = original["patches_replace"]["attn2"][("output", 3)], cloned["patches_replace"]["attn2"][("output", 3)]
    assert ours.collected == [] and [c for c, _ in theirs.collected] == [callback]
    assert theirs.style is ours.style  # the clone shares the style keys/values instead of copying them


def test_collected_contributions_follow_their_own_sigma_window():
    patch = CrossAdaINPatch(random_style(), 0.0, WINDOW, attention=sdpa_attention)
    callback = ImagePromptCallback(sdpa_attention)
    patch.add(callback, weight=1.0, sigma_start=5.0, sigma_end=2.0)
    q, k, v = qkv()
    text = sdpa_attention(q, k, v, HEADS)
    assert torch.equal(patch(q, k, v, options([0, 1], sigma=6.0)), text)
    assert torch.equal(patch(q, k, v, options([0, 1], sigma=1.0)), text)
    assert (patch(q, k, v, options([0, 1], sigma=3.0)) - text).abs().max() > 1e-2
    assert sum(callback.calls.values()) == 1


def test_the_old_ipadapter_plus_convention_gets_an_error_saying_what_to_do():
    with pytest.raises(TypeError, match="apply the IPAdapter node before StyleStudio, or update ComfyUI_IPAdapter_plus"):
        CrossAdaINPatch(random_style(), 1.0, WINDOW).set_new_condition(weight=1.0, cond=None)


def test_style_keys_values_are_copied_once_per_device_and_dtype():
    style = random_style()
    half = torch.zeros(1, 4, INNER, dtype=torch.bfloat16)
    first = style.for_half(0, half)
    assert first[0].dtype == torch.bfloat16 and torch.equal(first[0], style.k_pos.to(torch.bfloat16))
    again = style.for_half(0, half)
    assert again[0] is first[0] and again[1] is first[1]  # no copy at the next attention call
    assert style.for_half(1, half)[0] is style.copies[(half.device, torch.bfloat16)][2]
    style.for_half(0, torch.zeros(1, dtype=torch.float32))
    assert set(style.copies) == {(half.device, torch.bfloat16), (half.device, torch.float32)}
    style.keep_only(torch.device("meta"))  # ComfyUI moved the model elsewhere: nothing stays behind here
    assert style.copies == {}


class _Moves:
    """A displaced patch that wants to hear about device moves, as IPAdapter_plus's does."""

    def __init__(self):
        self.moves = []

    def to(self, target):
        self.moves.append(target)
        return self


def test_device_moves_reach_the_displaced_patch_and_free_the_old_devices_copies():
    style = random_style()
    style.for_half(0, torch.zeros(1, dtype=torch.bfloat16))
    displaced = _Moves()
    patch = CrossAdaINPatch(style, 1.0, WINDOW, previous=displaced)
    assert patch.to(torch.device("meta")) is patch and patch.to(torch.float16) is patch
    assert displaced.moves == [torch.device("meta"), torch.float16] and style.copies == {}
    for chained in (TeacherAttn1Patch(previous=_Moves()), TeacherWrapper(1.0, previous=_Moves())):
        assert chained.to(torch.device("cpu")) is chained and chained.previous.moves == [torch.device("cpu")]
    assert TeacherAttn1Patch().to(torch.device("cpu")) is not None  # nothing displaced: nothing to tell


def test_a_displaced_collecting_patch_keeps_collecting_through_ours():
    """IPAdapter, StyleStudio, IPAdapter again: the second one adds to our patch and every contribution counts."""
    first, second = ImagePromptCallback(sdpa_attention), ImagePromptCallback(sdpa_attention)
    theirs = CollectingPatch(first, sdpa_attention, weight=0.5, sigma_start=10.0, sigma_end=0.0)
    ours = CrossAdaINPatch(random_style(), 0.0, WINDOW, previous=theirs, attention=sdpa_attention)
    ours.add(second, weight=0.5, sigma_start=10.0, sigma_end=0.0)
    q, k, v = qkv()
    keys, values = first.tokens(INNER, q)
    ip = reference_attention(q, keys.expand(2, -1, -1), values.expand(2, -1, -1))
    torch.testing.assert_close(ours(q, k, v, options([0, 1])), reference_attention(q, k, v) + ip, rtol=1e-5, atol=1e-5)
    assert sum(first.calls.values()) == sum(second.calls.values()) == 1
