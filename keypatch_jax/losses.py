"""KeyPatchGAN losses (paper eq. 1-4; docs/design.md §4) as pure functions on arrays.

Shapes: images [B, S, S, 3] in [-1, 1], masks [B, S, S, 1] in [0, 1],
logits [B]. The L1 terms are reduced as docs/design.md §4.2 says: `"mean"` (default) sums
each image's absolute differences and averages over the batch, so the balance
does not depend on batch size or device count; `"sum"` sums over the whole
batch like the official code (use it with the official λ range 1e-2..1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Every fake kind of eq. 4, in a fixed order. "G" is the generated image;
# "GR"/"RG" mix it with the real image y; "SR"/"RS" mix y with another real y'.
ALL_FAKES = ("G", "GR", "RG", "SR", "RS")
# The official code's last version: GR and RG computed but not used by D.
OFFICIAL_FAKES = ("G", "SR", "RS")
REDUCTIONS = ("mean", "sum")


def _reduce_l1(diff: jax.Array, reduction: str) -> jax.Array:
  """|diff| summed per image, then mean ("mean") or sum ("sum") over the batch."""
  per_image = jnp.abs(diff).reshape(diff.shape[0], -1).sum(axis=1)
  if reduction == "mean":
    return per_image.mean()
  if reduction == "sum":
    return per_image.sum()
  raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def spatial_loss(mask_pred: jax.Array, mask_true: jax.Array, reduction: str = "mean") -> jax.Array:
  """LS = ||G_M(x) - M||_1 (paper eq. 2). Masks [B, S, S, 1] -> scalar."""
  return _reduce_l1(mask_pred.astype(jnp.float32) - mask_true.astype(jnp.float32), reduction)


def appearance_loss(
  image: jax.Array,
  mask_pred: jax.Array,
  real: jax.Array,
  mask_true: jax.Array,
  reduction: str = "mean",
) -> jax.Array:
  """LA = ||G_I(x) ⊗ G_M(x) - y ⊗ M||_1 (paper eq. 3).

  As in the official code the generated image is multiplied by the *predicted*
  mask and the real image by the *true* mask. For the "no mask network"
  ablation pass `mask_pred = mask_true`.

  Args:
    image: generated [B, S, S, 3].
    mask_pred: predicted mask [B, S, S, 1].
    real: real image y [B, S, S, 3].
    mask_true: ground-truth mask M [B, S, S, 1].
    reduction: "mean" or "sum" (module docstring).
  """
  image, mask_pred = image.astype(jnp.float32), mask_pred.astype(jnp.float32)
  return _reduce_l1(image * mask_pred - real * mask_true, reduction)


def composite_fakes(
  generated: jax.Array,
  real: jax.Array,
  other_real: jax.Array,
  mask: jax.Array,
  kinds: Sequence[str] = ALL_FAKES,
) -> jax.Array:
  """The fake images of paper eq. 4, stacked in the order of `kinds`.

  G = G_I(x); GR = M⊗G + (1-M)⊗y; RG = (1-M)⊗G + M⊗y; SR = M⊗y' + (1-M)⊗y;
  RS = (1-M)⊗y' + M⊗y, where y' is a real image from outside the minibatch.

  Args:
    generated: G [B, S, S, 3]. Callers computing the D loss stop its gradient.
    real: y [B, S, S, 3].
    other_real: y' [B, S, S, 3].
    mask: the true mask M [B, S, S, 1].
    kinds: a subset of ALL_FAKES.

  Returns:
    [len(kinds), B, S, S, 3].
  """
  mask = mask.astype(generated.dtype)
  make = {
    "G": lambda: generated,
    "GR": lambda: mask * generated + (1 - mask) * real,
    "RG": lambda: (1 - mask) * generated + mask * real,
    "SR": lambda: mask * other_real + (1 - mask) * real,
    "RS": lambda: (1 - mask) * other_real + mask * real,
  }
  unknown = [k for k in kinds if k not in make]
  if unknown or not kinds:
    raise ValueError(f"fake kinds must be a non-empty subset of {ALL_FAKES}, got {list(kinds)}")
  return jnp.stack([make[k]() for k in kinds])


def discriminator_inputs(
  real: jax.Array,
  generated: jax.Array,
  other_real: jax.Array,
  mask: jax.Array,
  kinds: Sequence[str] = ALL_FAKES,
) -> jax.Array:
  """The D-update batch: [1 + len(kinds), B, S, S, 3], real first, then the fakes.

  The generated image is wrapped in `stop_gradient`: the D loss never moves G.
  """
  fakes = composite_fakes(jax.lax.stop_gradient(generated), real, other_real, mask, kinds)
  return jnp.concatenate([real[None].astype(fakes.dtype), fakes])


def bce_with_logits(logits: jax.Array, target: float) -> jax.Array:
  """Mean sigmoid cross-entropy of logits [B] against a constant 0/1 target."""
  logits = logits.astype(jnp.float32)
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def discriminator_loss(logits: jax.Array, kinds: Sequence[str] = ALL_FAKES) -> tuple[jax.Array, dict[str, jax.Array]]:
  """D's side of LR (paper eq. 4), to minimise.

  BCE(D(y), 1) + Σ_fakes BCE(D(fake), 0), each a mean over the batch, weight 1.

  Args:
    logits: [1 + len(kinds), B], real first (the layout `discriminator_inputs`
      builds).
    kinds: the fake kinds in rows 1.. of `logits`.

  Returns:
    (total loss, {"d_real": ..., "d_fake_<kind>": ...}).
  """
  if logits.shape[0] != 1 + len(kinds):
    raise ValueError(f"logits rows {logits.shape[0]} != 1 + {len(kinds)} kinds")
  terms = {"d_real": bce_with_logits(logits[0], 1.0)}
  for i, kind in enumerate(kinds):
    terms[f"d_fake_{kind}"] = bce_with_logits(logits[1 + i], 0.0)
  return sum(terms.values()), terms


def generator_adversarial_loss(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating G side of eq. 4: BCE(D(G_I(x)), 1). fake_logits [B]."""
  return bce_with_logits(fake_logits, 1.0)


def generator_loss(
  fake_logits: jax.Array | None,
  mask_pred: jax.Array,
  mask_true: jax.Array,
  image: jax.Array,
  real: jax.Array,
  lam_spatial: jax.Array,
  lam_appearance: jax.Array,
  reduction: str = "mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """G's objective of eq. 1: LR_G + λ1·LS + λ2·LA.

  Args:
    fake_logits: D's logits on the generated images [B], or None for the
      autoencoder ablation (no adversarial term).
    mask_pred, mask_true: [B, S, S, 1] (pass mask_true twice without a mask
      network).
    image, real: [B, S, S, 3].
    lam_spatial, lam_appearance: λ1, λ2 (scalars).
    reduction: L1 reduction (module docstring).

  Returns:
    (total loss, {"g_adv", "g_spatial", "g_appearance"}).
  """
  terms = {
    "g_spatial": spatial_loss(mask_pred, mask_true, reduction),
    "g_appearance": appearance_loss(image, mask_pred, real, mask_true, reduction),
  }
  adv = 0.0 if fake_logits is None else generator_adversarial_loss(fake_logits)
  terms["g_adv"] = jnp.asarray(adv, jnp.float32)
  total = terms["g_adv"] + lam_spatial * terms["g_spatial"] + lam_appearance * terms["g_appearance"]
  return total, terms


def lambda_schedule(epoch, num_epochs: int, start: float = -2.0, end: float = -4.0, scale: float = 64.0):
  """λ1 = λ2 = scale · logspace(start, end, num_epochs)[epoch] (paper §4; docs/design.md §4.2).

  Constant within an epoch. `scale` = 64 converts the official code's
  whole-batch-sum weights to the per-image mean reduction (docs/design.md §9, item 5); use
  scale 1 with reduction "sum". Works on Python ints and traced arrays.
  """
  epoch = jnp.clip(epoch, 0, max(num_epochs - 1, 0))
  frac = epoch / max(num_epochs - 1, 1)
  return scale * 10.0 ** (start + (end - start) * frac)


def mask_from_boxes(boxes: np.ndarray | jax.Array, image_size: int) -> jax.Array:
  """Binary union of boxes: [B, N, 4] (x, y, w, h in pixels) -> [B, S, S, 1].

  A pixel (i, j) belongs to a box when its centre (j + 0.5, i + 0.5) lies
  inside [x, x + w) x [y, y + h).
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  centres = jnp.arange(image_size, dtype=jnp.float32) + 0.5
  x, y, w, h = (boxes[..., k, None] for k in range(4))  # [B, N, 1]
  in_x = (centres >= x) & (centres < x + w)  # [B, N, S]
  in_y = (centres >= y) & (centres < y + h)
  inside = in_y[..., :, None] & in_x[..., None, :]  # [B, N, S, S]
  return inside.any(axis=1)[..., None].astype(jnp.float32)
