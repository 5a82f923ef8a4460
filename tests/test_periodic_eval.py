"""The evaluator the training loop runs every `eval_every_steps`: metrics, its time bound, and stopping."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from keypatch_jax import dataset_meta, input_pipeline, losses, periodic_eval


def _perfect_generate(batches):
  """A stand-in generator that returns the true mask and the real image of each test batch in turn."""
  it = iter(batches)

  def generate(variables, patches, z):
    batch = next(it)
    np.testing.assert_array_equal(patches, batch["patches"])
    return losses.mask_from_boxes(batch["boxes"], batch["image"].shape[1]), jnp.asarray(batch["image"])

  return generate


def _setup(tiny_data, **overrides):
  config = tiny.get_config()
  config.data_dir = tiny_data
  config.batch_size = 8
  config.eval_batches = 2
  config.update(overrides)
  meta = dataset_meta.load_meta(tiny_data)
  batches = list(input_pipeline.eval_batches(meta, "test", config.batch_size, limit=16))
  return config, meta, batches


def test_metrics_of_a_perfect_generator(tiny_data):
  config, meta, batches = _setup(tiny_data)
  logs = []
  evaluator = periodic_eval.PeriodicEvaluator(config, meta, _perfect_generate(batches), log=logs.append)
  out = evaluator({}, run_seconds=100.0)
  assert out["mask_iou"] == pytest.approx(1.0)
  assert out["masked_psnr"] == pytest.approx(10 * np.log10(4 / 1e-10))  # mse floored at 1e-10
  assert "kid" not in out  # no config.inception_weights
  assert out["seconds"] > 0 and evaluator.seconds == pytest.approx(out["seconds"])
  assert out["share"] == pytest.approx(out["seconds"] / (100.0 + out["seconds"]))


def test_an_imperfect_generator_scores_lower(tiny_data):
  config, meta, batches = _setup(tiny_data)

  def generate(variables, patches, z):
    return jnp.ones(patches.shape[:1] + patches.shape[2:4] + (1,)), jnp.zeros(patches.shape[:1] + patches.shape[2:])

  out = periodic_eval.PeriodicEvaluator(config, meta, generate)({}, run_seconds=1.0)
  assert out["mask_iou"] < 0.9 and out["masked_psnr"] < 30.0


def test_stops_between_batches_when_asked(tiny_data):
  config, meta, batches = _setup(tiny_data)
  calls = []
  evaluator = periodic_eval.PeriodicEvaluator(config, meta, _perfect_generate(batches))
  out = evaluator({}, run_seconds=10.0, should_stop=lambda: bool(calls.append(1)) or len(calls) > 1)
  assert out is None
  assert len(calls) == 2  # one batch generated, then stopped
  assert evaluator.seconds > 0  # the abandoned evaluation still counts against the budget


def test_due_every_n_steps_within_the_time_budget(tiny_data):
  config, meta, _ = _setup(tiny_data, eval_every_steps=5, eval_max_share=0.2)
  logs = []
  evaluator = periodic_eval.PeriodicEvaluator(config, meta, None, log=logs.append)
  assert [s for s in range(1, 16) if evaluator.due(s, run_seconds=100.0)] == [5, 10, 15]
  evaluator.seconds = 30.0  # evaluations took 30 s of a 100 s run: over 20%
  assert not evaluator.due(10, run_seconds=100.0)
  assert "skipped" in logs[-1] and "30.0%" in logs[-1] and "eval_max_share=0.2" in logs[-1]
  assert evaluator.due(10, run_seconds=200.0)  # 15% now
  config.eval_every_steps = 0
  assert not evaluator.due(10, run_seconds=1e6)


def test_empty_masks_get_one_warning_line_naming_the_switch():
  config = tiny.get_config()
  config.loss.spatial_weight = 1.0  # the paper's λ1 = λ2
  line = periodic_eval.empty_mask_warning(200, 0.0, config)
  assert line is not None and "\n" not in line
  assert "step 200" in line and "--config.loss.spatial_weight=3" in line
  config.loss.spatial_weight = 3.0  # the default
  assert "--config.loss.spatial_weight=9" in periodic_eval.empty_mask_warning(200, 0.004, config)
  assert periodic_eval.empty_mask_warning(200, 0.3, config) is None  # a mask that is learning
  assert periodic_eval.empty_mask_warning(200, float("nan"), config) is None  # nothing evaluated
  config.model.use_mask_net = False  # the ablation has no mask to collapse
  assert periodic_eval.empty_mask_warning(200, 0.0, config) is None


def test_never_due_without_a_test_split(tiny_data):
  """A train-only dataset (--test-count 0): no evaluation is due, where one would fail on the missing test shards."""
  import dataclasses

  config, meta, _ = _setup(tiny_data, eval_every_steps=5)
  evaluator = periodic_eval.PeriodicEvaluator(config, dataclasses.replace(meta, num_test=0), None)
  assert evaluator.due(5, run_seconds=100.0) is False
  assert periodic_eval.PeriodicEvaluator(config, meta, None).due(5, run_seconds=100.0)  # with its test split: due
