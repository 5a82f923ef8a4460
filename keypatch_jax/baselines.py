"""Patch-blind baselines: what a prediction that ignores the key patches scores.

A model's mask IoU or PSNR means little alone: most objects sit near the centre
of their images, so a fixed central mask already overlaps the true box union,
and the mean image is already close to every image. The baselines here use the
train split only and the same metric functions as the model (`metrics.py`):

  mask   the train split's mean box-union mask, one [S, S, 1] map for every
         test image (thresholded at 0.5 for IoU, like a predicted mask);
  image  the train split's mean image, one [S, S, 3] image for every test image.

A model that learned something from its patches scores above both. The train
split is the one the model learned from: `evaluate` takes it from the run's
own training data (`config.data_dir`) unless told otherwise, so a test-only
dataset, or another dataset's test split, is scored against what a
patch-blind model trained on the same images would answer (docs/design.md §6.2).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keypatch_jax import dataset_meta, input_pipeline, losses, metrics, preflight

DEFAULT_IMAGES = 2048  # train images averaged (the mean of more barely moves)


@dataclasses.dataclass(frozen=True)
class TrainMeans:
  """The patch-blind predictions: mean mask [S, S, 1] in [0, 1], mean image [S, S, 3] in [-1, 1]."""

  mask: np.ndarray
  image: np.ndarray
  num_images: int


def train_means(meta: dataset_meta.DatasetMeta, limit: int | None = DEFAULT_IMAGES) -> TrainMeans:
  """Mean box-union mask and mean image over (the first `limit` images of) the train split.

  Raises:
    DataConfigError: the train split is empty.
  """
  mask_sum = np.zeros((meta.image_size, meta.image_size, 1), np.float64)
  image_sum = np.zeros((meta.image_size, meta.image_size, 3), np.float64)
  count = 0
  for batch in input_pipeline.eval_batches(meta, "train", batch_size=256, limit=limit):
    mask_sum += np.asarray(losses.mask_from_boxes(batch["boxes"], meta.image_size)).sum(axis=0)
    image_sum += batch["image"].sum(axis=0)
    count += batch["image"].shape[0]
  if count == 0:
    raise dataset_meta.DataConfigError(f"{meta.data_dir}: the train split is empty (no patch-blind baseline)")
  return TrainMeans((mask_sum / count).astype(np.float32), (image_sum / count).astype(np.float32), count)


def baseline_meta(data_dir: str, image_size: int, chosen_by: str) -> dataset_meta.DatasetMeta:
  """The dataset whose train split gives the patch-blind baseline for S x S test images.

  Args:
    data_dir: a preprocessed dataset; image_size: S of the test images;
    chosen_by: how `data_dir` was chosen ("--baseline-data", or the run's data_dir), for the messages.

  Raises:
    DatasetFormatError / DataConfigError: one line: missing, no train split, or another image size.
  """
  if not data_dir:
    raise dataset_meta.DataConfigError(preflight.no_baseline(chosen_by, data_dir, "is not set"))
  meta = dataset_meta.load_meta(data_dir)
  if meta.num_train == 0:
    raise dataset_meta.DataConfigError(preflight.no_baseline(chosen_by, data_dir, preflight.NO_TRAIN_SPLIT))
  if meta.image_size != image_size:
    raise dataset_meta.DataConfigError(
      f"patch-blind baseline: {chosen_by} {data_dir!r} has image_size {meta.image_size}, the test images "
      f"{image_size}; pass --baseline-data DIR with {image_size} x {image_size} images"
    )
  return meta


def blind_metrics(means: TrainMeans, real: np.ndarray, mask_true: np.ndarray) -> dict[str, np.ndarray]:
  """`metrics.generation_metrics` of the patch-blind prediction on a test batch, per image [B].

  Args:
    means: from `train_means`.
    real: test images [B, S, S, 3] in [-1, 1]; mask_true: their box unions [B, S, S, 1].
  """
  b = real.shape[0]
  mask = np.broadcast_to(means.mask, (b, *means.mask.shape))
  image = np.broadcast_to(means.image, (b, *means.image.shape))
  return metrics.generation_metrics(mask, image, real, mask_true)
