"""Tests of keypatch_jax.conv_forms: every form of the stride-2 layers equals the native one
(values and gradients), and "auto" resolves per layer (docs/design.md §3.3)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from keypatch_jax import conv_forms


def _torch_conv_transpose_reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray):
  """PyTorch ConvTranspose2d(k=5, s=2, p=2, output_padding=1) as a numpy scatter.

  `kernel` is the flax [k, k, Cin, Cout] parameter; PyTorch's weight
  [Cin, Cout, k, k] is the same kernel spatially flipped.
  """
  k, stride, pad, out_pad = kernel.shape[0], 2, 2, 1
  weight = kernel[::-1, ::-1].transpose(2, 3, 0, 1)  # [Cin, Cout, k, k]
  b, h, w, _ = x.shape
  full = np.zeros((b, (h - 1) * stride + k + out_pad, (w - 1) * stride + k + out_pad, weight.shape[1]))
  for i in range(h):
    for j in range(w):
      contrib = np.einsum("bc,cokl->bklo", x[:, i, j], weight)
      full[:, i * stride : i * stride + k, j * stride : j * stride + k] += contrib
  out_h, out_w = (h - 1) * stride - 2 * pad + k + out_pad, (w - 1) * stride - 2 * pad + k + out_pad
  return full[:, pad : pad + out_h, pad : pad + out_w] + bias


@pytest.mark.parametrize(
  "shape", [(2, 4, 4, 3), *(pytest.param(s, marks=pytest.mark.slow) for s in [(1, 5, 3, 2), (3, 1, 1, 4)])]
)
def test_upconv_matches_conv_transpose_values_and_gradients(shape):
  """Every UpConv form == nn.ConvTranspose == a PyTorch-semantics reference."""
  features = 6
  kx, kp = jax.random.split(jax.random.key(sum(shape)))
  x = jax.random.normal(kx, shape)
  reference = nn.ConvTranspose(features, (5, 5), (2, 2), padding=((2, 3), (2, 3)))
  params = reference.init(kp, x)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(kp, p.shape), params)  # bias != 0

  def loss(module, params, x):
    y = module.apply(params, x)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), y

  def grad(module, params, x):
    return jax.jit(jax.grad(functools.partial(loss, module), argnums=(0, 1), has_aux=True))(params, x)

  (ref_gp, ref_gx), ref_y = grad(reference, params, x)
  assert ref_y.shape == (shape[0], 2 * shape[1], 2 * shape[2], features)
  torch_y = _torch_conv_transpose_reference(
    np.asarray(x, np.float64),
    np.asarray(params["params"]["kernel"], np.float64),
    np.asarray(params["params"]["bias"], np.float64),
  )
  np.testing.assert_allclose(ref_y, torch_y, rtol=1e-5, atol=1e-5)
  for form in conv_forms.UPSAMPLE:
    (gp, gx), y = grad(conv_forms.UpConv(features, upsample=form), params, x)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(ref_gp), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_subpixel_rejects_non_doubling_padding():
  x, kernel = jnp.zeros((1, 4, 4, 2)), jnp.zeros((5, 5, 2, 3))
  with pytest.raises(ValueError, match="2x"):
    conv_forms.subpixel_conv_transpose(x, kernel, ((2, 2), (2, 2)))


@pytest.mark.parametrize(
  "shape", [(2, 8, 8, 3), *(pytest.param(s, marks=pytest.mark.slow) for s in [(1, 4, 6, 2), (3, 2, 2, 4)])]
)
def test_downconv_matches_conv_values_and_gradients(shape):
  """Every DownConv form == nn.Conv(5x5, stride 2, padding 2): values and gradients."""
  features = 5
  kx, kp = jax.random.split(jax.random.key(sum(shape) + 7))
  x = jax.random.normal(kx, shape)
  reference = nn.Conv(features, (5, 5), (2, 2), padding=((2, 2), (2, 2)))
  params = reference.init(kp, x)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(kp, p.shape), params)

  def loss(module, params, x):
    y = module.apply(params, x)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), y

  def grad(module):
    return jax.jit(jax.grad(functools.partial(loss, module), argnums=(0, 1), has_aux=True))(params, x)

  (ref_gp, ref_gx), ref_y = grad(reference)
  assert ref_y.shape == (shape[0], shape[1] // 2, shape[2] // 2, features)
  for form in conv_forms.DOWNSAMPLE:
    (gp, gx), y = grad(conv_forms.DownConv(features, downsample=form))
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(ref_gp), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_polyphase_rejects_odd_sizes():
  with pytest.raises(ValueError, match="even"):
    conv_forms.polyphase_conv(jnp.zeros((1, 5, 4, 2)), jnp.zeros((5, 5, 2, 3)))


def test_resolve_forms():
  """ "auto" picks per layer on CPU; explicit forms pass through; unknown ones name the config field."""
  resolve_downsample = functools.partial(conv_forms.resolve_downsample, backend="cpu")
  resolve_upsample = functools.partial(conv_forms.resolve_upsample, backend="cpu")
  assert resolve_downsample("auto", conv_forms.MATMUL_FORM_MAX_BYTES) == "im2col"
  assert resolve_downsample("auto", conv_forms.MATMUL_FORM_MAX_BYTES + 1) == "polyphase"
  assert resolve_downsample("auto", 1, in_features=3, train=False) == "im2col"
  assert resolve_downsample("auto", 1, in_features=64, train=False) == "polyphase"
  assert resolve_upsample("auto", conv_forms.MATMUL_FORM_MAX_BYTES) == "subpixel_matmul"
  assert resolve_upsample("auto", conv_forms.MATMUL_FORM_MAX_BYTES + 1) == "subpixel"
  assert resolve_downsample("native", 3) == "native"
  assert resolve_upsample("transpose", 1) == "transpose"
  with pytest.raises(ValueError, match="config.model.upsample"):
    resolve_upsample("bilinear", 4)
  with pytest.raises(ValueError, match="config.model.downsample"):
    conv_forms.check_forms("auto", "strided")


@pytest.mark.parametrize("conv", [conv_forms.im2col_conv, conv_forms.matmul_shift_conv])
@pytest.mark.parametrize(
  "kernel_hw,strides,padding",
  [
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((3, 2), (1, 1), ((1, 1), (0, 1))),
    ((5, 5), (2, 2), ((2, 2), (2, 2))),
    ((4, 4), (1, 1), ((0, 0), (0, 0))),
  ],
)
def test_matmul_convs_equal_lax_conv(conv, kernel_hw, strides, padding):
  """im2col and matmul-then-shift convolutions == lax.conv_general_dilated (values and both gradients)."""
  kx, kk = jax.random.split(jax.random.key(11))
  x = jax.random.normal(kx, (2, 8, 6, 5))
  kernel = jax.random.normal(kk, (*kernel_hw, 5, 3))

  def loss(f, x, kernel):
    y = f(x, kernel, strides, padding)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), y

  def grad(f):
    return jax.jit(jax.grad(functools.partial(loss, f), argnums=(0, 1), has_aux=True))(x, kernel)

  (ref_gx, ref_gk), ref_y = grad(conv_forms.lax_conv)
  (gx, gk), y = grad(conv)
  for a, b in ((y, ref_y), (gx, ref_gx), (gk, ref_gk)):  # float32 sums in another order
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))


def test_auto_is_native_off_cpu():
  """On TPU/GPU "auto" is the native form whatever the sizes."""
  for backend in ("gpu", "tpu"):
    assert conv_forms.resolve_downsample("auto", 1, 3, True, backend=backend) == "native"
    assert conv_forms.resolve_downsample("auto", 1, 64, False, backend=backend) == "native"
    assert conv_forms.resolve_upsample("auto", 1, backend=backend) == "transpose"


@pytest.mark.parametrize("form", ["auto", "strided"])
def test_modules_take_concrete_forms_only(form):
  """A layer given "auto" or an unknown form says so instead of picking one while tracing."""
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError, match="DownConv form"):
    jax.eval_shape(conv_forms.DownConv(3, downsample=form).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="UpConv form"):
    jax.eval_shape(conv_forms.UpConv(3, upsample=form).init, jax.random.key(0), x)
