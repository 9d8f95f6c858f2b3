"""The one tensor↔PIL conversion and the one resampling every image path of the pack uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_stylemamba.stylemamba.images import fit_resolution, from_pil, labelled_grid, resize, square, to_pil


def test_pil_round_trip_is_exact_on_8_bit_values():
    pixels = torch.randint(0, 256, (1, 3, 5, 7)).float() / 255
    picture = to_pil(pixels)
    assert picture.size == (7, 5) and picture.mode == "RGB"
    assert np.asarray(picture)[2, 3].tolist() == (pixels[0, :, 2, 3] * 255).round().int().tolist()
    assert torch.equal(from_pil(picture), pixels)
    assert torch.equal(from_pil(Image.new("L", (2, 2), 255)), torch.ones(1, 3, 2, 2))
    assert np.asarray(to_pil(torch.full((3, 1, 1), 2.0))).max() == 255  # clamped, not wrapped
    with pytest.raises(ValueError, match="takes one image, got a batch of 2"):
        to_pil(torch.zeros(2, 3, 4, 4))


def test_fit_resolution_and_square_sizes():
    images = torch.rand(2, 3, 300, 200)
    assert fit_resolution(images, 128, multiple=8).shape[-2:] == (128, 80)
    assert torch.equal(fit_resolution(images[..., :64, :40], 512, multiple=8), images[..., :64, :40])
    assert square(images, 64).shape == (2, 3, 64, 64)
    flat = torch.full((1, 3, 30, 50), 0.25)
    assert torch.allclose(square(flat, 16), torch.full((1, 3, 16, 16), 0.25))
    assert resize(images, (300, 200)) is images


def test_labelled_grid_places_cells_under_their_bands():
    dark, light = torch.zeros(3, 10, 20), torch.ones(3, 10, 10)
    grid = labelled_grid([[dark, light], [light]], height=5, captions=[["a", "b"], ["c"]], caption_height=14,
                         header=["x", "y"], header_height=14)
    assert grid.shape == (1, 3, 14 + 14 + 5 + 14 + 5, 10 + 5)  # widths keep the aspect: 10 and 5 px at 5 px high
    first_row, second_row = grid[0, :, 28:33], grid[0, :, 47:52]
    assert first_row[:, :, :10].max() == 0 and first_row[:, :, 10:].min() == 1
    assert second_row[:, :, :5].min() == 1 and second_row[:, :, 5:].min() == 1  # white beyond a shorter row
    assert grid[0, :, 14:28].min() < 1 and grid[0, :, :14].min() < 1  # caption and header text


def test_labelled_grid_keeps_sizes_without_a_height():
    images = [torch.rand(3, 4, 6) for _ in range(4)]
    grid = labelled_grid([images[:2], images[2:]])
    assert grid.shape == (1, 3, 8, 12)
    torch.testing.assert_close(grid[0, :, 4:, 6:], images[3], atol=1 / 255, rtol=0)
