"""The demo's contract without training: one set of paths, honest reruns, baselines in its last line."""

from __future__ import annotations

import json
import os

import pytest

from configs import demo as demo_config
from keypatch_jax import demo, progress


def _commands(doc: str) -> list[str]:
  """The WORKDIR-relative shell commands of a docstring (a backslash-newline already joins lines there)."""
  lines = [" ".join(line.split()) for line in doc.splitlines()]
  return [line for line in lines if line.startswith("python -m ") and "WORKDIR" in line]


def test_config_docstring_and_demo_name_the_same_steps_and_paths():
  steps = _commands(demo.__doc__)
  assert _commands(demo_config.__doc__) == steps
  assert [c.split()[2] for c in steps] == [
    "preprocessing",
    "keypatch_jax.main",
    "keypatch_jax.sample",
    "keypatch_jax.evaluate",
  ]


def _finished_data(workdir, num_images: int, image_size: int = 32, source: str = demo.SOURCE) -> str:
  data = os.path.join(workdir, "data")
  os.makedirs(data)
  info = {
    "source": source,
    "options": {"num_images": num_images},
    "image_size": image_size,
    "num_patches": 3,
    "counts": {"train": num_images - 10, "test": 10},
  }
  with open(os.path.join(data, "dataset_info.json"), "w") as f:
    json.dump(info, f)
  return data


def test_rerun_with_other_num_images_is_a_one_line_error_before_anything_runs(tmp_path, capsys):
  data = _finished_data(tmp_path, 2000)
  assert demo.main(["--workdir", str(tmp_path), "--num-images", "500"]) == 1
  captured = capsys.readouterr()
  err = captured.err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("keypatch_jax.demo: error: "), err
  assert data in err[0] and "num_images 2000 (now 500)" in err[0]
  assert "preprocessing" not in captured.out and "training" not in captured.out
  assert not os.path.exists(os.path.join(tmp_path, "train"))


def test_existing_data_is_reused_only_when_it_matches(tmp_path):
  assert demo.existing_data(str(tmp_path / "data"), 2000, 32) is None  # nothing yet: preprocess
  data = _finished_data(tmp_path, 2000)
  assert demo.existing_data(data, 2000, 32)["counts"]["train"] == 1990
  with pytest.raises(demo.DemoError, match="image_size 32 \\(now 64\\)"):
    demo.existing_data(data, 2000, 64)


def test_data_of_the_earlier_varied_pose_demo_is_not_reused(tmp_path):
  data = _finished_data(tmp_path, 2000, source="synthetic")
  with pytest.raises(demo.DemoError, match="source synthetic \\(now synthetic:aligned\\)"):
    demo.existing_data(data, 2000, 32)


def test_last_line_puts_baselines_beside_the_headline_metrics(tmp_path):
  metrics = tmp_path / "metrics.json"
  values = {"mask_iou": 0.645, "blind_mask_iou": 0.589, "image_psnr": 15.2, "blind_image_psnr": 14.8}
  values.update(masked_psnr=14.7, blind_masked_psnr=13.7)
  metrics.write_text(json.dumps(values))
  phases = {"preprocessing": 27.4, "training": 120.2, "sampling": 9.6, "evaluation": 22.8}
  line = demo.summary_line({"step": 464, "steps_per_s": 4.33}, str(metrics), 180.0, "s.png", "w", phases)
  assert line.startswith("demo done in 180 s (preprocessing 27 s, training 120 s, sampling 10 s, evaluation 23 s): ")
  assert "mask IoU 0.645 vs 0.589 for a patch-blind mean mask" in line
  assert "masked PSNR 14.7 dB vs 13.7 dB and image PSNR 15.2 dB vs 14.8 dB for the train split's mean image" in line
  rerun = demo.summary_line({"step": 464, "steps_per_s": float("nan")}, str(metrics), 20.0, "s.png", "w")
  assert "nan" not in rerun and "trained earlier" in rerun


def test_progress_lines_have_step_losses_rate_and_eta(capsys):
  now = [0.0]
  bar = progress.Progress(100, 0, clock=lambda: now[0])
  bar.begin("training w")
  now[0] = 30.0
  bar.first_step_done(1, 30.0)
  bar.report(1, {"g_loss": 2.0, "d_loss": 1.0})  # no rate yet: no ETA
  now[0] = 40.0
  bar.report(21, {"g_loss": 1.5, "d_loss": 0.9, "lambda": 0.64})
  lines = capsys.readouterr().out.splitlines()
  assert lines == [
    "training w: 100 steps",
    "step 1/100: compiled and ran the first step in 30s",
    "step 1/100 (1%)  g_loss 2  d_loss 1",
    "step 21/100 (21%)  g_loss 1.5  d_loss 0.9  2.00 steps/s  ETA 40s",
  ]
  done = progress.Progress(100, 100)
  done.begin("training w")
  assert capsys.readouterr().out.strip() == "training w: already at step 100 of 100; nothing to train"
