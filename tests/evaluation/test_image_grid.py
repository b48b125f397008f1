"""Sample grids put each image's pixels in its own tile, grey or colour (channel-first RGB)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pplvm.evaluation.plots import image_grid


def shown(fig) -> np.ndarray:
    return np.asarray(fig.axes[0].images[0].get_array())


def test_rgb_images_tile_in_order_with_their_colours():
    h, w = 2, 3
    red = torch.zeros(3, h, w)
    red[0] = 1
    blue = torch.zeros(3, h, w)
    blue[2] = 1
    ramp = torch.linspace(0, 1, 3 * h * w).reshape(3, h, w)  # every pixel of every channel different
    tiles = shown(image_grid(torch.stack([red, blue, ramp]).reshape(3, -1), (3, h, w)))
    assert tiles.shape == (2 * h, 2 * w, 3)  # ⌈√3⌉ = 2 wide, 2 rows, the fourth tile empty
    np.testing.assert_allclose(tiles[:h, :w], red.permute(1, 2, 0).numpy())
    np.testing.assert_allclose(tiles[:h, w:], blue.permute(1, 2, 0).numpy())
    np.testing.assert_allclose(tiles[h:, :w], ramp.permute(1, 2, 0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(tiles[h:, w:], 1.0)  # white


@pytest.mark.parametrize("shape", [(2, 3), (1, 2, 3)])
def test_grey_images_tile_row_major(shape):
    x = torch.arange(4 * 6, dtype=torch.float32).reshape(4, 6) / 24
    tiles = shown(image_grid(x, shape))
    assert tiles.shape == (4, 6)
    np.testing.assert_allclose(tiles[2:, 3:], x[3].reshape(2, 3).numpy())  # the fourth image: bottom right


def test_other_channel_counts_are_refused():
    with pytest.raises(ValueError, match=r"image_shape \(2, 2, 2\)"):
        image_grid(torch.zeros(1, 8), (2, 2, 2))
