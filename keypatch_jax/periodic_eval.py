"""Evaluation during training: the EMA generator on the test split every `config.eval_every_steps`.

Each evaluation generates from the key patches of the first
`config.eval_batches` test batches and reports

  eval/mask_iou      predicted mask (> 0.5) vs the true box union, mean
  eval/masked_psnr   generated vs real image inside the true mask, dB, mean
  eval/kid           KID (x 1) against the same test images, with eval/kid_std,
                     when `config.inception_weights` names pytorch-fid's file
                     (and there are 2 test images or more; FID, which needs
                     2049, is left to `evaluate`)
  eval/seconds       this evaluation's wall time
  eval/share         all evaluations' time / the run's wall time so far

Its cost is bounded: an evaluation that falls due while the evaluations so far
have taken more than `config.eval_max_share` of the run's time is skipped (the
next one due runs once the share is back under), and an evaluation stops
between batches when `should_stop()` turns true (SIGTERM), so none runs into
the preemption grace period.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from keypatch_jax import fid, inception, inference, input_pipeline, models

# Below this test mask IoU the predicted masks are (almost) empty: see `empty_mask_warning`.
EMPTY_MASK_IOU = 0.01


def empty_mask_warning(step: int, mask_iou: float, config) -> str | None:
  """One line when the mask network has collapsed to empty masks, else None.

  The predicted mask multiplies the generated image in the appearance loss
  (eq. 3), so while G_I is poor that loss pulls the mask towards zero; where
  the key patches' places vary from image to image (the authors' CelebA boxes)
  the spatial loss can lose, the sigmoid saturates and the mask stays empty
  (docs/design.md §4.2). A larger `config.loss.spatial_weight` tips the balance.

  Args:
    step: the step evaluated.
    mask_iou: the test split's mean mask IoU (NaN: nothing evaluated, no warning).
    config: the run's config (`model.use_mask_net`, `loss.spatial_weight`).
  """
  if not config.model.use_mask_net or not mask_iou < EMPTY_MASK_IOU:
    return None
  weight = config.loss.spatial_weight
  return (
    f"step {step}: test mask IoU {mask_iou:.3f}: the predicted masks are empty (the appearance loss outweighs "
    f"the spatial loss, docs/design.md §4.2); if it stays so, train again with "
    f"--config.loss.spatial_weight={3 * weight:g}"
  )


class PeriodicEvaluator:
  """Test-split metrics of a generator's variables, with the time they cost.

  Args:
    config: the run's config (`eval_batches`, `batch_size`, `model.z_dim`,
      `image_size`, `inception_weights`, `eval_max_share`,
      `kid_subsets`).
    meta: the dataset's `dataset_meta.DatasetMeta`.
    generate: `inference.generate_fn(generator)`: `(variables, patches, z) -> (mask | None, image)`.
    log: where progress lines go.

  Raises:
    inception.WeightsError: `config.inception_weights` is set but is not
      pytorch-fid's weights file (checked here, before training starts).
  """

  def __init__(self, config, meta, generate: Callable, log: Callable[[str], None] = print):
    self.config, self.meta, self.generate, self.log = config, meta, generate, log
    self.seconds = 0.0  # all evaluations so far, including the real features
    self.limit = config.eval_batches * config.batch_size
    self.extract = self.real = None
    self.kid_skipped = False
    if config.inception_weights:
      weights = inception.load_weights(config.inception_weights, flag="--config.inception_weights")
      self.extract = inception.feature_fn(weights)

  def due(self, step: int, run_seconds: float) -> bool:
    """Whether an evaluation should run at `step`, `run_seconds` into the run (False: skip, logged).

    Never on a dataset without a test split (preprocessed with --test-count 0): nothing to evaluate on.
    """
    if self.meta.num_test == 0 or self.config.eval_every_steps <= 0 or step % self.config.eval_every_steps:
      return False
    if self.seconds > self.config.eval_max_share * max(run_seconds, 1e-9):
      self.log(
        f"eval at step {step} skipped: evaluations took {self.seconds / run_seconds:.1%} of the run "
        f"(config.eval_max_share={self.config.eval_max_share})"
      )
      return False
    return True

  def __call__(
    self, variables: dict, run_seconds: float, should_stop: Callable[[], bool] = lambda: False
  ) -> dict[str, float] | None:
    """{'mask_iou', 'masked_psnr'[, 'kid', 'kid_std'], 'seconds', 'share'}, or None if stopped.

    Args:
      variables: the generator's {'params', 'batch_stats'} (the EMA params).
      run_seconds: the run's wall time so far, evaluations included.
      should_stop: polled between batches; True abandons the evaluation.
    """
    start = time.perf_counter()
    try:
      out = self._evaluate(variables, should_stop)
    finally:
      seconds = time.perf_counter() - start
      self.seconds += seconds
    if out is not None:
      out["seconds"] = seconds
      out["share"] = self.seconds / max(run_seconds + seconds, 1e-9)
    return out

  def _evaluate(self, variables: dict, should_stop: Callable[[], bool]) -> dict[str, float] | None:
    config = self.config
    if self.extract is not None and self.real is None:
      self.real = fid.real_features(
        self.meta, self.extract, config.inception_weights, limit=self.limit, batch_size=config.batch_size, log=self.log
      )
    ious, psnrs, images = [], [], []
    batches = input_pipeline.eval_batches(self.meta, "test", config.batch_size, limit=self.limit)
    for i, batch in enumerate(batches):
      if should_stop():
        return None
      z = models.sample_z(jax.random.key(i), config.model.z_dim, batch["image"].shape[0])
      scores, image = inference.evaluate_batch(
        self.generate, variables, batch["patches"], z, batch["boxes"], batch["image"]
      )
      ious.append(scores["mask_iou"])
      psnrs.append(scores["masked_psnr"])
      if self.extract is not None:
        images.append(np.asarray(image))
    if not ious:
      return None
    out = {"mask_iou": float(np.concatenate(ious).mean()), "masked_psnr": float(np.concatenate(psnrs).mean())}
    if self.extract is not None:
      if should_stop():
        return None
      fake = self.extract(images)
      why = fid.kid_undefined(len(self.real), len(fake))
      if why is None:
        out["kid"], out["kid_std"] = fid.kid(self.real, fake, num_subsets=config.kid_subsets)
      elif not self.kid_skipped:  # said once per run
        self.kid_skipped = True
        self.log(f"eval: {why} (test split too small)")
    return out
