"""`python -m keypatch_jax.evaluate`: metrics on hand-made cases, then a real run on a checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import corrupt_copy

from keypatch_jax import baselines, dataset_meta, evaluate, input_pipeline, losses, metrics

REQUIRED = ("mask_iou", "mask_l1", "masked_psnr", "image_psnr", "order_consistency", "num_images")
HEADLINE = ("mask_iou", "mask_l1", "masked_l1", "masked_psnr", "image_l1", "image_psnr")


def _case():
  boxes = np.array([[[2, 3, 5, 4], [8, 8, 4, 6]]], np.float32)  # [1, N=2, 4] in a 16x16 image
  true = np.asarray(losses.mask_from_boxes(boxes, 16))
  real = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  return true, real


def test_perfect_prediction():
  true, real = _case()
  m = {k: float(v[0]) for k, v in metrics.generation_metrics(true, real, real, true).items()}
  assert true.sum() == 5 * 4 + 4 * 6
  assert m["mask_iou"] == 1.0 and m["mask_l1"] == 0.0
  assert m["masked_l1"] == 0.0 and m["image_l1"] == 0.0
  assert np.isfinite(m["image_psnr"]) and m["image_psnr"] >= 100.0  # capped, not inf
  assert np.isfinite(m["masked_psnr"]) and m["masked_psnr"] >= 100.0


def test_known_answers():
  true, real = _case()
  half = true.copy()
  half[0, 3:7, 2:7] = 0.0  # drop the first box (20 of 44 pixels)
  soft = np.where(true > 0, 0.75, 0.0).astype(np.float32)  # right support, wrong confidence
  image = real.copy()
  image[true[..., 0] > 0] += 0.5  # error 0.5 inside the mask only -> MSE 0.25 there
  m = {k: float(v[0]) for k, v in metrics.generation_metrics(half, image, real, true).items()}
  assert np.isclose(m["mask_iou"], 24 / 44)
  assert np.isclose(m["mask_l1"], 20 / 256)
  assert np.isclose(m["masked_l1"], 0.5) and np.isclose(m["masked_psnr"], 10 * np.log10(4 / 0.25), atol=1e-4)
  assert np.isclose(m["image_l1"], 0.5 * 44 / 256)
  assert float(metrics.mask_iou(soft, true)[0]) == 1.0
  assert np.isclose(float(metrics.mask_l1(soft, true)[0]), 0.25 * 44 / 256)


def test_blind_baseline_by_hand():
  """The patch-blind prediction is scored with the model's metric functions: a perfect mean is perfect."""
  true, real = _case()
  means = baselines.TrainMeans(mask=true[0], image=real[0], num_images=1)
  m = {k: float(v[0]) for k, v in baselines.blind_metrics(means, real, true).items()}
  assert m["mask_iou"] == 1.0 and m["mask_l1"] == 0.0 and m["image_l1"] == 0.0
  half = baselines.TrainMeans(mask=true[0] * 0.4, image=real[0], num_images=1)  # below the 0.5 threshold
  assert float(baselines.blind_metrics(half, real, true)["mask_iou"][0]) == 0.0


@pytest.mark.slow
def test_evaluate_a_checkpoint(trained_workdir, tiny_data, tmp_path, capsys):
  out = tmp_path / "metrics.json"
  assert evaluate.main(["--workdir", trained_workdir, "--data", tiny_data, "--output", str(out)]) == 0
  written = json.loads(out.read_text())
  descriptions = written.pop("descriptions")
  printed = capsys.readouterr().out.strip().splitlines()
  result = json.loads(printed[-1])
  assert result == written
  assert all(k in result for k in REQUIRED)
  assert result["num_images"] == 16 and result["step"] == 4 and result["baseline_images"] == 80
  for prefix in ("", "random_", "noisy_", "blind_"):
    assert 0.0 <= result[prefix + "mask_iou"] <= 1.0
    assert 0.0 <= result[prefix + "mask_l1"] <= 1.0
  for name in HEADLINE:  # a patch-blind baseline beside every headline metric
    assert "blind_" + name in result
  assert set(descriptions) == set(result) and all(descriptions.values())  # every figure defined
  assert "mean box-union mask" in descriptions["blind_mask_iou"] and result["baseline_from"] == "run"
  assert result["baseline_data"] == tiny_data and descriptions["baseline_data"]
  assert result["order_consistency"] < 1e-3  # eval-mode generator is permutation invariant
  assert 0.0 < result["d_real_score"] < 1.0 and 0.0 < result["d_fake_score"] < 1.0
  table = printed[: printed.index(next(line for line in printed if line.startswith("wrote ")))]
  assert table[0].split() == ["metric", "key", "random", "noisy", "blind"]
  rows = {line.split()[0]: line.split()[1:] for line in table[1:] if line and not line.startswith(" ")}
  assert all(len(rows[name]) == 4 for name in HEADLINE)
  # d_*_score are not per-column figures: printed with their definition, not under a column
  assert rows["d_real_score"][1:] == evaluate.DEFINITIONS["d_real_score"].split()


def test_help_defines_metrics_and_columns(capsys):
  with pytest.raises(SystemExit) as e:
    evaluate.parse_args(["--help"])
  assert e.value.code == 0
  text = " ".join(capsys.readouterr().out.split())
  for name in (*evaluate.DEFINITIONS, *evaluate.COLUMNS):
    assert f" {name} " in text, name
  assert "(default: 64)" in text  # --batch-size shows its default


def test_bad_output_is_reported_before_the_checkpoint_is_read(tiny_data, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:  # a bad option: exit status 2, as argparse's errors
    evaluate.main(["--workdir", str(tmp_path / "no_run"), "--data", tiny_data, "--output", str(tmp_path)])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"keypatch_jax.evaluate: error: --output {str(tmp_path)!r} is a directory; give a file name"]


@pytest.mark.slow
def test_evaluate_without_optimizer_state_skips_only_d(trained_workdir, tiny_data, tmp_path, capsys):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  shutil.rmtree(workdir / "checkpoints" / "4" / "rest")
  argv = ["--workdir", str(workdir), "--data", tiny_data, "--limit", "4", "--batch-size", "4"]
  assert evaluate.main(argv) == 0
  captured = capsys.readouterr()
  result = json.loads(captured.out.strip().splitlines()[-1])
  assert result["num_images"] == 4 and "d_real_score" not in result
  assert "no d_*_score" in captured.err


@pytest.mark.slow
def test_bad_data_is_one_line_error(trained_workdir, tmp_path, capsys):
  assert evaluate.main(["--workdir", trained_workdir, "--data", str(tmp_path)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("keypatch_jax.evaluate: error: ")


@pytest.mark.slow
def test_corrupt_shard_is_one_line_error_naming_it(trained_workdir, tiny_data, tmp_path, capsys):
  """A damaged TFRecord shard: one line naming the file and what to do, no traceback."""
  data, shard = corrupt_copy(tiny_data, tmp_path, "test")
  assert evaluate.main(["--workdir", trained_workdir, "--data", data, "--output", str(tmp_path / "m.json")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("keypatch_jax.evaluate: error: "), err
  assert shard in err[0] and "rerun" in err[0]
  assert not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_evaluate_fid_and_kid_per_mode(trained_workdir, tiny_data, inception_weights, tmp_path, capsys):
  """--inception adds KID for key, random, combine and noisy; the real features are cached beside the data.
  FID, undefined below 2049 images (singular covariances), is left out with one line saying so."""
  from keypatch_jax import dataset_meta, fid

  data = tmp_path / "data"
  shutil.copytree(tiny_data, data)
  argv = ["--workdir", trained_workdir, "--data", str(data), "--limit", "4", "--batch-size", "4"]
  assert evaluate.main([*argv, "--inception", inception_weights, "--kid-subsets", "5"]) == 0
  captured = capsys.readouterr()
  result = json.loads(captured.out.strip().splitlines()[-1])
  for prefix in ("", "random_", "combine_", "noisy_"):
    assert prefix + "fid" not in result
    assert np.isfinite(result[prefix + "kid"]) and result[prefix + "kid_std"] >= 0.0
    assert result[prefix + "fid_num_images"] == 4
  assert "combine_mask_iou" not in result  # no real image to compare a combination with
  table = captured.out.split("{")[0]
  assert "combine" in table.splitlines()[0] and any(line.startswith("kid ") for line in table.splitlines())
  assert "cached real-image Inception features" in captured.err
  notes = [line for line in captured.err.splitlines() if "FID" in line]
  assert notes == [
    "keypatch_jax.evaluate: warning: FID not reported: it needs at least 2049 images per set (more than the 2048 "
    "Inception features, else the covariances are singular), here 4 real and 4 generated; KID is unbiased at any size"
  ]
  # A second evaluation reads the cache: computing the real features again would fail here.
  meta = dataset_meta.load_meta(str(data))

  def no_extract(_):
    raise AssertionError("recomputed")

  cached = fid.real_features(meta, no_extract, inception_weights, limit=4, batch_size=4)
  assert cached.shape == (4, 2048)


def test_evaluate_without_the_inception_file_says_where_to_get_it(trained_workdir, tiny_data, tmp_path, capsys):
  argv = ["--workdir", trained_workdir, "--data", tiny_data, "--inception", str(tmp_path / "missing.pth")]
  assert evaluate.main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "pt_inception-2015-12-05-6726825d.pth" in err[0]
  assert "https://github.com/mseitzer/pytorch-fid/releases" in err[0]


@pytest.fixture(scope="module")
def test_only_data(tmp_path_factory) -> str:
  """8 synthetic 16x16 faces, all in the test split (--test-count = the source's size): no train split."""
  from preprocessing.__main__ import main

  out = str(tmp_path_factory.mktemp("test_only"))
  argv = ["--source", "synthetic", "--num-images", "8", "--seed", "1", "--image-size", "16", "--test-count", "8"]
  assert main([*argv, "--workers", "1", "--output", out, "--quiet"]) == 0
  return out


def _fake_workdir(path, data_dir: str) -> str:
  """A folder that passes the workdir checks (config.json, a checkpoint step) without a checkpoint to restore."""
  (path / "checkpoints" / "4").mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({"data_dir": data_dir}))
  return str(path)


def _one_error_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("keypatch_jax.evaluate: error: patch-blind baseline: "), err
  return err[0]


def test_missing_baseline_data_is_one_line_before_the_checkpoint_is_read(tiny_data, tmp_path, capsys):
  """The run's training data moved away, or a --baseline-data that does not exist: one line naming it and the flag."""
  gone = str(tmp_path / "gone")
  workdir = _fake_workdir(tmp_path / "work", gone)
  assert evaluate.main(["--workdir", workdir, "--data", tiny_data]) == 1
  line = _one_error_line(capsys)
  assert f"the run's training data (data_dir in {workdir}/config.json) {gone!r} does not exist" in line
  assert "pass --baseline-data DIR" in line
  assert evaluate.main(["--workdir", workdir, "--data", tiny_data, "--baseline-data", str(tmp_path)]) == 1
  line = _one_error_line(capsys)
  assert f"--baseline-data {str(tmp_path)!r} is not a preprocessed dataset (no dataset_info.json)" in line


def test_baseline_data_without_a_train_split_is_one_line(tiny_data, test_only_data, tmp_path, capsys):
  workdir = _fake_workdir(tmp_path / "work", test_only_data)  # a run "trained" on a test-only dataset
  assert evaluate.main(["--workdir", workdir, "--data", tiny_data]) == 1
  assert f"{test_only_data!r} has no train split (0 train images)" in _one_error_line(capsys)
  argv = ["--workdir", _fake_workdir(tmp_path / "work2", tiny_data), "--data", tiny_data]
  assert evaluate.main([*argv, "--baseline-data", test_only_data]) == 1
  assert f"--baseline-data {test_only_data!r} has no train split" in _one_error_line(capsys)


@pytest.mark.slow
def test_test_only_data_is_scored_against_the_runs_training_data(
  trained_workdir, tiny_data, test_only_data, tmp_path, capsys
):
  """A test-only dataset: blind_* comes from the run's own training data (80 images), or from --baseline-data."""
  argv = ["--workdir", trained_workdir, "--data", test_only_data]
  assert evaluate.main(argv) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  result = json.loads(printed[-1])
  assert result["num_images"] == 8 and result["baseline_images"] == 80
  assert result["baseline_data"] == tiny_data and result["baseline_from"] == "run"
  assert f"blind_* baseline: the train split of {tiny_data!r} (the run's training data), 80 images" in printed
  assert evaluate.main([*argv, "--baseline-data", tiny_data, "--baseline-images", "40"]) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  given = json.loads(printed[-1])
  assert given["baseline_from"] == "--baseline-data" and given["baseline_images"] == 40
  assert f"blind_* baseline: the train split of {tiny_data!r} (--baseline-data), 40 images" in printed
  assert given["mask_iou"] == result["mask_iou"]  # only the baseline changed
  means = baselines.train_means(dataset_meta.load_meta(tiny_data), 40)
  test = next(input_pipeline.eval_batches(dataset_meta.load_meta(test_only_data), "test", batch_size=8))
  expected = baselines.blind_metrics(means, test["image"], losses.mask_from_boxes(test["boxes"], 16))
  assert np.isclose(given["blind_mask_iou"], float(np.mean(expected["mask_iou"])), atol=1e-6)
