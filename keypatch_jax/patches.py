"""Patch sets for sampling and evaluation (docs/design.md §6.1), shared by `sample` and `evaluate`.

Every function is pure given its `np.random.Generator`. Shapes: images
[B, S, S, 3] and patches [B, N, S, S, 3] in [-1, 1]; boxes [B, N, 4] as
(x, y, w, h) in pixels of the S x S image.

  key       the stored EdgeBox patches (`input_pipeline.eval_batches`).
  random    random boxes passing the dataset's size filter (`random_boxes`).
  combine   the N patches taken from N different images (`combine`).
  noisy     key patches plus Gaussian noise (`add_noise`).
  permute   the same patches in every order (`permutations`).
  folder    the user's own patch images (`load_patch_folder`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from keypatch_jax import errors

# The patch modes of `sample --mode` and the evaluation columns, with what each gives the generator.
MODE_HELP = {
  "key": "each test image's own key patches (its stored boxes)",
  "random": "patches cut from the test image at random boxes of the dataset's size range",
  "combine": "each patch from a different test image (part combination; no real image to compare with)",
  "noisy": "the key patches plus Gaussian noise of sigma --noise",
  "permute": "the key patches in every order, one grid per order side by side (identical generated columns "
  "show the order invariance)",
}
MODES = tuple(MODE_HELP)


class PatchError(errors.UserError):
  """Patches cannot be made (one-line message naming the problem)."""


def box_filter(info: dict[str, Any]) -> tuple[float, float, float]:
  """(min_area, max_area, max_aspect) of a dataset, from `dataset_info.json["options"]`.

  Falls back to the preprocessing defaults (0.05, 0.25, 3.0) for missing keys.
  """
  options = info.get("options") or {}
  return (
    float(options.get("min_area") or 0.05),
    float(options.get("max_area") or 0.25),
    float(options.get("max_aspect") or 3.0),
  )


def random_boxes(
  rng: np.random.Generator,
  count: int,
  num_patches: int,
  image_size: int,
  min_area: float = 0.05,
  max_area: float = 0.25,
  max_aspect: float = 3.0,
) -> np.ndarray:
  """Random integer boxes that pass the preprocessing size filter.

  Area fraction w*h/S^2 in [min_area, max_area] and 1/max_aspect <= w/h <=
  max_aspect (the rules of `preprocessing.detect.shape_mask`), uniform
  position inside the image.

  Returns:
    float32 [count, num_patches, 4] (x, y, w, h) in pixels.
  """
  s = image_size
  total = count * num_patches
  out = np.zeros((0, 4), np.float32)
  for _ in range(1000):
    k = 4 * (total - len(out)) + 16
    area = rng.uniform(min_area, max_area, k) * s * s
    log_ratio = rng.uniform(-np.log(max_aspect), np.log(max_aspect), k)
    w = np.round(np.sqrt(area * np.exp(log_ratio)))
    h = np.round(np.sqrt(area / np.exp(log_ratio)))
    frac, ratio = w * h / (s * s), w / np.maximum(h, 1)
    ok = (w >= 1) & (h >= 1) & (w <= s) & (h <= s) & (frac >= min_area) & (frac <= max_area)
    ok &= (ratio >= 1.0 / max_aspect) & (ratio <= max_aspect)
    w, h = w[ok], h[ok]
    x = np.floor(rng.uniform(0, 1, len(w)) * (s - w + 1))
    y = np.floor(rng.uniform(0, 1, len(h)) * (s - h + 1))
    out = np.concatenate([out, np.stack([x, y, w, h], axis=1).astype(np.float32)])
    if len(out) >= total:
      return out[:total].reshape(count, num_patches, 4)
  raise PatchError(
    f"no {s}x{s} box has an area fraction in [{min_area}, {max_area}] and aspect <= {max_aspect}; "
    "check the dataset's options"
  )


# TensorFlow's bicubic resize looks its kernel up in a table of 1024 steps per pixel.
_BICUBIC_TABLE = 1024


def bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
  """The [out_size, in_size] matrix of TensorFlow's bicubic resize along one axis (float32).

  `tf.image.resize(method="bicubic")` without antialiasing (training's patches,
  docs/design.md §2.3): Keys' cubic kernel (a = -0.5) at half-pixel centres,
  the sub-pixel offset rounded to 1/1024 as TensorFlow's table does, taps
  outside the input dropped and the remaining weights renormalised to sum 1.
  """
  a = -0.5
  scale = np.float32(in_size) / np.float32(out_size)
  loc = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  base = np.floor(loc)
  t = np.rint((loc - base) * _BICUBIC_TABLE) / _BICUBIC_TABLE
  d = np.stack([1 + t, t, 1 - t, 2 - t], axis=1).astype(np.float64)  # distances of taps base-1 .. base+2
  near = ((a + 2) * d - (a + 3)) * d * d + 1
  far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
  w = np.where(d <= 1, near, far)
  taps = base[:, None].astype(np.int64) + np.arange(-1, 3)
  w = np.where((taps >= 0) & (taps < in_size), w, 0.0)
  w /= w.sum(axis=1, keepdims=True)
  out = np.zeros((out_size, in_size), np.float64)
  np.add.at(out, (np.repeat(np.arange(out_size), 4), np.clip(taps, 0, in_size - 1).ravel()), w.ravel())
  return out.astype(np.float32)


def crop_one(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Crops each box of one image and resizes it (bicubic) to S x S, in NumPy.

  The same patches as training's `input_pipeline.crop_patches` (TensorFlow,
  inside tf.data; equal to float32 rounding, tests/test_sample.py): box edges
  rounded half to even and clipped to the image, at least one pixel wide,
  then `bicubic_weights` along each axis, clipped to [-1, 1]. Sampling and the
  page cut patches with it, so they need no TensorFlow.

  Args:
    image: float32 [S, S, 3] in [-1, 1].
    boxes: [N, 4] (x, y, w, h) in pixels.

  Returns:
    float32 [N, S, S, 3] in [-1, 1].
  """
  s = image.shape[0]
  boxes = np.asarray(boxes, np.float32)
  x0 = np.clip(np.round(boxes[:, 0]), 0, s - 1)
  y0 = np.clip(np.round(boxes[:, 1]), 0, s - 1)
  x1 = np.clip(np.round(boxes[:, 0] + boxes[:, 2]), x0 + 1, s)
  y1 = np.clip(np.round(boxes[:, 1] + boxes[:, 3]), y0 + 1, s)
  out = []
  for xa, ya, xb, yb in zip(x0.astype(int), y0.astype(int), x1.astype(int), y1.astype(int), strict=True):
    crop = np.asarray(image[ya:yb, xa:xb], np.float32)
    out.append(np.einsum("oi,ijc,pj->opc", bicubic_weights(yb - ya, s), crop, bicubic_weights(xb - xa, s)))
  return np.clip(np.stack(out), -1.0, 1.0).astype(np.float32)


def crop(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Crops and resizes (bicubic, as training does: `crop_one`) each box: [B, S, S, 3], [B, N, 4] -> [B, N, S, S, 3]."""
  return np.stack([crop_one(im, bx) for im, bx in zip(images, boxes, strict=True)])


def combine(patches: np.ndarray, boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Part combination: output b takes patch i from image (b + i) mod B.

  With B >= N the N patches of every output come from N different images.

  Args:
    patches: [B, N, S, S, 3].
    boxes: optional [B, N, 4], recombined the same way.

  Returns:
    (patches [B, N, S, S, 3], boxes [B, N, 4] or None).
  """
  b, n = patches.shape[:2]
  if b < n:
    raise PatchError(f"combine needs at least N={n} images to take each patch from a different one, got {b}")
  source = (np.arange(b)[:, None] + np.arange(n)[None, :]) % b  # [B, N]
  slot = np.broadcast_to(np.arange(n), (b, n))
  return patches[source, slot], None if boxes is None else np.asarray(boxes)[source, slot]


def add_noise(rng: np.random.Generator, patches: np.ndarray, sigma: float) -> np.ndarray:
  """Degraded patches: patches + N(0, sigma^2), clipped to [-1, 1]. Same shape."""
  if sigma < 0:
    raise PatchError(f"--noise {sigma}: must be >= 0")
  noisy = patches + sigma * rng.standard_normal(patches.shape).astype(np.float32)
  return np.clip(noisy, -1.0, 1.0).astype(np.float32)


def permutations(num_patches: int, limit: int = 24) -> list[tuple[int, ...]]:
  """Orders of N patches, the identity first, at most `limit` of them."""
  return list(itertools.islice(itertools.permutations(range(num_patches)), limit))


def load_patch_folder(folder: str, image_size: int) -> np.ndarray:
  """The user's own patches: every file in `folder` (sorted by name), decoded and resized to S x S.

  A file is a patch if it decodes (any format OpenCV or Pillow reads, whatever
  its name, as in preprocessing); sub-folders are not read.

  Returns:
    float32 [1, N, S, S, 3] in [-1, 1], N = the number of files.

  Raises:
    PatchError: the folder is missing or holds no files, or a file is not a
      usable image (named, with the reason).
  """
  import cv2

  from preprocessing import images

  if not os.path.isdir(folder):
    raise PatchError(f"--patches {folder!r} is not a directory")
  names = sorted(f for f in os.listdir(folder) if not os.path.isdir(os.path.join(folder, f)))
  if not names:
    raise PatchError(f"--patches {folder!r} holds no files")
  out = []
  for name in names:
    path = os.path.join(folder, name)
    try:
      image = images.read_image_file(path)
    except images.Reject as r:
      raise PatchError(f"cannot read patch image {path!r} ({r.reason}); remove it from {folder!r}") from None
    image = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_CUBIC)
    out.append(np.clip(image.astype(np.float32) / 127.5 - 1.0, -1.0, 1.0))
  return np.stack(out)[None]


def make_patch_sets(
  mode: str,
  images: np.ndarray,
  key_patches: np.ndarray,
  boxes: np.ndarray,
  info: dict,
  *,
  seed: int | Sequence[int],
  noise: float,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
  """Patches of one mode for a batch of test images.

  Args:
    mode: one of `MODES` ("permute" returns the key patches).
    images: [B, S, S, 3]; key_patches: [B, N, S, S, 3]; boxes: [B, N, 4].
    info: the dataset's `dataset_info.json` (size filter of random boxes).

  Returns:
    (patches [B, N, S, S, 3], their boxes [B, N, 4] or None, the real image
     they come from [B, S, S, 3] or None for part combination).
  """
  rng = np.random.default_rng(seed)
  if mode in ("key", "permute"):
    return key_patches, boxes, images
  if mode == "noisy":
    return add_noise(rng, key_patches, noise), boxes, images
  if mode == "random":
    b, n = boxes.shape[:2]
    rand = random_boxes(rng, b, n, images.shape[1], *box_filter(info))
    return crop(images, rand), rand, images
  if mode == "combine":
    combined, _ = combine(key_patches)
    return combined, None, None
  raise ValueError(f"unknown mode {mode!r}")
