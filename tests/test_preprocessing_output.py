"""Preprocessing's output problems are one line (issue 21 part 5): disk full, read-only, an empty test split."""

from __future__ import annotations

import errno
import os

import cv2

from preprocessing import __main__ as cli
from preprocessing import synthetic, writer


def _argv(src, out, *extra):
  return ["--source", f"folder:{src}", "--output", str(out), "--image-size", "16", "--workers", "1", "--quiet", *extra]


def _faces(folder, names):
  folder.mkdir(exist_ok=True)
  for k, name in enumerate(names):
    cv2.imwrite(str(folder / name), synthetic.make_face(5, k, 96)[0][..., ::-1])


def _snapshot(out):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, files in os.walk(out) for f in files}


def test_a_complete_dataset_is_not_written_again_and_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
  src, out = tmp_path / "src", tmp_path / "out"
  _faces(src, [f"face{k}.png" for k in range(6)])
  (src / "notes.txt").write_text("not an image")  # a reject: rejects.jsonl is not empty
  assert cli.main(_argv(src, out, "--test-count", "1", "--preview", "2")) == 0
  before = _snapshot(out)

  # A rerun of the complete dataset writes nothing (a read-only mount: every write would raise).
  def refuse(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", str(out))

  monkeypatch.setattr(writer, "write_text_atomic", refuse)
  capsys.readouterr()
  assert cli.main(_argv(src, out, "--test-count", "1", "--preview", "2")) == 0
  assert _snapshot(out) == before
  assert capsys.readouterr().out.splitlines()[0] == (
    f"{out} was already complete, no shard written: 5 train + 1 test examples "
    f"(1 rejected: {{'not_an_image': 1}}, listed in {out}/rejects.jsonl)"
  )
  monkeypatch.undo()
  capsys.readouterr()

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "new" / ".tmp.train-00000-of-00001"))

  monkeypatch.setattr(writer, "write_shard", full)
  assert cli.main(_argv(src, tmp_path / "new", "--test-count", "1")) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "No space left on device" in err[0] and "--output" in err[0] and "rerun" in err[0]


def test_a_test_split_of_rejects_is_a_warning(tmp_path, capsys):
  src = tmp_path / "src"
  names = [f"img{k:03d}" for k in range(40)]
  by_hash = sorted(names, key=lambda n: writer.id_hash(n + ".png"))
  _faces(src, [n + ".png" for n in by_hash[2:8]])
  for n in by_hash[:2]:  # the two images the hash split holds out for the test split are rejects
    (src / (n + ".png")).write_bytes(b"not an image at all")
  assert cli.main(_argv(src, tmp_path / "out", "--test-count", "2")) == 0
  captured = capsys.readouterr()
  assert "+ 0 test examples" in captured.out
  warning = [line for line in captured.err.splitlines() if "warning" in line]
  assert len(warning) == 1 and "test split is empty" in warning[0] and "--test-count" in warning[0]
