"""Evaluation metrics as pure functions on arrays (docs/design.md §6.2).

Masks [B, S, S, 1] in [0, 1]; images [B, S, S, 3] in [-1, 1]. Every function
returns per-image values [B] so callers can average over any number of
batches exactly.
"""

from __future__ import annotations

import jax.numpy as jnp


def mask_iou(mask_pred, mask_true, threshold: float = 0.5):
  """IoU of (mask_pred > threshold) with the binary true mask, per image [B].

  An image whose predicted and true masks are both empty has IoU 1.
  """
  pred = mask_pred > threshold
  true = mask_true > 0.5
  inter = (pred & true).reshape(pred.shape[0], -1).sum(axis=1)
  union = (pred | true).reshape(pred.shape[0], -1).sum(axis=1)
  return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


def mask_l1(mask_pred, mask_true):
  """Mean absolute difference of the masks per image [B]."""
  diff = jnp.abs(mask_pred - mask_true)
  return diff.reshape(diff.shape[0], -1).mean(axis=1)


def image_l1(image, real, weight=None):
  """Mean absolute difference per image [B], over the pixels where `weight` is 1."""
  diff = jnp.abs(image - real)
  if weight is None:
    weight = jnp.ones_like(diff[..., :1])
  weight = jnp.broadcast_to(weight, diff.shape)
  total = (diff * weight).reshape(diff.shape[0], -1).sum(axis=1)
  return total / jnp.maximum(weight.reshape(diff.shape[0], -1).sum(axis=1), 1.0)


def psnr(image, real, weight=None):
  """PSNR in dB per image [B] on [-1, 1] images (peak-to-peak 2), over `weight`."""
  sq = (image - real) ** 2
  if weight is None:
    weight = jnp.ones_like(sq[..., :1])
  weight = jnp.broadcast_to(weight, sq.shape)
  mse = (sq * weight).reshape(sq.shape[0], -1).sum(axis=1) / jnp.maximum(
    weight.reshape(sq.shape[0], -1).sum(axis=1), 1.0
  )
  return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def generation_metrics(mask_pred, image, real, mask_true) -> dict:
  """The per-image metrics of one generated batch [B] each (docs/design.md §6.2).

  Args:
    mask_pred: predicted mask [B, S, S, 1] in [0, 1] (the true mask for the
      "no mask network" ablation).
    image: generated [B, S, S, 3]; real: [B, S, S, 3], both in [-1, 1].
    mask_true: the union of the true boxes [B, S, S, 1].

  Returns:
    mask_iou, mask_l1, masked_l1 and masked_psnr (inside the true mask),
    image_l1 and image_psnr (the whole image).
  """
  return {
    "mask_iou": mask_iou(mask_pred, mask_true),
    "mask_l1": mask_l1(mask_pred, mask_true),
    "masked_l1": image_l1(image, real, mask_true),
    "masked_psnr": psnr(image, real, mask_true),
    "image_l1": image_l1(image, real),
    "image_psnr": psnr(image, real),
  }
