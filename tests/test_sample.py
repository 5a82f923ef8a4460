"""`python -m keypatch_jax.sample`: every mode from a real checkpoint, grid sizes, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from keypatch_jax import patches, sample, visualize

S, N = 16, 3  # the tiny dataset
PAD, HEADER = visualize.PAD, visualize.HEADER
CELL = 128  # a 16x16 image is enlarged 8x: every cell at least 128 px (visualize.MIN_CELL)


def grid_shape(rows: int, columns: int, blocks: int = 1) -> tuple[int, int, int]:
  """sample's layout: a title and a label line, rows x columns cells, `blocks` grids side by side."""
  return 2 * HEADER + rows * (CELL + PAD) + PAD, blocks * (columns * (CELL + PAD) + PAD), 3


@pytest.mark.slow
@pytest.mark.parametrize(
  "mode, columns, blocks",
  [("key", N + 3, 1), ("random", N + 3, 1), ("noisy", N + 3, 1), ("combine", N + 2, 1), ("permute", N + 3, 6)],
)
def test_every_mode_writes_the_requested_grid(trained_workdir, tiny_data, tmp_path, mode, columns, blocks):
  out = str(tmp_path / f"{mode}.png")
  argv = ["--workdir", trained_workdir, "--data", tiny_data, "--output", out, "--mode", mode, "--num", "4"]
  assert sample.main(argv + ["--noise", "0.3"]) == 0
  grid = cv2.imread(out)
  assert grid.shape == grid_shape(4, columns, blocks)


@pytest.mark.slow
def test_permute_mode_is_order_invariant(trained_workdir, tiny_data, tmp_path):
  out = str(tmp_path / "permute.png")
  assert sample.main(["--workdir", trained_workdir, "--data", tiny_data, "--output", out, "--mode", "permute"]) == 0
  grid = cv2.imread(out)
  width = (N + 3) * (CELL + PAD) + PAD
  generated = [grid[2 * HEADER :, b * width + PAD + (N + 1) * (CELL + PAD) :][:, :CELL] for b in range(6)]
  for other in generated[1:]:
    assert np.abs(other.astype(int) - generated[0].astype(int)).max() <= 1


@pytest.mark.slow
def test_own_patch_folder_any_n(trained_workdir, tmp_path):
  folder = tmp_path / "mine"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(5):  # N=5 patches of odd sizes, for a model trained with N=3
    cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(0, 255, (10 + i, 7, 3), dtype=np.uint8))
  out = str(tmp_path / "mine.png")
  argv = ["--workdir", trained_workdir, "--patches", str(folder), "--output", out, "--num", "2", "--batch-stats"]
  assert sample.main(argv) == 0
  assert cv2.imread(out).shape == grid_shape(2, 5 + 2)


@pytest.mark.slow
def test_sampling_never_reads_the_optimizer_state(trained_workdir, tiny_data, tmp_path):
  workdir = str(tmp_path / "work")
  shutil.copytree(trained_workdir, workdir)
  for step in os.listdir(os.path.join(workdir, "checkpoints")):
    rest = os.path.join(workdir, "checkpoints", step, "rest")
    if os.path.isdir(rest):
      shutil.rmtree(rest)
  out = str(tmp_path / "g.png")
  assert sample.main(["--workdir", workdir, "--data", tiny_data, "--output", out, "--num", "2", "--raw"]) == 0
  assert cv2.imread(out).shape == grid_shape(2, N + 3)


def test_random_boxes_pass_the_size_filter():
  boxes = patches.random_boxes(np.random.default_rng(0), 50, 3, 32, 0.05, 0.25, 3.0)
  x, y, w, h = np.moveaxis(boxes, -1, 0)
  area, ratio = w * h / 32**2, w / h
  assert boxes.shape == (50, 3, 4)
  assert ((area >= 0.05) & (area <= 0.25) & (ratio >= 1 / 3) & (ratio <= 3)).all()
  assert ((x >= 0) & (y >= 0) & (x + w <= 32) & (y + h <= 32)).all()


def test_combine_takes_each_patch_from_a_different_image():
  sets = np.arange(4)[:, None, None, None, None] * 10 + np.arange(3)[None, :, None, None, None]
  combined, _ = patches.combine(np.broadcast_to(sets, (4, 3, 1, 1, 1)).astype(np.float32))
  source = combined[..., 0, 0, 0] // 10
  slot = combined[..., 0, 0, 0] % 10
  assert (slot == np.arange(3)).all()
  assert all(len(set(row)) == 3 for row in source.tolist())


def _dataset_copy(tiny_data: str, tmp_path, **info_changes) -> str:
  data = str(tmp_path / "data")
  shutil.copytree(tiny_data, data)
  path = os.path.join(data, "dataset_info.json")
  with open(path) as f:
    info = json.load(f)
  info.update(info_changes)
  with open(path, "w") as f:
    json.dump(info, f)
  return data


BAD_INPUTS = {
  "missing workdir": lambda w, d, t: (["--workdir", str(t / "nope"), "--data", d], "does not exist"),
  "not a workdir": lambda w, d, t: (["--workdir", str(t), "--data", d], "not a training workdir"),
  "no checkpoint": lambda w, d, t: (["--workdir", _no_checkpoints(w, t), "--data", d], "no checkpoint"),
  "bad step": lambda w, d, t: (["--workdir", w, "--data", d, "--step", "3"], "--step 3"),
  "other image size": lambda w, d, t: (["--workdir", w, "--data", _dataset_copy(d, t, image_size=32)], "16x16"),
  "other N": lambda w, d, t: (["--workdir", w, "--data", _dataset_copy(d, t, num_patches=4)], "N=3"),
  "--num-patches vs boxes": lambda w, d, t: (["--workdir", w, "--data", d, "--num-patches", "2"], "--num-patches"),
  "other format": lambda w, d, t: (["--workdir", w, "--data", str(t)], "not a preprocessed dataset"),
  "unreadable patch": lambda w, d, t: (["--workdir", w, "--patches", _bad_patch_dir(t)], "cannot read patch image"),
  "empty patch dir": lambda w, d, t: (["--workdir", w, "--patches", str(t)], "holds no files"),
  "empty test split": lambda w, d, t: (["--workdir", w, "--data", _empty_test_copy(d, t)], "test split is empty"),
}


def _empty_test_copy(tiny_data: str, tmp_path) -> str:
  """The tiny dataset whose test shard holds no records (every test image was rejected)."""
  data = _dataset_copy(tiny_data, tmp_path)
  with open(os.path.join(data, "dataset_info.json")) as f:
    info = json.load(f)
  for name in info["shards"]["test"]:
    open(os.path.join(data, name), "wb").close()
    info["shard_files"][name] = {"records": 0, "bytes": 0}
  info["counts"]["test"] = 0
  with open(os.path.join(data, "dataset_info.json"), "w") as f:
    json.dump(info, f)
  return data


def _no_checkpoints(workdir: str, tmp_path) -> str:
  empty = tmp_path / "empty_work"
  empty.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), empty / "config.json")
  return str(empty)


def _bad_patch_dir(tmp_path) -> str:
  folder = tmp_path / "bad_patches"
  folder.mkdir()
  (folder / "broken.png").write_bytes(b"not a png at all")
  return str(folder)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_error(trained_workdir, tiny_data, tmp_path, capsys, case):
  argv, expected = BAD_INPUTS[case](trained_workdir, tiny_data, tmp_path)
  code = sample.main(argv + ["--output", str(tmp_path / "x.png")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1
  assert len(err) == 1, err
  assert err[0].startswith("keypatch_jax.sample: error: ") and expected in err[0], err[0]


def _parent_of_run(workdir: str, tmp_path) -> str:
  """A folder whose `train/` sub-folder holds a run, as the demo's WORKDIR does."""
  run = tmp_path / "demo_work" / "train"
  run.mkdir(parents=True)
  shutil.copy(os.path.join(workdir, "config.json"), run / "config.json")
  return str(tmp_path / "demo_work")


def _a_file(tmp_path):
  path = tmp_path / "plain_file"
  path.write_text("not a folder")
  return path


# Mistakes found from the arguments and the file system alone: (argv, exit status, expected text).
PREFLIGHT = {
  "output is a folder": lambda w, d, t: (["--workdir", w, "--data", d, "--output", str(t)], 2, "is a directory"),
  "output suffix": lambda w, d, t: (["--workdir", w, "--data", d, "--output", str(t / "g.txt")], 2, "ending in .png"),
  "output under a file": lambda w, d, t: (
    ["--workdir", w, "--data", d, "--output", str(_a_file(t) / "g.png")],
    2,
    "is a file, not a directory",
  ),
  "missing --patches folder": lambda w, d, t: (
    ["--workdir", w, "--patches", str(t / "none"), "--output", str(t / "g.png")],
    1,
    "--patches",
  ),
  "parent of a run": lambda w, d, t: (
    ["--workdir", _parent_of_run(w, t), "--data", d, "--output", str(t / "g.png")],
    1,
    f"did you mean --workdir {t / 'demo_work' / 'train'}?",
  ),
  "empty workdir": lambda w, d, t: (
    ["--workdir", _no_checkpoints(w, t), "--data", d, "--output", str(t / "g.png")],
    1,
    "no checkpoint",
  ),
  "missing data": lambda w, d, t: (
    ["--workdir", w, "--data", str(t / "none"), "--output", str(t / "g.png")],
    1,
    "does not exist",
  ),
}


@pytest.mark.parametrize("case", sorted(PREFLIGHT))
def test_argument_mistakes_are_reported_before_any_model_is_built(
  trained_workdir, tiny_data, tmp_path, capsys, monkeypatch, case
):
  from keypatch_jax import inference

  def never(*args, **kwargs):
    raise AssertionError("restored a checkpoint before checking the arguments")

  monkeypatch.setattr(inference, "load_run", never)
  argv, status, expected = PREFLIGHT[case](trained_workdir, tiny_data, tmp_path)
  try:
    code = sample.main(argv)
  except SystemExit as e:  # a bad option ends the command as argparse's errors do
    code = e.code
  err = capsys.readouterr().err.strip().splitlines()
  assert code == status
  assert len(err) == 1 and err[0].startswith("keypatch_jax.sample: error: ") and expected in err[0], err


def test_help_explains_the_modes_and_shows_defaults(capsys):
  with pytest.raises(SystemExit) as e:
    sample.parse_args(["--help"])
  assert e.value.code == 0
  text = " ".join(capsys.readouterr().out.split())
  for mode, explanation in patches.MODE_HELP.items():
    assert f"{mode} {' '.join(explanation.split())}" in text, mode
  assert "--mode (ignored with --patches)" in text
  assert "(default: 8)" in text and "(default: key)" in text


@pytest.mark.slow
def test_cli_subprocess(trained_workdir, tiny_data, tmp_path):
  out = str(tmp_path / "cli.png")
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
  base = [sys.executable, "-m", "keypatch_jax.sample", "--workdir", trained_workdir, "--output", out]
  ok = subprocess.run(base + ["--data", tiny_data, "--num", "3"], capture_output=True, text=True, env=env)
  assert ok.returncode == 0, ok.stderr
  assert cv2.imread(out).shape == grid_shape(3, N + 3)
  for chatter in ("orbax", "read-only", "libtpu", "oneDNN", "checkpoint_manager"):  # library logs stay off
    assert chatter not in ok.stderr, ok.stderr[-2000:]
  bad_argv = [sys.executable, "-m", "keypatch_jax.sample", "--workdir", str(tmp_path / "missing"), "--data", tiny_data]
  bad = subprocess.run(bad_argv + ["--output", out], capture_output=True, text=True, env=env)
  assert bad.returncode == 1
  lines = bad.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("keypatch_jax.sample: error: ") and "does not exist" in lines[0], lines
