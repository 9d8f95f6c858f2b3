"""ComfyUI IMAGE → core tensors: the one conversion every node uses."""

from __future__ import annotations

import pytest
import torch

from comfyui_stylemamba.nodes.image_sockets import channels_first, rgb_batch


def test_channels_first_keeps_alpha():
    images = torch.rand(2, 5, 7, 4)
    out = channels_first(images, "images")
    assert out.shape == (2, 4, 5, 7)
    assert torch.equal(out[:, 3], images[..., 3])


def test_rgb_batch_drops_alpha_and_copies():
    images = torch.rand(1, 4, 6, 4)
    out = rgb_batch(images, "TrainStyleMamba: images")
    assert out.shape == (1, 3, 4, 6)
    assert torch.equal(out, images[..., :3].movedim(-1, 1))
    assert out.data_ptr() != images.data_ptr()


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(1, 4, 4, 2), r"TrainStyleMamba: images must be an IMAGE batch \(b, H, W, 3\), got shape \(1, 4, 4, 2\)"),
        (torch.rand(0, 4, 4, 3), "TrainStyleMamba: images is an empty batch"),
        (torch.full((1, 4, 4, 3), float("nan")), "TrainStyleMamba: images holds 48 NaN/inf values"),
    ],
)
def test_rgb_batch_refuses_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        rgb_batch(images, "TrainStyleMamba: images")
