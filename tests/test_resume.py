"""Rerunning training on an existing workdir: incomplete checkpoints, changed configs, a new batch size."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config

from keypatch_jax import checkpoint, dataset_meta, input_pipeline, losses, resume, train, validation
from keypatch_jax.state import create_train_state


def _snapshot(root: str) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _copy(workdir: str, tmp_path) -> str:
  out = str(tmp_path / "work")
  shutil.copytree(workdir, out)
  return out


# ---------------------------------------------------------------- incomplete checkpoints


@pytest.mark.slow
def test_incomplete_newest_checkpoint_falls_back_with_one_warning(trained_workdir, tiny_data, tmp_path, caplog):
  workdir = _copy(trained_workdir, tmp_path)
  ckpts = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  assert checkpoint.saved_steps(ckpts) == [2, 4]
  shutil.rmtree(os.path.join(ckpts, "4", "rest"))
  step4 = _snapshot(os.path.join(ckpts, "4"))
  caplog.set_level(logging.WARNING)
  summary = train.train_and_evaluate(tiny_config(tiny_data, num_train_steps=2), workdir)
  assert summary["step"] == 2
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "step 4" in r.getMessage()]
  assert len(warnings) == 1 and "Resuming from step 2: step 4 lacks rest/" in warnings[0], warnings
  # The incomplete step is kept (its generator still samples), out of the way of new saves.
  moved = os.path.join(workdir, checkpoint.INCOMPLETE_DIR, "4")
  assert _snapshot(moved) == step4 and checkpoint.saved_steps(ckpts) == [2]


def test_no_complete_checkpoint_is_a_one_line_error_naming_the_workdir(trained_workdir, tiny_data, tmp_path):
  workdir = _copy(trained_workdir, tmp_path)
  for step in ("2", "4"):
    shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, step, "rest"))
  before = _snapshot(workdir)
  with pytest.raises(checkpoint.CheckpointError) as e:
    train.train_and_evaluate(tiny_config(tiny_data), workdir)
  assert workdir in str(e.value) and "step 4 lacks rest/" in str(e.value) and "\n" not in str(e.value)
  assert _snapshot(workdir) == before


# ---------------------------------------------------------------- changed config


def test_shape_changing_fields_are_named_before_anything_is_written(trained_workdir, tiny_data, tmp_path):
  workdir = _copy(trained_workdir, tmp_path)
  before = _snapshot(workdir)
  changes = {"model.conv_dim": 16, "model.embed_dim": 32, "learning_rate": 1e-3}
  with pytest.raises(validation.ConfigError) as e:
    train.train_and_evaluate(tiny_config(tiny_data, **changes), workdir)
  message = str(e.value)
  assert "model.conv_dim 8 -> 16" in message and "model.embed_dim 16 -> 32" in message
  assert "learning_rate" not in message and workdir in message and "\n" not in message
  assert _snapshot(workdir) == before  # config.json and the checkpoints stay as they were
  # A field that changes no shape is allowed.
  resume.check_config_change(checkpoint.read_config(workdir), tiny_config(tiny_data, learning_rate=1e-3), workdir)


def test_resume_names_changed_and_newly_added_fields_in_one_line():
  from configs import tiny

  old = tiny.get_config()
  del old.loss["spatial_weight"]  # a config.json written before the field existed
  assert resume.describe_changes(tiny.get_config(), tiny.get_config()) is None
  new = tiny.get_config()
  new.learning_rate, new.batch_size = 1e-3, 4
  line = resume.describe_changes(old, new)
  assert "\n" not in line and "learning_rate 0.0002 -> 0.001" in line
  assert "written by an older version), now: loss.spatial_weight=3.0" in line
  assert "batch_size" not in line  # the batch-size change has its own line


@pytest.mark.parametrize("field", sorted(validation.enumerated_fields()))
def test_enumerated_field_outside_its_set_is_one_line_before_anything_is_written(tiny_data, tmp_path, field):
  workdir = tmp_path / "work"
  with pytest.raises(validation.ConfigError) as e:
    train.train_and_evaluate(tiny_config(tiny_data, **{field: "bf16"}), str(workdir))
  allowed = validation.enumerated_fields()[field]
  assert f"{field}='bf16'" in str(e.value) and all(a in str(e.value) for a in allowed)
  assert not workdir.exists()


# ---------------------------------------------------------------- batch size changed


def test_segment_keeps_the_epoch_and_position_across_batch_sizes():
  # 80 examples; 4 steps at batch 8 reach epoch 0, example 32; go on at batch 16.
  seg = resume.Segment.start(4, 0, 32, 80, 16)
  assert seg.first_epoch_steps == 3 and seg.steps_per_epoch == 5
  positions = [seg.position(s) for s in range(4, 16)]
  assert positions[:4] == [(0, 32), (0, 48), (0, 64), (1, 0)]
  assert positions[4:9] == [(1, 16), (1, 32), (1, 48), (1, 64), (2, 0)]
  for s in range(4, 16):  # the step's λ epoch is the data's epoch
    assert (s + seg.step_offset) // seg.steps_per_epoch == seg.position(s)[0]
  assert seg.end_step(2) == 4 + 3 + 5
  # Unchanged batch size: offset 0 (the step-based epoch of a plain run).
  assert resume.Segment.start(14, 1, 32, 80, 8).step_offset == 0
  # Less than a batch left: the next epoch.
  assert resume.Segment.start(9, 0, 72, 80, 16).position(9) == (1, 0)
  # Checkpoints written before the example count was stored.
  assert resume.checkpoint_position({"epoch": 1, "batches_into_epoch": 3}, 8) == (1, 24)


def _images(batches) -> np.ndarray:
  return np.concatenate([b["image"].reshape(-1, *b["image"].shape[2:]) for b in batches])


def test_data_continues_at_the_same_example_with_another_batch_size(tiny_data):
  meta = dataset_meta.load_meta(tiny_data)
  small = tiny_config(tiny_data, batch_size=8)
  it = input_pipeline.train_iterator(meta, small)
  epoch0 = _images([next(it) for _ in range(10)])  # 80 examples
  big = tiny_config(tiny_data, batch_size=16)
  it = input_pipeline.train_iterator(meta, big, position=(0, 32))
  rest = _images([next(it) for _ in range(3)])
  np.testing.assert_array_equal(rest, epoch0[32:80])


def _scalars(workdir: str, tag: str) -> dict[int, float]:
  import tensorflow as tf

  out = {}
  for path in Path(workdir).glob("events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
  return out


@pytest.mark.slow
def test_batch_size_change_continues_the_epoch_with_one_log_line(trained_workdir, tiny_data, tmp_path, caplog):
  workdir = _copy(trained_workdir, tmp_path)  # 4 steps at batch 8 of 80 examples: epoch 0, example 32
  caplog.set_level(logging.WARNING)
  config = tiny_config(tiny_data, batch_size=16, num_train_steps=6, log_every_steps=1)
  summary = train.train_and_evaluate(config, workdir)
  assert summary["step"] == 6
  lines = [r.getMessage() for r in caplog.records if "batch_size 8 -> 16" in r.getMessage()]
  assert lines == ["batch_size 8 -> 16: continuing epoch 0 at example 32 of 80 (the λ schedule follows the epoch)"]
  _, saved = checkpoint.restore(checkpoint.manager(workdir, read_only=True), _template(config), 6)
  assert (saved["epoch"], saved["examples_into_epoch"], saved["batch_size"]) == (0, 64, 16)
  # Steps 5 and 6 are still epoch 0 (a step-based epoch would say 1 at step 6: 5 // 5) and λ with it.
  epochs, lambdas = _scalars(workdir, "epoch"), _scalars(workdir, "lambda")
  loss = config.loss
  lam0 = float(losses.lambda_schedule(0, config.num_epochs, loss.lambda_start, loss.lambda_end, loss.lambda_scale))
  assert epochs[5] == epochs[6] == 0.0
  np.testing.assert_allclose([lambdas[5], lambdas[6]], lam0, rtol=1e-6)


def _template(config):
  import jax

  return jax.eval_shape(lambda: create_train_state(config, jax.random.key(0)))


def test_sampling_uses_the_newest_step_that_has_a_generator(trained_workdir, tmp_path):
  workdir = _copy(trained_workdir, tmp_path)
  shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR, "4", "generator"))
  _, _, _, step = checkpoint.restore_generator(workdir)
  assert step == 2
  with pytest.raises(checkpoint.CheckpointError, match="--step 4 .*step 4 lacks generator/"):
    checkpoint.restore_generator(workdir, 4)
