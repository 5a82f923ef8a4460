"""Tests of keypatch_jax.losses (docs/design.md §4) against hand-computed values."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from keypatch_jax import losses, models

# Batch 2 of 2x2 images. Hand-picked values, so every expectation below can be
# checked with pencil and paper.
MASK_TRUE = np.array([[[1, 0], [0, 0]], [[1, 1], [0, 1]]], np.float32)[..., None]
MASK_PRED = np.array([[[0.5, 0.25], [0, 1]], [[1, 0.5], [0.5, 0]]], np.float32)[..., None]
# Images [2, 2, 2, 3]: channel c of pixel value v is v * (c + 1).
_BASE_G = np.array([[[0.5, -0.5], [1, 0]], [[0.25, 0], [-1, 0.5]]], np.float32)
_BASE_Y = np.array([[[1, 0], [0.5, -1]], [[0, 0.5], [0.5, 0.5]]], np.float32)
_BASE_Y2 = np.array([[[-1, 1], [0, 0.5]], [[1, -0.5], [0, 0]]], np.float32)
CH = np.array([1, 2, 3], np.float32) / 3  # channel multipliers, keep values in [-1, 1]
GEN = _BASE_G[..., None] * CH
REAL = _BASE_Y[..., None] * CH
OTHER = _BASE_Y2[..., None] * CH


def test_spatial_loss_by_hand():
  # |pred - true| per image: [0.5 + 0.25 + 0 + 1, 0 + 0.5 + 0.5 + 1] = [1.75, 2.0].
  assert float(losses.spatial_loss(MASK_PRED, MASK_TRUE)) == pytest.approx(1.875)
  assert float(losses.spatial_loss(MASK_PRED, MASK_TRUE, "mean")) == pytest.approx(1.875)
  assert float(losses.spatial_loss(MASK_PRED, MASK_TRUE, "sum")) == pytest.approx(3.75)


def test_appearance_loss_by_hand():
  # Per pixel: |g * m_pred - y * m_true|, times sum(CH) = 2 over the channels.
  # Image 0: |0.25 - 1| + |-0.125 - 0| + |0 - 0| + |0 - 0| = 0.875 -> 1.75.
  # Image 1: |0.25 - 0| + |0 - 0.5| + |-0.5 - 0| + |0 - 0.5| = 1.75 -> 3.5.
  got_mean = losses.appearance_loss(GEN, MASK_PRED, REAL, MASK_TRUE)
  got_sum = losses.appearance_loss(GEN, MASK_PRED, REAL, MASK_TRUE, reduction="sum")
  assert float(got_mean) == pytest.approx((1.75 + 3.5) / 2)
  assert float(got_sum) == pytest.approx(1.75 + 3.5)
  # The generated image is weighted by the *predicted* mask, not the true one.
  swapped = losses.appearance_loss(GEN, MASK_TRUE, REAL, MASK_TRUE)
  assert float(swapped) != pytest.approx(float(got_mean))


@pytest.mark.parametrize("fn", [losses.spatial_loss, losses.appearance_loss])
def test_bad_reduction_raises(fn):
  args = (MASK_PRED, MASK_TRUE) if fn is losses.spatial_loss else (GEN, MASK_PRED, REAL, MASK_TRUE)
  with pytest.raises(ValueError, match="reduction"):
    fn(*args, reduction="max")


def test_composite_fakes_each_kind_by_hand():
  m = MASK_TRUE
  expected = {
    "G": GEN,
    "GR": m * GEN + (1 - m) * REAL,
    "RG": (1 - m) * GEN + m * REAL,
    "SR": m * OTHER + (1 - m) * REAL,
    "RS": (1 - m) * OTHER + m * REAL,
  }
  # Spot-check the formulas themselves on one pixel each: image 0, pixel (0, 0)
  # is inside the mask, pixel (0, 1) outside; channel 2 (multiplier 1).
  assert expected["GR"][0, 0, 0, 2] == pytest.approx(0.5)  # G inside
  assert expected["GR"][0, 0, 1, 2] == pytest.approx(0.0)  # y outside
  assert expected["RG"][0, 0, 0, 2] == pytest.approx(1.0)  # y inside
  assert expected["RG"][0, 0, 1, 2] == pytest.approx(-0.5)  # G outside
  assert expected["SR"][0, 0, 0, 2] == pytest.approx(-1.0)  # y' inside
  assert expected["RS"][0, 0, 1, 2] == pytest.approx(1.0)  # y' outside
  for kind, want in expected.items():
    got = losses.composite_fakes(GEN, REAL, OTHER, MASK_TRUE, kinds=(kind,))
    assert got.shape == (1, 2, 2, 2, 3)
    np.testing.assert_allclose(got[0], want, atol=1e-7)
  stacked = losses.composite_fakes(GEN, REAL, OTHER, MASK_TRUE)
  np.testing.assert_allclose(stacked, np.stack([expected[k] for k in losses.ALL_FAKES]), atol=1e-7)
  official = losses.composite_fakes(GEN, REAL, OTHER, MASK_TRUE, kinds=losses.OFFICIAL_FAKES)
  np.testing.assert_allclose(official, np.stack([expected[k] for k in ("G", "SR", "RS")]))


@pytest.mark.parametrize("kinds", [("G", "XX"), (), ("gr",)])
def test_composite_fakes_rejects_unknown_kinds(kinds):
  with pytest.raises(ValueError, match="fake kinds"):
    losses.composite_fakes(GEN, REAL, OTHER, MASK_TRUE, kinds=kinds)


def _softplus_neg(x: float) -> float:
  """-log(sigmoid(x)) = log(1 + exp(-x)), by hand."""
  return math.log(1 + math.exp(-x))


def test_discriminator_loss_by_hand():
  kinds = ("G", "SR")
  logits = np.array([[2.0, -1.0], [0.5, -3.0], [1.0, 0.0]], np.float32)  # real, G, SR
  d_real = (_softplus_neg(2.0) + _softplus_neg(-1.0)) / 2
  # Target 0: -log(1 - sigmoid(x)) = log(1 + exp(x)).
  d_g = (_softplus_neg(-0.5) + _softplus_neg(3.0)) / 2
  d_sr = (_softplus_neg(-1.0) + _softplus_neg(0.0)) / 2
  total, terms = losses.discriminator_loss(logits, kinds)
  assert float(terms["d_real"]) == pytest.approx(d_real, rel=1e-6)
  assert float(terms["d_fake_G"]) == pytest.approx(d_g, rel=1e-6)
  assert float(terms["d_fake_SR"]) == pytest.approx(d_sr, rel=1e-6)
  assert set(terms) == {"d_real", "d_fake_G", "d_fake_SR"}
  assert float(total) == pytest.approx(d_real + d_g + d_sr, rel=1e-6)
  with pytest.raises(ValueError, match="rows"):
    losses.discriminator_loss(logits, losses.ALL_FAKES)


def test_bce_is_stable_for_large_logits():
  logits = jnp.array([100.0, -100.0])
  assert float(losses.bce_with_logits(logits, 1.0)) == pytest.approx(50.0)
  assert np.isfinite(float(losses.bce_with_logits(logits, 0.0)))


def test_generator_loss_by_hand():
  fake_logits = np.array([0.5, -2.0], np.float32)
  adv = (_softplus_neg(0.5) + _softplus_neg(-2.0)) / 2
  ls, la = 1.875, 2.625  # from the two tests above
  total, terms = losses.generator_loss(
    fake_logits, MASK_PRED, MASK_TRUE, GEN, REAL, lam_spatial=0.5, lam_appearance=0.25
  )
  assert float(terms["g_adv"]) == pytest.approx(adv, rel=1e-6)
  assert float(terms["g_spatial"]) == pytest.approx(ls)
  assert float(terms["g_appearance"]) == pytest.approx(la)
  assert float(total) == pytest.approx(adv + 0.5 * ls + 0.25 * la, rel=1e-6)
  # Autoencoder ablation: no adversarial term; official "sum" reduction.
  total, terms = losses.generator_loss(None, MASK_PRED, MASK_TRUE, GEN, REAL, 1.0, 2.0, reduction="sum")
  assert float(terms["g_adv"]) == 0.0
  assert float(total) == pytest.approx(2 * ls + 2.0 * 2 * la)


def test_lambda_schedule():
  assert float(losses.lambda_schedule(0, 25)) == pytest.approx(0.64)
  assert float(losses.lambda_schedule(24, 25)) == pytest.approx(0.0064)
  assert float(losses.lambda_schedule(12, 25)) == pytest.approx(0.064)  # log-midpoint
  values = np.array([float(losses.lambda_schedule(e, 25)) for e in range(25)])
  assert np.all(np.diff(values) < 0)
  # Official weights with scale 1, clipping outside [0, E-1], a single epoch.
  assert float(losses.lambda_schedule(0, 10, scale=1.0)) == pytest.approx(1e-2)
  assert float(losses.lambda_schedule(99, 10)) == pytest.approx(0.0064)
  assert float(losses.lambda_schedule(0, 1)) == pytest.approx(0.64)
  # Works on traced epochs (inside jit) with the same values.
  jitted = jax.jit(functools.partial(losses.lambda_schedule, num_epochs=25))
  assert float(jitted(jnp.int32(24))) == pytest.approx(0.0064, rel=1e-5)


def test_mask_from_boxes_by_hand():
  # Boxes (x, y, w, h) in a 4x4 frame; image 0 has two overlapping boxes,
  # image 1 a fractional box covering the centres 1.5 and 2.5 in x, 0.5 in y.
  boxes = np.array([[[0, 0, 2, 1], [1, 0, 1, 3]], [[1.2, 0, 1.8, 1], [0, 0, 0, 0]]], np.float32)
  want = np.zeros((2, 4, 4), np.float32)
  want[0, 0, 0:2] = 1
  want[0, 0:3, 1] = 1
  want[1, 0, 1:3] = 1
  got = losses.mask_from_boxes(boxes, 4)
  assert got.shape == (2, 4, 4, 1) and got.dtype == jnp.float32
  np.testing.assert_array_equal(got[..., 0], want)


# ---------------------------------------------------------------------------
# Gradient blocking through a real (tiny) discriminator.


@pytest.mark.slow
def test_d_loss_blocks_gradient_into_generated_but_g_loss_does_not():
  size = 16
  disc = models.KindsDiscriminator(image_size=size, conv_dim=4)
  keys = jax.random.split(jax.random.key(0), 4)
  real, generated, other = (jax.random.uniform(k, (2, size, size, 3), minval=-1) for k in keys[:3])
  boxes = np.array([[[2, 2, 6, 6]], [[4, 1, 8, 10]]], np.float32)
  mask = losses.mask_from_boxes(boxes, size)
  inputs = losses.discriminator_inputs(real, generated, other, mask)
  variables = disc.init(keys[3], inputs, train=False)
  apply = functools.partial(disc.apply, train=True, mutable=["batch_stats"])

  def d_loss(generated):
    batch = losses.discriminator_inputs(real, generated, other, mask)
    logits, _ = apply(variables, batch)
    return losses.discriminator_loss(logits)[0]

  one_kind = {  # the running averages of kind "G" only (D keeps one set per kind)
    "params": variables["params"],
    "batch_stats": jax.tree.map(lambda s: s[1:2], variables["batch_stats"]),
  }

  def g_adv_loss(generated):
    logits, _ = apply(one_kind, generated[None])
    return losses.generator_adversarial_loss(logits[0])

  d_grad = jax.jit(jax.grad(d_loss))(generated)
  g_grad = jax.jit(jax.grad(g_adv_loss))(generated)
  assert np.all(np.asarray(d_grad) == 0.0)
  assert float(jnp.abs(g_grad).max()) > 0.0
  # The D loss still depends on the real images (the test is not vacuous).
  grad_real = jax.grad(
    lambda r: losses.discriminator_loss(apply(variables, losses.discriminator_inputs(r, generated, other, mask))[0])[0]
  )
  assert float(jnp.abs(jax.jit(grad_real)(real)).max()) > 0.0
