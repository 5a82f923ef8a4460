"""The FID Inception-v3 (pool3, 2048-d features) in Flax, with pytorch-fid's weights.

Every FID/KID implementation in common use (TTUR's TensorFlow original,
pytorch-fid, torch-fidelity, clean-fid) measures images with the 2015-12-05
TensorFlow Inception-v3 graph. This module is that network as pytorch-fid
ports it (`pytorch_fid/inception.py`: torchvision's Inception3 with
`FIDInceptionA`, `FIDInceptionC`, `FIDInceptionE_1` and `FIDInceptionE_2`:
average pools that ignore the padding, and a max pool in the last block),
from the input resize to the final average pool (pool3).

Weights are never downloaded: the user supplies pytorch-fid's file
`pt_inception-2015-12-05-6726825d.pth` (or an `.npz` of the same keys), read
without PyTorch by `keypatch_jax.pth`. Its submodule names are the state_dict
names, so `Mixed_6b.branch7x7_2.conv.weight` is
`params['Mixed_6b']['branch7x7_2']['conv']['kernel']` (OIHW -> HWIO).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from keypatch_jax import errors, pth

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
INPUT_SIZE = 299
FEATURES = 2048


class WeightsError(errors.UserError):
  """The Inception weights file is missing or is not pytorch-fid's network (one-line message)."""


def missing_weights_message(flag: str) -> str:
  """One line: which file `flag` needs and where it is commonly found (nothing is downloaded)."""
  return (
    f"{flag} needs the FID Inception weights file {WEIGHTS_FILE} (pytorch-fid's; about 92 MB), "
    f"commonly found at {WEIGHTS_URL}; download it yourself and pass its path (nothing is downloaded here)"
  )


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """[B, H, W, C] -> [B, size, size, C] as `F.interpolate(mode='bilinear', align_corners=False)`.

  Half-pixel sample centres, no antialiasing when shrinking, edge samples
  clamped: what pytorch-fid does before its network.
  """
  b, _, _, c = images.shape
  return jax.image.resize(images, (b, size, size, c), method="bilinear", antialias=False)


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU: torchvision's BasicConv2d."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = tuple((p, p) for p in self.padding)
    x = nn.Conv(
      self.features, self.kernel, self.strides, pad, use_bias=False, precision=jax.lax.Precision.HIGHEST, name="conv"
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _conv(features: int, kernel: int | tuple[int, int], strides: int = 1, padding: int | tuple[int, int] = 0, *, name):
  kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
  padding = (padding, padding) if isinstance(padding, int) else padding
  return BasicConv(features, kernel, strides, padding, name=name)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3, stride 1, pad 1, padding excluded from the mean (TensorFlow's; `count_include_pad=False`)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, strides: int, pad: int) -> jax.Array:
  return nn.max_pool(x, (3, 3), (strides, strides), ((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  """Mixed_5b/c/d (FIDInceptionA): [B, H, W, C] -> [B, H, W, 224 + pool_features]."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = _conv(64, 1, name="branch1x1")(x)
    b5 = _conv(64, 5, padding=2, name="branch5x5_2")(_conv(48, 1, name="branch5x5_1")(x))
    b3 = _conv(64, 1, name="branch3x3dbl_1")(x)
    b3 = _conv(96, 3, padding=1, name="branch3x3dbl_3")(_conv(96, 3, padding=1, name="branch3x3dbl_2")(b3))
    bp = _conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: [B, H, W, C] -> [B, (H-3)//2+1, ., 480 + C]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = _conv(384, 3, strides=2, name="branch3x3")(x)
    bd = _conv(96, 3, padding=1, name="branch3x3dbl_2")(_conv(64, 1, name="branch3x3dbl_1")(x))
    bd = _conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..e (FIDInceptionC): [B, H, W, 768] -> [B, H, W, 768]; factorised 7x7 convolutions."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = _conv(192, 1, name="branch1x1")(x)
    b7 = _conv(c7, 1, name="branch7x7_1")(x)
    b7 = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = _conv(c7, 1, name="branch7x7dbl_1")(x)
    bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = _conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = _conv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: [B, H, W, 768] -> [B, (H-3)//2+1, ., 1280]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = _conv(320, 3, strides=2, name="branch3x3_2")(_conv(192, 1, name="branch3x3_1")(x))
    b7 = _conv(192, 1, name="branch7x7x3_1")(x)
    b7 = _conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = _conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = _conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1, average pool) / Mixed_7c (FIDInceptionE_2, max pool): -> [B, H, W, 2048]."""

  max_pool: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = _conv(320, 1, name="branch1x1")(x)
    b3 = _conv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        _conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        _conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = _conv(384, 3, padding=1, name="branch3x3dbl_2")(_conv(448, 1, name="branch3x3dbl_1")(x))
    bd = jnp.concatenate(
      [
        _conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        _conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool_3x3(x)
    bp = _conv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """Images [B, H, W, 3] in [0, 1] -> pool3 features [B, 2048] (pytorch-fid's `InceptionV3()` forward).

  The input is resized to 299x299 (`resize_bilinear`) and scaled to [-1, 1]
  inside the module unless `resize` is False (then it must already be
  299x299 in [0, 1]). Inference only: BatchNorm uses the stored statistics.
  """

  resize: bool = True

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = resize_bilinear(images) if self.resize else images
    x = 2.0 * x - 1.0
    x = _conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = _conv(32, 3, name="Conv2d_2a_3x3")(x)
    x = _conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool(x, 2, 0)
    x = _conv(80, 1, name="Conv2d_3b_1x1")(x)
    x = _conv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool(x, 2, 0)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


def variable_shapes() -> dict:
  """`jax.ShapeDtypeStruct`s of `FIDInceptionV3`'s {'params', 'batch_stats'}, without computing anything."""
  images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda x: FIDInceptionV3(resize=False).init(jax.random.key(0), x), images)


def _torch_key(path: tuple[str, ...]) -> tuple[str, bool]:
  """(state_dict key, is a conv kernel) of a Flax variable path (collection first)."""
  collection, *modules, leaf = path
  torch_leaf = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
  }[(collection, leaf)]
  return ".".join([*modules, torch_leaf]), leaf == "kernel"


def variables_from_state_dict(state_dict: dict[str, np.ndarray], source: str = "the state_dict") -> dict:
  """Flax variables {'params', 'batch_stats'} of `FIDInceptionV3` from pytorch-fid's state_dict.

  Conv weights OIHW -> HWIO, BatchNorm weight/bias/running_mean/running_var
  -> scale/bias/mean/var, all float32. Keys the network does not use (`fc.*`,
  `num_batches_tracked`, a torchvision `AuxLogits`) are ignored.

  Raises:
    WeightsError: a key is missing or has the wrong shape (names `source`).
  """
  flat = {}
  for path, abstract in jax.tree_util.tree_flatten_with_path(variable_shapes())[0]:
    names = tuple(p.key for p in path)
    key, is_kernel = _torch_key(names)
    if key not in state_dict:
      raise WeightsError(f"{source} has no {key!r}: not pytorch-fid's Inception ({WEIGHTS_FILE})")
    value = np.asarray(state_dict[key], np.float32)
    if is_kernel and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    if value.shape != abstract.shape:
      raise WeightsError(f"{source}: {key!r} has shape {value.shape}, the FID Inception needs {abstract.shape}")
    flat[names] = value
  out: dict = {}
  for names, value in flat.items():
    node = out
    for n in names[:-1]:
      node = node.setdefault(n, {})
    node[names[-1]] = jnp.asarray(value)
  return out


def to_state_dict(variables: dict) -> dict[str, np.ndarray]:
  """The inverse of `variables_from_state_dict`: pytorch-fid's keys and layouts (conv weights OIHW).

  E.g. `np.savez(path, **to_state_dict(variables))` writes a weights file
  `load_weights` reads.
  """
  out = {}
  for path, value in jax.tree_util.tree_flatten_with_path(variables)[0]:
    key, is_kernel = _torch_key(tuple(p.key for p in path))
    value = np.asarray(value, np.float32)
    out[key] = value.transpose(3, 2, 0, 1) if is_kernel else value
  return out


def load_weights(path: str | None, flag: str = "--inception") -> dict:
  """Flax variables of `FIDInceptionV3` from pytorch-fid's weights file (.pth, no PyTorch needed) or an .npz.

  Raises:
    WeightsError: no path, a missing file, or not that network's weights
      (one line naming `flag`, the file, and where the file is commonly found).
  """
  if not path:
    raise WeightsError(missing_weights_message(flag))
  if not os.path.isfile(path):
    raise WeightsError(f"{flag}={path}: no such file; " + missing_weights_message(flag))
  try:
    state_dict = pth.load_state_dict(path)
  except (pth.PthFormatError, OSError) as e:
    raise WeightsError(f"{flag}: {e}") from None
  return variables_from_state_dict(state_dict, f"{flag}={path}")


@functools.partial(jax.jit, static_argnames=("resize",))
def _apply(variables: dict, images: jax.Array, resize: bool) -> jax.Array:
  return FIDInceptionV3(resize=resize).apply(variables, images)


@jax.jit
def _to_input(images: jax.Array) -> jax.Array:
  """[-1, 1] images -> pytorch-fid's input: quantised to 8 bits (as saved PNGs are), in [0, 1], 299x299."""
  quantised = jnp.round(jnp.clip((images + 1.0) * 127.5, 0.0, 255.0)) / 255.0
  return resize_bilinear(quantised)


def feature_fn(variables: dict, batch_size: int = 32) -> Callable[[Iterable[np.ndarray]], np.ndarray]:
  """`extract(batches) -> features [n, 2048] float32` for batches of images [b, S, S, 3] in [-1, 1].

  Images are quantised to 8 bits (the generated images as a PNG would store
  them; real images are 8-bit already), resized to 299x299 per batch, and
  run through the network in chunks of `batch_size` (the last chunk padded),
  so the 299x299 network compiles once whatever the image size and count.
  """

  def extract(batches: Iterable[np.ndarray]) -> np.ndarray:
    out = []
    for images in batches:
      x = _to_input(jnp.asarray(images, jnp.float32))
      for i in range(0, x.shape[0], batch_size):
        chunk = x[i : i + batch_size]
        n = chunk.shape[0]
        if n < batch_size:
          chunk = jnp.pad(chunk, ((0, batch_size - n), (0, 0), (0, 0), (0, 0)))
        out.append(np.asarray(_apply(variables, chunk, resize=False))[:n])
    return np.concatenate(out) if out else np.zeros((0, FEATURES), np.float32)

  return extract
