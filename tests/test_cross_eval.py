"""benchmarks/cross_eval.py: its checks, then end to end on numbered synthetic faces and a boxes file made here."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "cross_eval.py")
SPEC = importlib.util.spec_from_file_location("cross_eval", SCRIPT)
cross_eval = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(cross_eval)

NUM_FACES = 44  # ids 1..44: 1..36 to train, 37..44 to test
CELL = re.compile(r"\d\.\d{3} \(\d\.\d{3}\) / -?\d+\.\d dB \(-?\d+\.\d\)")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
  """half/00000k.jpg: 89 x 109 synthetic faces like CelebA's half-size copies; full/000001.jpg: a full-size one
  (the same id in a second folder); boxes.mat: `allbbs` [44, 3, 4] in the 128 x 128 frame of the crop."""
  import cv2
  import scipy.io

  from preprocessing import synthetic

  root = tmp_path_factory.mktemp("cross_faces")
  (root / "half").mkdir()
  (root / "full").mkdir()
  for k in range(1, NUM_FACES + 1):
    face, _ = synthetic.make_face(0, k, pose="aligned")
    cv2.imwrite(str(root / "half" / f"{k:06d}.jpg"), cv2.resize(face, (89, 109))[..., ::-1])
  cv2.imwrite(str(root / "full" / "000001.jpg"), cv2.resize(face, (178, 218))[..., ::-1])
  rng = np.random.default_rng(0)
  parts = np.array([[30, 40, 28, 24], [70, 40, 28, 24], [46, 80, 36, 26]], np.float64)  # eyes, mouth
  allbbs = parts[None] + rng.uniform(-4, 4, (NUM_FACES, 3, 4)) * [1, 1, 0.5, 0.5]
  scipy.io.savemat(str(root / "boxes.mat"), {"allbbs": allbbs})
  return root


def _argv(faces, workdir, *extra) -> list[str]:
  argv = ["--boxes", str(faces / "boxes.mat"), "--folder", str(faces / "half"), "--folder", str(faces / "full")]
  argv += ["--workdir", str(workdir), "--train-ids", "1:37", "--test-ids", "37:45", "--config", "tiny"]
  return [*argv, "--epochs", "1", "--workers", "1", "--quiet", *extra]


def _usage_error(argv, capsys) -> str:
  with pytest.raises(SystemExit) as e:
    cross_eval.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("cross_eval.py: error: "), err
  return err[0]


def test_options_and_faces_are_checked_before_anything_slow(faces, tmp_path, capsys):
  work = tmp_path / "work"
  assert "overlap" in _usage_error(_argv(faces, work, "--test-ids", "30:45"), capsys)
  assert "--image-size: set by cross_eval.py itself" in _usage_error(_argv(faces, work, "--image-size", "64"), capsys)
  assert "--min-area 2.0: must be in (0, 1]" in _usage_error(_argv(faces, work, "--min-area", "2"), capsys)
  full_first = _argv(faces, work)
  full_first[3], full_first[5] = full_first[5], full_first[3]  # the full-size folder first: its 000001.jpg wins
  line = _usage_error(full_first, capsys)
  assert "several sizes" in line and "178x218" in line and "89x109" in line
  assert not work.exists()  # nothing written


def test_an_id_in_two_folders_is_taken_from_the_first(faces):
  chosen = cross_eval.numbered_faces([str(faces / "half"), str(faces / "full")], 1, 3)
  assert chosen == {k: str(faces / "half" / f"{k:06d}.jpg") for k in (1, 2)}


@pytest.mark.slow
def test_cross_evaluation_end_to_end_reuses_and_redoes(faces, tmp_path, capsys):
  """Both kinds trained 1 epoch (tiny config), each evaluated on both: the table, the JSON; a rerun with
  --redo ours keeps the authors' data and model; other options on the same workdir are refused."""
  work = tmp_path / "work"
  assert cross_eval.main(_argv(faces, work)) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  assert result == json.loads((work / "cross_eval.json").read_text())
  assert result["faces"] == {"train": 36, "test": 8} and result["center_crop"] == 54 and result["image_size"] == 16
  assert result["reused"] == []
  header = lines.index("| trained on ↓, evaluated with the key patches of → | our detection | the authors' boxes |")
  assert lines[header + 1] == "|---|---|---|"
  for row, label in ((2, "our detection"), (3, "the authors' boxes")):
    cells = lines[header + row].strip("| ").split(" | ")
    assert cells[0] == label and len(cells) == 3 and all(CELL.fullmatch(c) for c in cells[1:]), cells
  examples = result["examples"]
  assert examples["authors"] == {"train": 36, "test": 8}  # every face has its boxes
  for row in ("ours", "authors"):
    for col in ("ours", "authors"):
      cell = result["cells"][f"{row}_on_{col}"]
      assert cell["num_images"] == examples[col]["test"] and cell["baseline_images"] == examples[row]["train"]
      assert 0 <= cell["mask_iou"] <= 1 and 0 <= cell["blind_mask_iou"] <= 1
      assert cell["mask_iou_gain"] == pytest.approx(cell["mask_iou"] - cell["blind_mask_iou"], abs=1e-4)
      evaluated = json.loads((work / "evals" / f"{row}_on_{col}.json").read_text())
      assert evaluated["baseline_data"] == str(work / row / "train_data")  # the training set's baseline
  checkpoints = work / "authors" / "model" / "checkpoints"
  before = {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")}

  assert cross_eval.main(_argv(faces, work, "--redo", "ours")) == 0
  again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert again["reused"] == ["authors/train_data", "authors/test_data", "authors/model"]
  assert {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")} == before
  assert again["cells"]["authors_on_authors"] == result["cells"]["authors_on_authors"]

  line = _usage_error(_argv(faces, work, "--epochs", "2"), capsys)
  assert f"{work / 'ours'} was made for other options (epochs); pass --redo ours" in line
