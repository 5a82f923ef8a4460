"""KeyPatchGAN networks in Flax linen (SPEC §2, the official code's "unet").

Shapes use B = batch, N = number of patches, S = image size (64, 128, 256),
L = log2(S) - 2 encoder levels. Layout is NHWC; images are in [-1, 1].

Generator:   patches [B, N, S, S, 3], z [B, z_dim] -> mask [B, S, S, 1] in
             [0, 1], image [B, S, S, 3] in [-1, 1].
Discriminator: images [B, S, S, 3] -> logits [B].

The part encoder is one `PartEncoder` lifted with `nn.vmap` over the patch
axis (weights shared), and every level is summed over the patches, which makes
the generator invariant to the order of the patches. Its BatchNorm pools the
statistics over the batch and all N patches through the vmap's axis name
(SPEC §2 ⚑ (a), the one deliberate difference from the official code, which
keeps per-slot batch statistics and so loses order invariance in eval mode).

Initialisation: Flax defaults (LeCun-normal kernels, zero biases). The
official code uses PyTorch's defaults; neither uses the DCGAN N(0, 0.02) init.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any
PATCH_AXIS = "patches"
LEAK = 0.2


def num_levels(image_size: int) -> int:
  """L = log2(S) - 2: the number of stride-2 levels (64 -> 4, 128 -> 5, 256 -> 6)."""
  levels = int(np.log2(image_size)) - 2
  if image_size < 16 or 2 ** (levels + 2) != image_size:
    raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
  return levels


def level_width(level: int, conv_dim: int) -> int:
  """Channels at encoder level `level` (0-based): conv_dim * 2**min(3, l), at most 512."""
  return min(conv_dim * 2 ** min(3, level), 512)


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch-style symmetric padding k // 2 on both sides (not 'SAME', see SPEC §2)."""
  return ((k // 2, k // 2), (k // 2, k // 2))


def _batch_norm(train: bool, axis_name: Any, dtype: Dtype, param_dtype: Dtype):
  """The networks' BatchNorm (PyTorch's momentum 0.1 and eps 1e-5), as a partial taking `name`."""
  return functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=axis_name,
    dtype=dtype,
    param_dtype=param_dtype,
  )


# Stride-2 layers. XLA:CPU computes some convolutions far below its matmul
# rate: any input-dilated convolution (the gradient of a strided or transposed
# convolution), the kernel gradient of most convolutions, and convolutions with
# 1-3 input or output channels. The layers below keep the parameters of
# `nn.Conv` / `nn.ConvTranspose` and choose how they are computed, per layer:
#
#   DownConv ("downsample"):  native    lax.conv_general_dilated, stride 2 (TPU/GPU)
#                             polyphase four stride-1 convolutions
#                             im2col    one matmul on the 25-tap patch matrix
#   UpConv ("upsample"):      transpose lax.conv_transpose (TPU/GPU)
#                             subpixel  four stride-1 convolutions, interleaved
#                             subpixel_matmul  the same four, each as one matmul
#                                       to all taps followed by shifted sums
#
# All forms give the same outputs and gradients (tests/test_models.py). "auto"
# picks native/transpose off CPU and, on CPU, per layer, the form measured
# fastest there (benchmarks/model_bench.py --layers): im2col in training, where
# its matmul kernel gradient wins, polyphase for forward-only passes (train=False,
# e.g. sampling) except on 1-3 input channels; subpixel_matmul for up-sampling.
# The matmul forms fall back to polyphase/subpixel when their intermediate
# (patch or tap-output matrix) would exceed MATMUL_FORM_MAX_BYTES.
DOWNSAMPLE = ("native", "polyphase", "im2col")
UPSAMPLE = ("transpose", "subpixel", "subpixel_matmul")
# Size limit of the matmul forms' intermediates on CPU "auto": the im2col patch
# matrix (B * Ho * Wo * 25 * Cin values) and the sub-pixel tap outputs (B * H *
# W * 9 * Cout), as the module sees them (the vmapped patch and kind axes
# multiply them). Every layer at S = 64 and 128 with the paper's batch fits.
MATMUL_FORM_MAX_BYTES = 256 * 2**20
IM2COL_FORWARD_MAX_CIN = 4  # forward-only, im2col only for Cin <= this


def resolve_downsample(setting: str, patch_bytes: int, in_features: int = 0, train: bool = True) -> str:
  """config.model.downsample ("auto" or one of DOWNSAMPLE) -> the form for one layer.

  `patch_bytes` is the size of the layer's im2col patch matrix, `in_features`
  its Cin; `train` False marks a forward-only pass. Only "auto" reads them.
  """
  if setting == "auto":
    if jax.default_backend() != "cpu":
      return "native"
    if not train:
      return "im2col" if in_features <= IM2COL_FORWARD_MAX_CIN else "polyphase"
    return "im2col" if patch_bytes <= MATMUL_FORM_MAX_BYTES else "polyphase"
  if setting not in DOWNSAMPLE:
    raise ValueError(f"config.model.downsample must be auto or one of {'/'.join(DOWNSAMPLE)}, got {setting!r}")
  return setting


def resolve_upsample(setting: str, tap_bytes: int) -> str:
  """config.model.upsample ("auto" or one of UPSAMPLE) -> the form for one layer.

  `tap_bytes` is the size of the layer's largest sub-pixel tap-output matrix.
  """
  if setting == "auto":
    if jax.default_backend() != "cpu":
      return "transpose"
    return "subpixel_matmul" if tap_bytes <= MATMUL_FORM_MAX_BYTES else "subpixel"
  if setting not in UPSAMPLE:
    raise ValueError(f"config.model.upsample must be auto or one of {'/'.join(UPSAMPLE)}, got {setting!r}")
  return setting


def _conv_out(size: int, lo: int, hi: int, k: int, stride: int) -> int:
  return (size + lo + hi - k) // stride + 1


def _windows(x: jax.Array, kernel_hw: tuple[int, int], strides, padding) -> list[jax.Array]:
  """The kh * kw strided windows of the padded x, each [B, Ho, Wo, ...] (row-major taps)."""
  (kh, kw), (sy, sx), ((ly, hy), (lx, hx)) = kernel_hw, strides, padding
  ho, wo = _conv_out(x.shape[1], ly, hy, kh, sy), _conv_out(x.shape[2], lx, hx, kw, sx)
  xp = jnp.pad(x, ((0, 0), (ly, hy), (lx, hx)) + ((0, 0),) * (x.ndim - 3))
  return [
    xp[:, ky : ky + sy * (ho - 1) + 1 : sy, kx : kx + sx * (wo - 1) + 1 : sx] for ky in range(kh) for kx in range(kw)
  ]


def im2col_conv(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding=((0, 0), (0, 0))) -> jax.Array:
  """A convolution as one matmul: [B*Ho*Wo, kh*kw*Cin] patches @ [kh*kw*Cin, Cout].

  Same result as `lax.conv_general_dilated(x, kernel, strides, padding)` in
  NHWC/HWIO. Forward, input and kernel gradients are all dense matmuls plus
  copies of the patch matrix, which is small when Cin is (the first layer).

  x [B, H, W, Cin], kernel [kh, kw, Cin, Cout] -> [B, Ho, Wo, Cout].
  """
  kh, kw, cin, cout = kernel.shape
  cols = _windows(x, (kh, kw), strides, padding)
  b, ho, wo, _ = cols[0].shape
  patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
  return jnp.dot(patches.reshape(-1, kh * kw * cin), kernel.reshape(kh * kw * cin, cout)).reshape(b, ho, wo, cout)


def matmul_shift_conv(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding=((0, 0), (0, 0))) -> jax.Array:
  """A convolution as one matmul to every tap's output, then a sum of shifted slices.

  z = x @ [Cin, kh*kw*Cout] holds each tap's contribution at each input
  pixel; the output sums tap (ky, kx)'s plane shifted by (ky, kx). Reads x
  once; on XLA:CPU it is 2.6x faster than the convolution for the 1- and
  3-channel last layers and on par or faster for the wider sub-pixel layers
  (benchmarks/model_bench.py --layers). Same result as `lax.conv_general_dilated`.

  x [B, H, W, Cin], kernel [kh, kw, Cin, Cout] -> [B, Ho, Wo, Cout].
  """
  kh, kw, cin, cout = kernel.shape
  b, h, w, _ = x.shape
  z = jnp.dot(x.reshape(-1, cin), kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout))
  planes = _windows(z.reshape(b, h, w, kh * kw, cout), (kh, kw), strides, padding)
  return sum(plane[..., tap, :] for tap, plane in enumerate(planes))


def lax_conv(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding=((0, 0), (0, 0))) -> jax.Array:
  """`lax.conv_general_dilated` in NHWC/HWIO (x [B, H, W, Cin] -> [B, Ho, Wo, Cout])."""
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


# PyTorch ConvTranspose2d(k=5, stride=2, padding=2, output_padding=1), written as
# padding of the dilated input for `lax.conv_transpose`: (k - 1 - p, k - 1 - p + op).
UP_PADDING = ((2, 3), (2, 3))


def _parity_taps(kernel_size: int, pad_lo: int) -> list[tuple[list[int], int, int]]:
  """Per output parity, the kernel taps of a stride-2 transposed convolution.

  Output pixel o = 2p + r reads the dilated input at o + k - pad_lo, which is
  input pixel p + (r + k - pad_lo) / 2 when that is an integer, so parity r
  uses only the taps k of that parity (3 and 2 of a 5-tap kernel).

  Returns:
    for r = 0, 1: (the taps k in input-offset order, low padding, high padding)
    of the stride-1 convolution that computes the outputs of parity r.
  """
  out = []
  for r in (0, 1):
    taps = sorted(((r + k - pad_lo) // 2, k) for k in range(kernel_size) if (r + k - pad_lo) % 2 == 0)
    out.append(([k for _, k in taps], -taps[0][0], taps[-1][0]))
  return out


def subpixel_conv_transpose(x: jax.Array, kernel: jax.Array, padding=UP_PADDING, conv=lax_conv) -> jax.Array:
  """Stride-2 `lax.conv_transpose` computed with regular stride-1 convolutions.

  The exact sub-pixel decomposition: the kernel is split by output parity
  (row, column) into four sub-kernels with only their own taps (3x3, 3x2,
  2x3, 2x2 for 5x5), each runs as a stride-1 convolution on the undilated
  input, and the four results are interleaved (depth-to-space). Same
  parameters and outputs as the native form, 25 taps in all like it, and only
  regular-convolution gradients, which XLA:CPU computes 20-50x faster than a
  transposed convolution's (STACK.md). Zero-padding the sub-kernels to 3x3 and
  running one convolution to 4*C channels gives the same result but does 36
  taps instead of 25; measured 1.6x slower forward+backward on CPU.

  Args:
    x: [B, H, W, Cin].
    kernel: [k, k, Cin, Cout], the parameter `nn.ConvTranspose` holds
      (`transpose_kernel=False`).
    padding: ((lo, hi), (lo, hi)) of the dilated input, as for
      `lax.conv_transpose`; it must make the output exactly twice the input.
    conv: computes each stride-1 convolution, `conv(x, kernel, strides,
      padding)`: `lax_conv` ("subpixel") or `matmul_shift_conv`
      ("subpixel_matmul").

  Returns:
    [B, 2H, 2W, Cout].
  """
  k = kernel.shape[0]
  for (lo, hi), size in zip(padding, x.shape[1:3], strict=True):
    if 2 * size - 1 + lo + hi - k + 1 != 2 * size:
      raise ValueError(f"sub-pixel form needs an output of exactly 2x the input, padding {padding}")
  rows = []
  for ky, lo_y, hi_y in _parity_taps(k, padding[0][0]):
    cols = []
    for kx, lo_x, hi_x in _parity_taps(k, padding[1][0]):
      sub = kernel[np.array(ky)][:, np.array(kx)]
      cols.append(conv(x, sub, (1, 1), ((lo_y, hi_y), (lo_x, hi_x))))
    rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2 (column parity), C]
  y = jnp.stack(rows, axis=2)  # [B, H, 2 (row parity), W, 2, C]
  b, h, _, w, _, c = y.shape
  return y.reshape(b, 2 * h, 2 * w, c)


class UpConv(nn.Module):
  """5x5 stride-2 transposed convolution that doubles H and W (SPEC §2 padding).

  The parameters are exactly those of `nn.ConvTranspose(features, (5, 5), (2, 2),
  padding=UP_PADDING)`; `upsample` selects how it is computed (identical
  results, see UPSAMPLE): "transpose" (`lax.conv_transpose`, best on
  TPU/GPU), "subpixel", "subpixel_matmul", or "auto".

  x [B, H, W, Cin] -> [B, 2H, 2W, features].
  """

  features: int
  kernel_size: int = 5
  upsample: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    tap_bytes = x.size // x.shape[-1] * 9 * self.features * x.dtype.itemsize  # [B, H, W, 9 * Cout]
    form = resolve_upsample(self.upsample, tap_bytes)
    if form == "transpose":
      y = jax.lax.conv_transpose(x, kernel, (2, 2), UP_PADDING, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    else:
      y = subpixel_conv_transpose(x, kernel, UP_PADDING, lax_conv if form == "subpixel" else matmul_shift_conv)
    return y + bias


def _phase_taps(kernel_size: int, pad_lo: int) -> list[tuple[int, list[int], int, int]]:
  """Per input phase, the kernel taps of a stride-2 convolution.

  Output o reads input i = 2o + k - pad_lo; for i = 2j + p (phase p) that is
  j = o + (k - pad_lo - p) / 2, so phase p meets only the taps k of one parity.

  Returns:
    for p = 0, 1: (p, the taps in offset order, low padding, high padding) of the
    stride-1 convolution of the phase-p input samples.
  """
  out = []
  for p in (0, 1):
    taps = sorted(((k - pad_lo - p) // 2, k) for k in range(kernel_size) if (k - pad_lo - p) % 2 == 0)
    out.append((p, [k for _, k in taps], -taps[0][0], taps[-1][0]))
  return out


def polyphase_conv(x: jax.Array, kernel: jax.Array, pad_lo: int = 2) -> jax.Array:
  """A 5x5 stride-2 convolution (padding 2) as a sum of four stride-1 convolutions.

  The input is split into its four polyphase components x[py::2, px::2] and
  each is convolved with the kernel taps of its parity (3x3, 3x2, 2x3, 2x2);
  the sum is exactly the strided convolution, with the same 25 taps. Its
  gradients are stride-1 convolutions: on XLA:CPU the input gradient of a
  native stride-2 convolution is an input-dilated convolution as slow as a
  transposed one (measured 15x slower at 8x8, 256 -> 512 channels).

  Args:
    x: [B, H, W, Cin] with even H, W.
    kernel: [k, k, Cin, Cout], the parameter `nn.Conv` holds.
    pad_lo: low padding of the native convolution (high padding k - 1 - pad_lo
      for an output of exactly H / 2).

  Returns:
    [B, H / 2, W / 2, Cout].
  """
  if x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f"polyphase convolution needs even height and width, got {x.shape}")
  y = None
  for py, ky, lo_y, hi_y in _phase_taps(kernel.shape[0], pad_lo):
    for px, kx, lo_x, hi_x in _phase_taps(kernel.shape[1], pad_lo):
      part = lax_conv(x[:, py::2, px::2], kernel[np.array(ky)][:, np.array(kx)], (1, 1), ((lo_y, hi_y), (lo_x, hi_x)))
      y = part if y is None else y + part
  return y


class DownConv(nn.Module):
  """5x5 stride-2 convolution with padding 2 that halves H and W (SPEC §2).

  The parameters are exactly those of `nn.Conv(features, (5, 5), (2, 2),
  padding=((2, 2), (2, 2)))`; `downsample` selects how it is computed
  (identical results, see DOWNSAMPLE): "native" (best on TPU/GPU),
  "polyphase", "im2col", or "auto".

  x [B, H, W, Cin] -> [B, H / 2, W / 2, features]. `train` (default True)
  only tells "auto" whether the pass will be differentiated (see DOWNSAMPLE).
  """

  features: int
  downsample: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (5, 5, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    patch_bytes = x.size // 4 * 25 * x.dtype.itemsize  # [B, H/2, W/2, 25 * Cin]
    form = resolve_downsample(self.downsample, patch_bytes, x.shape[-1], train)
    if form == "polyphase":
      y = polyphase_conv(x, kernel)
    elif form == "im2col":
      y = im2col_conv(x, kernel, (2, 2), _pad(5))
    else:
      y = lax_conv(x, kernel, (2, 2), _pad(5))
    return y + bias


class PartEncoder(nn.Module):
  """Encodes one patch (SPEC §2). Shared by all N patches via `nn.vmap`.

  x [B, S, S, 3] -> L + 1 maps: level l is [B, S / 2**(l+1), same, width(l)]
  for l < L, and the embedding [B, 1, 1, embed_dim].
  """

  image_size: int
  conv_dim: int = 64
  embed_dim: int = 128
  bn_axis_name: Any = None
  downsample: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
    conv = functools.partial(DownConv, downsample=self.downsample, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)
    feats = []
    for level in range(num_levels(self.image_size)):
      x = conv(level_width(level, self.conv_dim), name=f"conv{level}")(x, train)
      if level > 0:
        x = norm(name=f"bn{level}")(x)
      x = nn.leaky_relu(x, LEAK)
      feats.append(x)
    x = nn.Conv(
      self.embed_dim,
      (4, 4),
      padding="VALID",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="embed",
    )(x)
    feats.append(nn.leaky_relu(x, LEAK))
    return feats


class UNetDecoder(nn.Module):
  """U-net decoder from the 1x1 embedding up to S x S (SPEC §2).

  Level order is coarse to fine: a 4x4 VALID transposed conv to 4x4, then one
  `UpConv` per level, each followed by BatchNorm + ReLU and a concat of
  `skips[i]` ([decoder, skip] channel order); the last `UpConv` gives
  `out_features` channels without normalisation.

  Args of __call__:
    x: [B, 1, 1, C] embedding (with z concatenated for the image decoder).
    skips: L maps, coarse to fine: [B, 4, 4, *], [B, 8, 8, *], ...,
      [B, S/2, S/2, *].

  Returns:
    (output [B, S, S, out_features] before the final activation,
     the L concatenated features, coarse to fine).
  """

  image_size: int
  out_features: int
  conv_dim: int = 64
  upsample: str = "auto"
  bn_axis_name: Any = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skips: Sequence[jax.Array], train: bool):
    levels = num_levels(self.image_size)
    if len(skips) != levels:
      raise ValueError(f"expected {levels} skip maps, got {len(skips)}")
    norm = _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)
    up = functools.partial(UpConv, upsample=self.upsample, dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.ConvTranspose(
      level_width(levels - 1, self.conv_dim),
      (4, 4),
      padding="VALID",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="up0",
    )(x)
    feats = []
    for i, skip in enumerate(skips):
      if i > 0:
        x = up(level_width(levels - 1 - i, self.conv_dim), name=f"up{i}")(x)
      x = nn.relu(norm(name=f"bn{i}")(x))
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      feats.append(x)
    out = up(self.out_features, name=f"up{levels}")(x)
    return out, feats


class Generator(nn.Module):
  """Mask prediction + doubled U-net image generation from N unordered patches.

  patches [B, N, S, S, 3] in [-1, 1], z [B, z_dim] ->
    (mask [B, S, S, 1] in [0, 1], image [B, S, S, 3] in [-1, 1]).

  Any N >= 1 and S in {64, 128, 256, ...} work with the same code. With
  `use_mask_net=False` (ablation "no mask network") the mask decoder is absent,
  the image decoder sees only the encoder skips, and `mask` is None.
  """

  image_size: int = 64
  conv_dim: int = 64
  embed_dim: int = 128
  z_dim: int = 128
  upsample: str = "auto"  # UpConv form, see UPSAMPLE
  downsample: str = "auto"  # DownConv form, see DOWNSAMPLE
  use_mask_net: bool = True
  bn_axis_name: str | None = None  # device axis for synchronised BatchNorm
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    bn_axes = (PATCH_AXIS,) if self.bn_axis_name is None else (PATCH_AXIS, self.bn_axis_name)
    encoders = nn.vmap(
      PartEncoder,
      variable_axes={"params": None, "batch_stats": None},
      split_rngs={"params": False},
      in_axes=(1, None),
      out_axes=1,
      axis_name=PATCH_AXIS,
    )
    self.encoder = encoders(
      self.image_size, self.conv_dim, self.embed_dim, bn_axes, self.downsample, self.dtype, self.param_dtype
    )
    decoder = functools.partial(
      UNetDecoder,
      self.image_size,
      conv_dim=self.conv_dim,
      upsample=self.upsample,
      bn_axis_name=self.bn_axis_name,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    if self.use_mask_net:
      self.mask_decoder = decoder(out_features=1)
    self.image_decoder = decoder(out_features=3)

  def encode(self, patches: jax.Array, train: bool) -> list[jax.Array]:
    """patches [B, N, S, S, 3] -> L + 1 maps summed over the N patches."""
    if patches.ndim != 5:
      raise ValueError(f"patches must be [B, N, S, S, 3], got shape {patches.shape}")
    return [f.sum(axis=1) for f in self.encoder(patches, train)]

  def __call__(self, patches: jax.Array, z: jax.Array, *, train: bool):
    feats = self.encode(patches, train)
    embedding, skips = feats[-1], feats[-2::-1]  # skips coarse to fine
    mask = None
    if self.use_mask_net:
      mask_logits, skips = self.mask_decoder(embedding, skips, train)
      mask = nn.sigmoid(mask_logits.astype(jnp.float32))
    z = z.astype(embedding.dtype)[:, None, None, :]
    image, _ = self.image_decoder(jnp.concatenate([embedding, z], axis=-1), skips, train)
    return mask, jnp.tanh(image.astype(jnp.float32))


class Discriminator(nn.Module):
  """DCGAN discriminator (SPEC §2): images [B, S, S, 3] -> logits [B]."""

  image_size: int = 64
  conv_dim: int = 64
  bn_axis_name: str | None = None
  downsample: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(DownConv, downsample=self.downsample, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    for level in range(num_levels(self.image_size)):
      x = conv(level_width(level, self.conv_dim), name=f"conv{level}")(x, train)
      if level > 0:
        x = _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)(name=f"bn{level}")(x)
      x = nn.leaky_relu(x, LEAK)
    x = nn.Conv(1, (4, 4), padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype, name="logit")(x)
    return x.reshape(x.shape[0]).astype(jnp.float32)


class KindsDiscriminator(nn.Module):
  """The discriminator applied to K kinds of images (real, G, composites) at once.

  images [K, B, S, S, 3] -> logits [K, B]. One `Discriminator` lifted with
  `nn.vmap` over the kinds: parameters shared, BatchNorm statistics per kind
  (`batch_stats` mapped over axis 0), which is what the official code does by
  calling D once per kind, computed as one batched call (SPEC §2 ⚑).
  """

  image_size: int = 64
  conv_dim: int = 64
  bn_axis_name: str | None = None
  downsample: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    vmapped = nn.vmap(
      _PositionalDiscriminator,
      variable_axes={"params": None, "batch_stats": 0},
      split_rngs={"params": False},
      in_axes=(0, None),
      out_axes=0,
    )
    disc = vmapped(
      self.image_size, self.conv_dim, self.bn_axis_name, self.downsample, self.dtype, self.param_dtype, name="disc"
    )
    return disc(images, train)


class _PositionalDiscriminator(Discriminator):
  """`Discriminator` with a positional `train` flag (`nn.vmap` drops keywords)."""

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:  # type: ignore[override]
    return super().__call__(x, train=train)


def check_forms(upsample: str, downsample: str) -> None:
  """Raises ValueError naming config.model.upsample/downsample if either is unknown."""
  resolve_upsample(upsample, 0)
  resolve_downsample(downsample, 0)


def build_models(config, *, axis_name: str | None = None) -> tuple[Generator, KindsDiscriminator]:
  """Builds (Generator, KindsDiscriminator) from a config.

  Reads `config.image_size` and `config.model.{conv_dim, embed_dim, z_dim,
  upsample, downsample, dtype, param_dtype, sync_batchnorm, use_mask_net}`. `axis_name` is
  the device axis of the surrounding `pmap`; BatchNorm statistics are averaged
  over it when `config.model.sync_batchnorm` is set.
  """
  m = config.model
  check_forms(m.get("upsample", "auto"), m.get("downsample", "auto"))
  bn_axis = axis_name if m.get("sync_batchnorm", True) else None
  common = dict(
    image_size=config.image_size,
    conv_dim=m.conv_dim,
    bn_axis_name=bn_axis,
    downsample=m.get("downsample", "auto"),
    dtype=jnp.dtype(m.get("dtype", "float32")),
    param_dtype=jnp.dtype(m.get("param_dtype", "float32")),
  )
  generator = Generator(
    embed_dim=m.embed_dim,
    z_dim=m.z_dim,
    upsample=m.get("upsample", "auto"),
    use_mask_net=m.get("use_mask_net", True),
    **common,
  )
  return generator, KindsDiscriminator(**common)


def count_params(params) -> int:
  """Total number of scalars in a parameter tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
