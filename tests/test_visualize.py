"""Sample grids: large enough to see, and labelled (patches / mask / generated / real, the patch order)."""

from __future__ import annotations

import numpy as np
import pytest

from keypatch_jax import visualize

B, N = 2, 3


def _batch(s: int):
  rng = np.random.default_rng(s)
  patches = rng.uniform(-1, 1, (B, N, s, s, 3)).astype(np.float32)
  mask = rng.uniform(0, 1, (B, s, s, 1)).astype(np.float32)
  image, real = rng.uniform(-1, 1, (2, B, s, s, 3)).astype(np.float32)
  return patches, mask, image, real


def _dark(region: np.ndarray) -> bool:
  """Whether text (dark pixels) was drawn in a white header region."""
  return bool((region < 128).any())


@pytest.mark.parametrize("s", [16, 32, 64, 128])
def test_every_cell_is_at_least_128_pixels_and_holds_the_enlarged_image(s):
  patches, mask, image, real = _batch(s)
  grid = visualize.make_grid(patches, mask, image, real)
  cell = (grid.shape[1] - visualize.PAD) // (N + 3) - visualize.PAD
  assert cell >= 128 and cell % s == 0
  assert grid.shape == (
    visualize.HEADER + B * (cell + visualize.PAD) + visualize.PAD,
    (N + 3) * (cell + visualize.PAD) + visualize.PAD,
    3,
  )
  k = cell // s
  y, x = visualize.HEADER + visualize.PAD, visualize.PAD + (N + 1) * (cell + visualize.PAD)  # row 0, "generated"
  expected = np.repeat(np.repeat(visualize.to_uint8(image[0]), k, axis=0), k, axis=1)
  np.testing.assert_array_equal(grid[y : y + cell, x : x + cell], expected)


def test_header_labels_every_column_and_the_title():
  patches, mask, image, real = _batch(32)
  grid = visualize.make_grid(patches, mask, image, real, title="patch order 3-1-2", order=(2, 0, 1))
  top, cell = 2 * visualize.HEADER, 128
  assert _dark(grid[: visualize.HEADER])  # the title line
  for col in range(N + 3):  # a label above each column
    x = visualize.PAD + col * (cell + visualize.PAD)
    assert _dark(grid[visualize.HEADER : top, x : x + cell]), col
  assert not _dark(grid[: visualize.HEADER, :2])  # margins stay white
  untitled = visualize.make_grid(patches, mask, image, real)
  assert grid.shape[0] - untitled.shape[0] == visualize.HEADER


def test_column_labels_follow_the_patch_order():
  assert visualize.column_labels(3, True, True) == ["patch 1", "patch 2", "patch 3", "mask", "generated", "real"]
  assert visualize.column_labels(3, False, False, order=(2, 0, 1)) == ["patch 3", "patch 1", "patch 2", "generated"]
