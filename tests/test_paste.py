"""`paste`: mask regions, patch-to-region assignment, the pasted picture."""

from __future__ import annotations

import numpy as np

from keypatch_jax import paste

S = 32


def _mask_with(*boxes):
  mask = np.zeros((S, S, 1), np.float32)
  for x, y, w, h in boxes:
    mask[y : y + h, x : x + w] = 0.9
  return mask


def test_regions_are_the_mask_components_largest_first():
  mask = _mask_with((2, 2, 6, 4), (16, 10, 10, 12))
  mask[30, 30] = 1.0  # one pixel: under MIN_REGION, noise
  regions = paste.mask_regions(mask)
  np.testing.assert_array_equal(regions, [[16, 10, 10, 12], [2, 2, 6, 4]])
  assert paste.mask_regions(np.zeros((S, S, 1))).shape == (0, 4)


def test_each_patch_is_pasted_on_the_region_that_looks_like_it():
  red, blue = np.zeros((S, S, 3), np.uint8), np.zeros((S, S, 3), np.uint8)
  red[..., 0], blue[..., 2] = 255, 255
  image = np.full((S, S, 3), 128, np.uint8)
  image[2:10, 2:12] = (0, 0, 250)  # a blue part top left
  image[18:30, 14:28] = (250, 0, 0)  # a red part bottom right
  mask = _mask_with((2, 2, 10, 8), (14, 18, 14, 12))
  canvas, boxes = paste.paste_patches(mask, image, np.stack([red, blue]))
  np.testing.assert_array_equal(boxes, [[14, 18, 14, 12], [2, 2, 10, 8]])
  assert (canvas[18:30, 14:28] == (255, 0, 0)).all() and (canvas[2:10, 2:12] == (0, 0, 255)).all()
  faded = round(paste.BACKGROUND_ALPHA * 128 + (1 - paste.BACKGROUND_ALPHA) * 255)
  assert (canvas[0, 31] == faded).all()  # outside the regions: the generated image, faded


def test_more_patches_than_regions_share_the_best_region():
  image = np.zeros((S, S, 3), np.uint8)
  patches = np.zeros((3, S, S, 3), np.uint8)
  _, boxes = paste.paste_patches(_mask_with((4, 4, 8, 8)), image, patches)
  np.testing.assert_array_equal(boxes, [[4, 4, 8, 8]] * 3)


def test_no_region_pastes_nothing():
  image = np.zeros((S, S, 3), np.uint8)
  canvas, boxes = paste.paste_patches(np.zeros((S, S, 1)), image, np.zeros((2, S, S, 3), np.uint8))
  assert (boxes == -1).all() and boxes.shape == (2, 4)
  assert canvas.shape == (S, S, 3)
