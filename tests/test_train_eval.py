"""Evaluation during training: periodic scalars in TensorBoard, and a bad weights path failing first."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from keypatch_jax import inception, train


def _scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of every scalar in the run's TensorBoard event files."""
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  acc = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["tensors"]:
    values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
    if all(v.ndim == 0 for _, v in values):  # not the image grids
      out[tag] = [(step, float(v)) for step, v in values]
  return out


@pytest.mark.slow
def test_periodic_evaluation_writes_scalars(tiny_data, inception_weights, tmp_path):
  config = tiny_config(
    tiny_data, eval_every_steps=2, eval_max_share=1.0, inception_weights=inception_weights, kid_subsets=3
  )
  workdir = str(tmp_path / "work")
  summary = train.train_and_evaluate(config, workdir)
  scalars = _scalars(workdir)
  for tag in ("mask_iou", "masked_psnr", "kid", "kid_std", "seconds", "share"):
    assert [step for step, _ in scalars[f"eval/{tag}"]] == [2, 4], tag
  assert all(0.0 <= v <= 1.0 for _, v in scalars["eval/mask_iou"])
  assert all(v > 0.0 for _, v in scalars["eval/seconds"])
  assert 0.0 < summary["eval_share"] < 1.0 and summary["eval_s"] > 0.0


def test_bad_inception_weights_fail_before_training(tiny_data, tmp_path):
  config = tiny_config(tiny_data, inception_weights=str(tmp_path / "missing.pth"))
  workdir = tmp_path / "work"
  with pytest.raises(inception.WeightsError, match="inception_weights.*pt_inception-2015-12-05-6726825d.pth"):
    train.train_and_evaluate(config, str(workdir))
  assert not (workdir / "checkpoints").exists()
