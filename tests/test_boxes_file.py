"""Tests of `--boxes FILE`: the authors' .mat layout and the text formats, end to end through the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from keypatch_jax import features
from preprocessing import __main__ as cli
from preprocessing import boxes_file, synthetic

S = 32  # stored image side


def _face(path: Path, index: int, height: int = 128, width: int = 128) -> None:
  face, _ = synthetic.make_face(5, index)
  cv2.imwrite(str(path), cv2.resize(face, (width, height))[..., ::-1])


def _run(tmp_path: Path, src: Path, *extra: str, name: str = "out") -> tuple[dict, dict[str, np.ndarray]]:
  out = tmp_path / name
  argv = ["--source", f"folder:{src}", "--output", str(out), "--image-size", str(S)]
  assert cli.main([*argv, "--test-count", "1", "--workers", "1", "--quiet", *extra]) == 0
  import tensorflow as tf

  info = json.loads((out / features.INFO_FILE).read_text())
  files = [str(out / n) for s in ("train", "test") for n in info["shards"][s]]
  ds = tf.data.TFRecordDataset(files).map(lambda r: features.parse_example(r, info["num_patches"], S))
  return info, {ex["id"].decode(): ex["boxes"] for ex in ds.as_numpy_iterator()}


def _rows(num_rows: int, frame: float) -> np.ndarray:
  """[R, 3, 4] distinct in-frame boxes: row r's boxes shift with r."""
  rows = np.zeros((num_rows, 3, 4))
  for r in range(num_rows):
    for j in range(3):
      rows[r, j] = [(r + 10 * j) % 60, (2 * r + 5 * j) % 70, 32 + j, 40 - j]
  return rows * frame / 128


def test_mat_numbered_subset_rows_and_rejects(tmp_path):
  # A subset of a numbered folder: 000004 .. 000009, plus 000030 beyond the file's 20 rows.
  src = tmp_path / "faces"
  src.mkdir()
  numbers = [4, 5, 6, 7, 8, 9, 30]
  for k in numbers:
    _face(src / f"{k:06d}.png", k)
  rows = _rows(20, 128)
  rows[6, 1] = [100, 10, 40, 30]  # image 000007: x + w = 140 > 128
  rows[7, 2, 2] = 0  # image 000008: an empty box
  mat = tmp_path / "allbbs.mat"
  scipy.io.savemat(mat, {"allbbs": rows.astype(np.uint8)})
  info, got = _run(tmp_path, src, "--boxes", str(mat), "--boxes-scale", "128", "--preview", "2")
  assert info["rejects"] == {"box_outside_image": 2, "no_boxes": 1}
  assert sorted(got) == ["000004.png", "000005.png", "000006.png", "000009.png"]
  for name, boxes in got.items():
    k = int(name[:6])
    np.testing.assert_allclose(boxes, rows[k - 1] * S / 128, atol=1e-5)
  b = info["boxes_file"]
  assert b["format"] == "mat" and b["scale"] == 128 and b["row_rule"] == "number" and b["num_rows"] == 20
  assert b["sha256"] == hashlib.sha256(mat.read_bytes()).hexdigest() and b["size_bytes"] == mat.stat().st_size
  assert b["path"] == str(mat) and info["edge_method"] == "boxes_file"
  assert len(list((tmp_path / "out" / "preview").glob("*.png"))) == 2


def test_mat_fractions_non_square_and_index_rows(tmp_path):
  # CompCars layout: F = 1 (fractions of each side); names not numbered -> row = sorted position.
  src = tmp_path / "cars"
  src.mkdir()
  names = ["b.png", "a.png", "c.png"]
  for i, name in enumerate(names):
    _face(src / name, i, height=96, width=144)
  rows = _rows(3, 1.0)
  mat = tmp_path / "compcar_allbbs.mat"
  scipy.io.savemat(mat, {"allbbs": rows})
  info, got = _run(tmp_path, src, "--boxes", str(mat), "--boxes-scale", "1")
  assert info["boxes_file"]["row_rule"] == "index" and info["rejects"] == {}
  for r, name in enumerate(sorted(names)):
    np.testing.assert_allclose(got[name], rows[r] * S, atol=1e-5)  # both sides become S


def test_mat_v73_reads_like_v5(tmp_path):
  import h5py

  rows = _rows(5, 128)
  v5, v73 = tmp_path / "v5.mat", tmp_path / "v73.mat"
  scipy.io.savemat(v5, {"allbbs": rows})
  with h5py.File(v73, "w", userblock_size=512) as f:
    f["allbbs"] = rows.T  # MATLAB writes column-major arrays: HDF5 sees them transposed
  with open(v73, "r+b") as f:  # the MAT 7.3 header scipy checks: text, subsystem, version 0x0200, 'IM'
    f.write(b"MATLAB 7.3 MAT-file".ljust(116) + bytes(8) + b"\x00\x02IM")
  np.testing.assert_array_equal(boxes_file.load(str(v73)).rows, boxes_file.load(str(v5)).rows)


def _text_folder(tmp_path: Path) -> Path:
  src = tmp_path / "mine"
  (src / "sub").mkdir(parents=True)
  for i, name in enumerate(["p.png", "q.png", "r.png", "sub/s.png", "t.png"]):
    _face(src / name, i, height=120, width=100)
  return src


BOXES = {
  "p.png": [[10, 20, 30, 40], [50, 10, 40, 30], [20, 60, 60, 40], [0, 0, 5, 5]],  # 4 given: first 3 kept
  "q.png": [[0, 0, 100, 120], [1, 2, 3, 4], [5, 6, 7, 8]],
  "sub/s.png": [[10, 10, 20, 20], [30, 30, 20, 20], [60, 90, 40, 31]],  # y + h = 121 > 120: outside
  "t.png": [[10, 10, 20, 20], [30, 30, 20, 20]],  # 2 < N
}  # r.png has no line


def test_csv_and_jsonl_round_trip_with_rejects(tmp_path):
  src = _text_folder(tmp_path)
  csv_path, jsonl_path = tmp_path / "boxes.csv", tmp_path / "boxes.jsonl"
  lines = ["id,x1,y1,w1,h1,x2,y2,w2,h2,x3,y3,w3,h3", "# a comment"]
  lines += [",".join([k, *(str(v) for b in bs for v in b)]) for k, bs in BOXES.items()]
  csv_path.write_text("\n".join(lines) + "\n")
  jsonl_path.write_text("".join(json.dumps({"id": k, "boxes": bs}) + "\n" for k, bs in BOXES.items()))
  results = [_run(tmp_path, src, "--boxes", str(p), name=p.suffix[1:]) for p in (csv_path, jsonl_path)]
  for info, got in results:
    assert info["rejects"] == {"box_outside_image": 1, "no_boxes": 1, "too_few_boxes": 1}
    assert sorted(got) == ["p.png", "q.png"] and info["boxes_file"]["scale"] == "pixels"
    for name in got:  # pixels of the 100 x 120 image -> S x S
      np.testing.assert_allclose(got[name], np.array(BOXES[name][:3]) * np.array([S / 100, S / 120] * 2), atol=1e-5)
  (csv_info, csv_got), (jsonl_info, jsonl_got) = results
  assert csv_info["boxes_file"]["format"] == "csv" and jsonl_info["boxes_file"]["format"] == "jsonl"
  assert all(np.array_equal(csv_got[k], jsonl_got[k]) for k in csv_got)


@pytest.mark.parametrize(
  "content, extra, message",
  [
    ("mat", [], "needs --boxes-scale"),
    ("mat2", ["--boxes-scale", "128"], "fewer than --num-patches"),
    ("p.png,1,2,3\n", [], "not a multiple of 4"),
    ("nobody.png,1,2,3,4,5,6,7,8,9,10,11,12\n", [], "none of its boxes belong"),
    ("p.png,1,2,3,4\np.png,1,2,3,4\n", [], "appears twice"),
  ],
)
def test_bad_boxes_file_is_one_line(tmp_path, capsys, content, extra, message):
  src = _text_folder(tmp_path)
  if content.startswith("mat"):
    path = tmp_path / "b.mat"
    scipy.io.savemat(path, {"allbbs": _rows(5, 128)[:, : 2 if content == "mat2" else 3]})
  else:
    path = tmp_path / "b.csv"
    path.write_text(content)
  argv = ["--source", f"folder:{src}", "--output", str(tmp_path / "out"), "--boxes", str(path), *extra]
  with pytest.raises(SystemExit) as e:
    cli.main([*argv, "--workers", "1", "--quiet", "--test-count", "1"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--boxes" in err[0] and message in err[0], err


def test_row_rules():
  assert boxes_file.numbered_row("000123.jpg") == 122 and boxes_file.numbered_row("sub/7.png") == 6
  assert boxes_file.numbered_row("img_1.jpg") is None and boxes_file.numbered_row("123") is None
  assert boxes_file.resolve_row_rule(["000001.jpg", "a/000002.jpg"], "auto") == "number"
  assert boxes_file.resolve_row_rule(["000001.jpg", "a/000001.jpg"], "auto") == "index"  # repeated number
  assert boxes_file.resolve_row_rule(["000001.jpg", "x.jpg"], "auto") == "index"
  assert boxes_file.resolve_row_rule(["000001.jpg", "x.jpg"], "number") == "number"
