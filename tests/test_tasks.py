"""Tests of `--num-tasks K --task-index I` and `--merge`: K tasks write what one task writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from keypatch_jax import features
from preprocessing import __main__ as cli
from preprocessing import writer

COMMON = ["--source", "synthetic", "--num-images", "50", "--image-size", "16", "--seed", "2"]
COMMON += ["--shard-size", "8", "--test-count", "6", "--workers", "1", "--quiet"]


def _files(out: Path) -> dict[str, bytes]:
  return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_task_shards_are_disjoint_and_cover_the_plan():
  shards = writer.plan_shards([f"{i}.jpg" for i in range(100)], 10, 8)
  parts = [writer.task_shards(shards, 3, i) for i in range(3)]
  names = [s.name for part in parts for s in part]
  assert sorted(names) == sorted(s.name for s in shards) and len(set(names)) == len(names)
  assert all(len(part) in (4, 5) for part in parts)


def test_two_tasks_and_merge_equal_one_task(tmp_path, capsys):
  one, two = tmp_path / "one", tmp_path / "two"
  assert cli.main([*COMMON, "--output", str(one)]) == 0
  assert cli.main([*COMMON, "--output", str(two), "--num-tasks", "2", "--task-index", "1"]) == 0
  assert not (two / features.INFO_FILE).exists()
  # Task 0 has not run: the merge names it, in one line.
  with pytest.raises(SystemExit) as e:
    cli.main([*COMMON, "--output", str(two), "--num-tasks", "2", "--merge"])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1, err
  assert "--merge" in err[0] and "--task-index 0 " in err[0]
  assert cli.main([*COMMON, "--output", str(two), "--num-tasks", "2", "--task-index", "0"]) == 0
  assert cli.main([*COMMON, "--output", str(two), "--num-tasks", "2", "--merge"]) == 0
  a, b = _files(one), _files(two)
  assert list(a) == list(b)
  assert [k for k in a if a[k] != b[k]] == []  # shards, stats, run.json and dataset_info.json, byte for byte
  assert len([k for k in a if k.endswith(".tfrecord")]) == 7


@pytest.mark.parametrize(
  "extra, option",
  [
    (["--num-tasks", "2"], "--task-index"),
    (["--num-tasks", "2", "--task-index", "2"], "--task-index"),
    (["--num-tasks", "2", "--task-index", "0", "--merge"], "--merge"),
    (["--num-tasks", "0"], "--num-tasks"),
  ],
)
def test_bad_task_options_are_one_line(tmp_path, capsys, extra, option):
  with pytest.raises(SystemExit) as e:
    cli.main([*COMMON, "--output", str(tmp_path / "out"), *extra])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1 and option in err[0], err
