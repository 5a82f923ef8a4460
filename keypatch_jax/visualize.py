"""Image grids: one row per example, columns patches | mask | generated | real, under a labelled header.

Small images are enlarged (nearest neighbour, an integer factor) so that every
cell is at least `MIN_CELL` pixels wide: a 32x32 grid cell is otherwise too
small to judge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_CELL = 128  # smallest cell side in pixels after enlarging
PAD = 2  # white pixels between cells
HEADER = 20  # height of one header line (column labels, or the title)
_FONT_SCALE = 0.4


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[..., H, W, C] in [-1, 1] (C = 1 or 3) -> uint8 [..., H, W, 3]."""
  images = np.asarray(images, np.float32)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def scale_for(image_size: int, min_cell: int = MIN_CELL) -> int:
  """The integer enlargement that makes an S-pixel image at least `min_cell` pixels wide."""
  return max(1, -(-min_cell // image_size))


def column_labels(num_patches: int, mask: bool, real: bool, order: Sequence[int] | None = None) -> list[str]:
  """Header labels: `patch k` (1-based, in `order`), then mask, generated and real where present."""
  order = range(num_patches) if order is None else order
  return [f"patch {k + 1}" for k in order] + ["mask"] * mask + ["generated"] + ["real"] * real


def _text(canvas: np.ndarray, text: str, x: int, y: int, width: int) -> None:
  """Black text centred in [x, x + width) on the header line whose top is y (shrunk to fit)."""
  import cv2

  scale = _FONT_SCALE
  (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
  if w > width - 2:
    scale *= (width - 2) / w
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
  org = (x + max(0, (width - w) // 2), y + (HEADER + h) // 2)
  cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def make_grid(
  patches: np.ndarray,
  mask: np.ndarray | None,
  image: np.ndarray,
  real: np.ndarray | None = None,
  *,
  title: str | None = None,
  order: Sequence[int] | None = None,
  min_cell: int = MIN_CELL,
) -> np.ndarray:
  """Tiles a batch into one labelled uint8 picture.

  Args:
    patches: [B, N, S, S, 3] in [-1, 1].
    mask: [B, S, S, 1] in [0, 1], or None (no mask network).
    image: generated [B, S, S, 3] in [-1, 1].
    real: real images [B, S, S, 3] in [-1, 1], or None (user patches).
    title: a header line above the column labels (e.g. the patch order), or None.
    order: the original index of each patch column (labels `patch k`); default 0..N-1.
    min_cell: each S x S tile is enlarged by `scale_for(S, min_cell)`.

  Returns:
    uint8 [header + B * (c + PAD) + PAD, C * (c + PAD) + PAD, 3], RGB, with
    c = S * scale, C = N + 1 (+ 1 mask) (+ 1 real) columns and
    header = HEADER (+ HEADER with a title).
  """
  b, n, s = patches.shape[:3]
  columns = [patches[:, i] for i in range(n)]
  if mask is not None:
    columns.append(np.asarray(mask) * 2.0 - 1.0)
  columns.append(image)
  if real is not None:
    columns.append(real)
  scale = scale_for(s, min_cell)
  cell = s * scale
  tiles = [np.repeat(np.repeat(to_uint8(c), scale, axis=1), scale, axis=2) for c in columns]
  top = HEADER * (2 if title else 1)
  grid = np.full((top + b * (cell + PAD) + PAD, len(tiles) * (cell + PAD) + PAD, 3), 255, np.uint8)
  if title:
    _text(grid, title, 0, 0, grid.shape[1])
  labels = column_labels(n, mask is not None, real is not None, order)
  for col, tile in enumerate(tiles):
    x = PAD + col * (cell + PAD)
    _text(grid, labels[col], x, top - HEADER, cell)
    for row in range(b):
      y = top + PAD + row * (cell + PAD)
      grid[y : y + cell, x : x + cell] = tile[row]
  return grid
