"""Where the predicted mask put each key patch: the patches pasted onto the generated image.

The generator does not say which patch went where; its mask M-hat (paper
§3.1) only marks the key regions. `paste_patches` reads the regions as the
connected components of M-hat > threshold, assigns each patch to a region by
appearance (the mean absolute difference between the patch, resized to the
region's box, and the generated pixels there; one patch per region by the
Hungarian method when there are at least as many regions as patches, else
each patch to its best region) and pastes the resized patches over a faded
copy of the generated image. Pure NumPy/OpenCV, no model.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import optimize

# Regions smaller than this fraction of the image are mask noise, not parts.
MIN_REGION = 0.005
# How much of the generated image shows under the pasted patches.
BACKGROUND_ALPHA = 0.35


def mask_regions(mask: np.ndarray, threshold: float = 0.5, min_region: float = MIN_REGION) -> np.ndarray:
  """Boxes of the connected regions of a mask, largest first.

  Args:
    mask: float [S, S] or [S, S, 1] in [0, 1].
    threshold: a pixel is in a region when mask > threshold.
    min_region: regions under this fraction of the image are dropped.

  Returns:
    int [K, 4] boxes (x, y, w, h) in pixels, K >= 0, by decreasing area.
  """
  binary = (np.asarray(mask).reshape(mask.shape[0], mask.shape[1]) > threshold).astype(np.uint8)
  count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
  stats = stats[1:count]  # row 0 is the background
  stats = stats[stats[:, cv2.CC_STAT_AREA] >= min_region * binary.size]
  order = np.argsort(-stats[:, cv2.CC_STAT_AREA], kind="stable")
  return stats[order, :4].astype(np.int64).reshape(-1, 4)


def _resize(patch: np.ndarray, w: int, h: int) -> np.ndarray:
  interp = cv2.INTER_AREA if w * h < patch.shape[0] * patch.shape[1] else cv2.INTER_CUBIC
  return cv2.resize(patch, (int(w), int(h)), interpolation=interp)


def assign(patches: np.ndarray, image: np.ndarray, regions: np.ndarray) -> np.ndarray:
  """The region of each patch: int [N] indices into `regions` [K, 4] (K >= 1).

  Cost of (patch i, region k): mean |resize(patch_i) - image[region k]| over
  the region's box. K >= N: a minimum-cost one-to-one assignment; K < N:
  each patch to its cheapest region (regions then hold several patches).
  """
  cost = np.zeros((len(patches), len(regions)), np.float32)
  for k, (x, y, w, h) in enumerate(regions):
    target = image[y : y + h, x : x + w].astype(np.float32)
    for i, patch in enumerate(patches):
      cost[i, k] = np.abs(_resize(patch, w, h).astype(np.float32) - target).mean()
  if len(regions) >= len(patches):
    rows, cols = optimize.linear_sum_assignment(cost)
    return cols[np.argsort(rows)]
  return cost.argmin(axis=1)


def paste_patches(
  mask: np.ndarray, image: np.ndarray, patches: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
  """Pastes each patch onto the generated image at the mask region it matches.

  Args:
    mask: float [S, S, 1] in [0, 1], the predicted mask.
    image: uint8 [S, S, 3], the generated image.
    patches: uint8 [N, S, S, 3], the key patches given to the generator.
    threshold: mask level of a region.

  Returns:
    (uint8 [S, S, 3]: the generated image faded to white with the patches
     pasted on it; int [N, 4] box (x, y, w, h) of each patch, all -1 for
     every patch when the mask has no region).
  """
  canvas = np.round(BACKGROUND_ALPHA * image.astype(np.float32) + (1 - BACKGROUND_ALPHA) * 255).astype(np.uint8)
  regions = mask_regions(mask, threshold)
  if len(regions) == 0 or len(patches) == 0:
    return canvas, np.full((len(patches), 4), -1, np.int64)
  boxes = regions[assign(patches, image, regions)]
  for i in np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable"):  # large first, small ones stay visible
    x, y, w, h = boxes[i]
    canvas[y : y + h, x : x + w] = _resize(patches[i], w, h)
  return canvas, boxes
