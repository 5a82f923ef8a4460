"""Resuming an output checks its content options (`preprocessing/fingerprint.py`): outputs written before an
option existed resume with that option's value then; unused options are not compared; a refusal names the values
and the flags that resume."""

from __future__ import annotations

import json
import os

import pytest

from preprocessing import __main__ as cli
from preprocessing import fingerprint, writer

SHA = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"


def _now(*flags, **extra):
  """The fingerprint of a run with `flags` (no weights read: `extra` adds the digest keys)."""
  args = cli.parse_args(["--source", "synthetic", "--output", "x", *flags])
  options = {k: v for k, v in cli.content_options(args).items() if k not in fingerprint.NON_CONTENT_OPTIONS}
  return {**options, **extra}


def _before_the_options_existed(fp):
  added = (*fingerprint.EARLIER_OPTIONS, *fingerprint.PRIOR_OPTIONS, "hed_weights_sha256")
  return {k: v for k, v in fp.items() if k not in added}


def test_an_output_older_than_an_option_compares_with_that_options_value_then():
  old = _before_the_options_existed(_now("--key-patches", "paper", "--edges", "gradient"))
  assert fingerprint.difference(old, _now("--key-patches", "paper", "--edges", "gradient")) is None
  words = fingerprint.difference(old, _now(hed_weights_sha256=SHA))  # today's defaults: parts, HED
  assert "edges 'gradient' there, 'hed' now" in words and "hed_weights_sha256 unused there, 4502df9d0a88… now" in words
  assert "rerun with " in words and "--edges gradient" in words and "--key-patches paper" in words
  assert "--min-area 0.05" in words  # recorded values come back as flags too
  assert "centre_weight unused there, 1.0 now" in words and "--centre-weight" not in words  # unused with edgeboxes


def test_options_the_others_leave_unused_are_not_compared():
  hed = _now("--edge-smoothing", "1", hed_weights_sha256=SHA)
  assert fingerprint.difference(hed, _now("--edge-smoothing", "3", hed_weights_sha256=SHA)) is None
  gradient = _now("--edges", "gradient", "--edge-smoothing", "1")
  assert "edge_smoothing 1.0 there, 3.0 now" in fingerprint.difference(
    gradient, _now("--edges", "gradient", "--edge-smoothing", "3")
  )
  boxes = _now(boxes_sha256="a" * 64)
  assert fingerprint.difference(boxes, {**_now("--edges", "gradient"), "boxes_sha256": "a" * 64}) is None
  other = fingerprint.difference(boxes, _now(boxes_sha256="b" * 64))
  assert other == "boxes_sha256 aaaaaaaaaaaa… there, bbbbbbbbbbbb… now; use an empty directory"


def test_other_hed_weights_say_which_to_give():
  words = fingerprint.difference(_now(hed_weights_sha256=SHA), _now(hed_weights_sha256="c" * 64))
  assert words == (
    "hed_weights_sha256 4502df9d0a88… there, cccccccccccc… now; rerun with the default HED weights "
    "(no --hed-weights, no $KEYPATCH_HED_WEIGHTS) to resume it, or use an empty directory"
  )
  words = fingerprint.difference(_now(hed_weights_sha256="c" * 64), _now("--edges", "gradient"))
  assert words.endswith(
    "rerun with --edges hed and --hed-weights FILE of SHA-256 cccccccccccc… to resume it, or use an empty directory"
  )


def test_boxes_from_a_file_do_not_compare_the_detection_options():
  boxes = _now(boxes_sha256="a" * 64)
  assert (
    fingerprint.difference(boxes, _now("--key-patches", "paper", "--min-area", "0.1", boxes_sha256="a" * 64)) is None
  )


def test_the_same_folder_written_another_way_is_the_same_source_and_a_moved_one_is_named(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  first = {**_now(), "source": f"folder:{tmp_path / 'faces'}"}
  for same in ("folder:faces", "folder:faces/", f"folder:{tmp_path}/./faces/"):
    assert fingerprint.difference(first, {**_now(), "source": same}) is None, same
  moved = fingerprint.difference(first, {**_now(), "source": "folder:/elsewhere/faces"})
  assert moved.endswith(f"rerun with --source folder:{tmp_path / 'faces'} to resume it, or use an empty directory")


def test_a_source_whose_items_changed_is_refused_and_an_output_older_than_the_check_is_not():
  first = _now(source_items=60, source_ids_sha256="d" * 64)
  grown = _now(source_items=64, source_ids_sha256="e" * 64)
  assert fingerprint.difference(first, grown) == (
    "source_ids_sha256 dddddddddddd… there, eeeeeeeeeeee… now, source_items 60 there, 64 now; "
    "the source's items changed: restore them to resume it, or use an empty directory"
  )
  assert fingerprint.difference(_now(), grown) is None  # run.json written before the check: nothing to compare


def _snapshot(out):
  return {
    os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
    for d, _, files in os.walk(out)
    for f in files
  }


def test_a_partial_output_of_an_older_version_resumes_with_the_flags_the_refusal_gives(tmp_path, capsys):
  out = tmp_path / "out"
  argv = ["--source", "synthetic", "--num-images", "24", "--image-size", "16", "--shard-size", "8"]
  argv += ["--workers", "1", "--quiet", "--output", str(out)]
  old_flags = ["--key-patches", "paper", "--edges", "gradient"]
  assert cli.main([*argv, *old_flags]) == 0
  whole = _snapshot(out)
  # What an older version left: a run.json without today's options, one shard unfinished, no dataset_info.json.
  run_json = out / writer.STATS_DIR / writer.RUN_FILE
  run_json.write_text(json.dumps(_before_the_options_existed(json.loads(run_json.read_text()))))
  first = sorted(p for p in whole if p.startswith("train-"))[0]
  os.remove(out / first)
  os.remove(out / "dataset_info.json")

  capsys.readouterr()
  with pytest.raises(SystemExit) as e:  # today's defaults (HED): refused, naming what to pass
    cli.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "made with different options" in err[0] and "edges 'gradient' there, 'hed' now" in err[0]
  flags = err[0].split("rerun with ")[1].split(" to resume it")[0].split()
  assert cli.main([*argv, *flags]) == 0
  resumed = _snapshot(out)
  changed = sorted(k for k in set(whole) | set(resumed) if resumed.get(k) != whole.get(k))
  assert changed == [f"{writer.STATS_DIR}/{writer.RUN_FILE}"]  # the older version's is kept; shards, info the same


def test_files_added_to_a_folder_before_a_rerun_are_refused_not_mixed_into_the_splits(tmp_path, capsys):
  import cv2

  from preprocessing import synthetic

  src, out = tmp_path / "faces", tmp_path / "out"
  src.mkdir()

  def add(k):
    cv2.imwrite(str(src / f"face{k:02d}.png"), synthetic.make_face(5, k, 96)[0][..., ::-1])

  for k in range(10):
    add(k)
  argv = ["--source", f"folder:{src}", "--output", str(out), "--image-size", "16", "--workers", "1", "--quiet"]
  argv += ["--edges", "gradient", "--shard-size", "4", "--test-count", "2"]
  assert cli.main(argv) == 0
  before = _snapshot(out)
  add(10)
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1 and "source_items 10 there, 11 now" in err[0], err
  assert "the source's items changed" in err[0]
  assert _snapshot(out) == before  # nothing written
  os.remove(src / "face10.png")
  assert cli.main(argv) == 0  # restored: it resumes (a complete dataset: nothing to do)
