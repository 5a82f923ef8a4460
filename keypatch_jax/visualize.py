"""Image grids: one row per example, columns patches | mask | generated | real."""

from __future__ import annotations

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[..., H, W, C] in [-1, 1] (C = 1 or 3) -> uint8 [..., H, W, 3]."""
  images = np.asarray(images, np.float32)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(
  patches: np.ndarray, mask: np.ndarray | None, image: np.ndarray, real: np.ndarray | None = None, pad: int = 2
) -> np.ndarray:
  """Tiles a batch into one uint8 picture.

  Args:
    patches: [B, N, S, S, 3] in [-1, 1].
    mask: [B, S, S, 1] in [0, 1], or None (no mask network).
    image: generated [B, S, S, 3] in [-1, 1].
    real: real images [B, S, S, 3] in [-1, 1], or None (user patches).
    pad: white pixels between tiles.

  Returns:
    uint8 [B * (S + pad) + pad, C * (S + pad) + pad, 3] with C = N + 1 + 1 (+ 1).
  """
  b, n, s = patches.shape[:3]
  columns = [patches[:, i] for i in range(n)]
  if mask is not None:
    columns.append(np.asarray(mask) * 2.0 - 1.0)
  columns.append(image)
  if real is not None:
    columns.append(real)
  tiles = [to_uint8(c) for c in columns]
  grid = np.full((b * (s + pad) + pad, len(tiles) * (s + pad) + pad, 3), 255, np.uint8)
  for col, tile in enumerate(tiles):
    for row in range(b):
      y, x = pad + row * (s + pad), pad + col * (s + pad)
      grid[y : y + s, x : x + s] = tile[row]
  return grid
