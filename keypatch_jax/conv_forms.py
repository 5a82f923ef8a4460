"""How the stride-2 layers are computed: exact alternative forms of one convolution (docs/design.md §3.3).

XLA:CPU computes some convolutions far below its matmul rate: any
input-dilated convolution (the gradient of a strided or transposed
convolution), the kernel gradient of most convolutions, and convolutions with
1-3 input or output channels. `DownConv` and `UpConv` keep the parameters of
`nn.Conv` / `nn.ConvTranspose` and compute them in one of these forms:

  DownConv ("downsample"):  native    lax.conv_general_dilated, stride 2 (TPU/GPU)
                            polyphase four stride-1 convolutions
                            im2col    one matmul on the 25-tap patch matrix
  UpConv ("upsample"):      transpose lax.conv_transpose (TPU/GPU)
                            subpixel  four stride-1 convolutions, interleaved
                            subpixel_matmul  the same four, each as one matmul
                                      to all taps followed by shifted sums

All forms give the same outputs and gradients (tests/test_conv_forms.py). The
config's "auto" is resolved per layer by `resolve_downsample` /
`resolve_upsample`, called once by `models.build_models`: native/transpose off
CPU and, on CPU, the form measured fastest there (benchmarks/README.md): im2col
in training, where its matmul kernel gradient wins, polyphase for forward-only
passes (sampling) except on 1-3 input channels; subpixel_matmul for
up-sampling. The matmul forms fall back to polyphase/subpixel when their
intermediate (patch or tap-output matrix) would exceed MATMUL_FORM_MAX_BYTES.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Dtype = Any
DOWNSAMPLE = ("native", "polyphase", "im2col")
UPSAMPLE = ("transpose", "subpixel", "subpixel_matmul")
# Size limit of the matmul forms' intermediates on CPU "auto": the im2col patch
# matrix (B * Ho * Wo * 25 * Cin values) and the sub-pixel tap outputs (B * H *
# W * 9 * Cout), per image kind and patch (the vmapped patch and kind axes
# multiply them). Every layer at S = 64 and 128 with the paper's batch fits.
MATMUL_FORM_MAX_BYTES = 256 * 2**20
IM2COL_FORWARD_MAX_CIN = 4  # forward-only, im2col only for Cin <= this
# PyTorch Conv2d(k=5, stride=2, padding=2): symmetric padding k // 2, not 'SAME' (docs/design.md §3.1).
DOWN_PADDING = ((2, 2), (2, 2))


def resolve_downsample(
  setting: str, patch_bytes: int, in_features: int = 0, train: bool = True, *, backend: str
) -> str:
  """config.model.downsample ("auto" or one of DOWNSAMPLE) -> the form of one layer.

  Args:
    setting: the config value.
    patch_bytes: the size of the layer's im2col patch matrix.
    in_features: the layer's Cin.
    train: whether the layer's gradients are taken (False: a forward-only pass).
    backend: `jax.default_backend()`, read once by the caller.
  Only "auto" reads the sizes and the backend.

  Raises:
    ValueError: an unknown setting, naming config.model.downsample.
  """
  if setting == "auto":
    if backend != "cpu":
      return "native"
    if not train:
      return "im2col" if in_features <= IM2COL_FORWARD_MAX_CIN else "polyphase"
    return "im2col" if patch_bytes <= MATMUL_FORM_MAX_BYTES else "polyphase"
  if setting not in DOWNSAMPLE:
    raise ValueError(f"config.model.downsample must be auto or one of {'/'.join(DOWNSAMPLE)}, got {setting!r}")
  return setting


def resolve_upsample(setting: str, tap_bytes: int, *, backend: str) -> str:
  """config.model.upsample ("auto" or one of UPSAMPLE) -> the form of one layer.

  `tap_bytes` is the size of the layer's sub-pixel tap-output matrix; only
  "auto" reads it and `backend`.

  Raises:
    ValueError: an unknown setting, naming config.model.upsample.
  """
  if setting == "auto":
    if backend != "cpu":
      return "transpose"
    return "subpixel_matmul" if tap_bytes <= MATMUL_FORM_MAX_BYTES else "subpixel"
  if setting not in UPSAMPLE:
    raise ValueError(f"config.model.upsample must be auto or one of {'/'.join(UPSAMPLE)}, got {setting!r}")
  return setting


@dataclasses.dataclass(frozen=True)
class ConvForms:
  """The form every stride-2 layer is computed in (names of conv_forms.DOWNSAMPLE / UPSAMPLE).

  down: the L DownConvs of the part encoder and of D, level 0 first (the two
    stacks have the same shapes); mask_up, image_up: the L UpConvs of each
    decoder, coarse to fine.
  """

  down: tuple[str, ...]
  mask_up: tuple[str, ...]
  image_up: tuple[str, ...]

  @classmethod
  def uniform(cls, upsample: str, downsample: str, levels: int) -> ConvForms:
    """One form for every layer of L = `levels`; "auto" is resolved per layer by `plan_forms` instead.

    Raises:
      ValueError: a setting is "auto" (build the models with `models.build_models`).
    """
    if "auto" in (upsample, downsample):
      raise ValueError("conv form 'auto' is resolved per layer by models.build_models; pass forms= or a form")
    return cls((downsample,) * levels, (upsample,) * levels, (upsample,) * levels)


def plan_forms(
  upsample: str,
  downsample: str,
  *,
  image_size: int,
  widths: Sequence[int],
  batch: int,
  train: bool,
  itemsize: int,
  backend: str,
) -> ConvForms:
  """Resolves config.model.upsample/downsample to one form per layer of the networks (`resolve_*`).

  Args:
    upsample, downsample: the config settings ("auto" or a form).
    image_size, widths: S and the L encoder level widths (`models.level_width`), the layers' shapes.
    batch: the images one device's call of a network sees (per image kind and patch).
    train: whether the networks' gradients are taken (the train step).
    itemsize: bytes per value of the compute dtype.
    backend: `jax.default_backend()`.
  """
  levels = len(widths)
  down = []
  for level in range(levels):
    size, cin = image_size >> level, 3 if level == 0 else widths[level - 1]
    patch_bytes = batch * (size // 2) ** 2 * 25 * cin * itemsize  # [B, H/2, W/2, 25 * Cin]
    down.append(resolve_downsample(downsample, patch_bytes, cin, train, backend=backend))

  def up(out_features: int) -> tuple[str, ...]:
    forms = []
    for i in range(1, levels + 1):  # UpConv i reads 2**(i+1) x 2**(i+1) maps
      size, cout = 2 ** (i + 1), widths[levels - 1 - i] if i < levels else out_features
      tap_bytes = batch * size * size * 9 * cout * itemsize  # [B, H, W, 9 * Cout]
      forms.append(resolve_upsample(upsample, tap_bytes, backend=backend))
    return tuple(forms)

  return ConvForms(tuple(down), up(1), up(3))


def check_forms(upsample: str, downsample: str) -> None:
  """Raises ValueError naming config.model.upsample/downsample if either is unknown."""
  resolve_upsample(upsample, 0, backend="cpu")
  resolve_downsample(downsample, 0, backend="cpu")


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
  once; on XLA:CPU it beats the convolution on the 1- and 3-channel last
  layers and matches or beats it on the wider sub-pixel layers (the per-layer
  table in benchmarks/README.md). Same result as `lax.conv_general_dilated`.

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
  regular-convolution gradients, which XLA:CPU computes far faster than a
  transposed convolution's (benchmarks/README.md). Zero-padding the
  sub-kernels to 3x3 and running one convolution to 4*C channels gives the
  same result but does 36 taps instead of 25, and is slower.

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
  """5x5 stride-2 transposed convolution that doubles H and W (docs/design.md §3.1 padding).

  The parameters are exactly those of `nn.ConvTranspose(features, (5, 5), (2, 2),
  padding=UP_PADDING)`; `upsample` selects how it is computed (identical
  results, see UPSAMPLE): "transpose" (`lax.conv_transpose`, best on
  TPU/GPU), "subpixel" or "subpixel_matmul". `models.build_models` resolves
  the config's "auto" to one of them per layer.

  x [B, H, W, Cin] -> [B, 2H, 2W, features].
  """

  features: int
  kernel_size: int = 5
  upsample: str = "transpose"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.upsample == "transpose":
      y = jax.lax.conv_transpose(x, kernel, (2, 2), UP_PADDING, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    elif self.upsample in ("subpixel", "subpixel_matmul"):
      conv = lax_conv if self.upsample == "subpixel" else matmul_shift_conv
      y = subpixel_conv_transpose(x, kernel, UP_PADDING, conv)
    else:
      raise ValueError(f"UpConv form must be one of {UPSAMPLE}, got {self.upsample!r}")
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
  transposed one (the per-layer table in benchmarks/README.md).

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
  """5x5 stride-2 convolution with padding 2 that halves H and W (docs/design.md §3.1).

  The parameters are exactly those of `nn.Conv(features, (5, 5), (2, 2),
  padding=DOWN_PADDING)`; `downsample` selects how it is computed (identical
  results, see DOWNSAMPLE): "native" (best on TPU/GPU), "polyphase" or
  "im2col". `models.build_models` resolves the config's "auto" to one of them
  per layer.

  x [B, H, W, Cin] -> [B, H / 2, W / 2, features].
  """

  features: int
  downsample: str = "native"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (5, 5, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.downsample == "polyphase":
      y = polyphase_conv(x, kernel)
    elif self.downsample == "im2col":
      y = im2col_conv(x, kernel, (2, 2), DOWN_PADDING)
    elif self.downsample == "native":
      y = lax_conv(x, kernel, (2, 2), DOWN_PADDING)
    else:
      raise ValueError(f"DownConv form must be one of {DOWNSAMPLE}, got {self.downsample!r}")
    return y + bias
