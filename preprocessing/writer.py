"""The shard plan, atomic shard writing, resume, and `dataset_info.json`.

Plan: the `test_count` ids with the smallest sha1 form the test split (stable
across runs, machines and worker counts); each split's items, in source order,
are cut into fixed `shard_size` chunks, one shard per chunk, so the `-of-N`
totals are known before any detection. A shard holds the accepted examples of
its chunk in source order.

Atomicity: a shard is written to `.tmp.NAME`, its stats (record count, byte
size, rejected items) to `_chunks/NAME.json` (temp + rename), then the shard is
renamed to `NAME`. A shard whose stats exist and whose file has the recorded
size is finished and skipped on a rerun; a missing, truncated or emptied one is
written again; leftover temp files are deleted. `dataset_info.json` and
`rejects.jsonl` (every rejected item: id, path, reason) are written last, from
the stats of all shards, and only when their content changes: a rerun of a
complete dataset writes nothing (it works on a read-only mount).

Tasks (`--num-tasks K --task-index I`): task I writes every K-th shard of the
plan starting at I, into the same output directory; each removes only its own
temp files. The plan does not depend on K, so K tasks write exactly the shards
of a one-task run, and a final `--merge` writes `dataset_info.json` once every
shard is finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from keypatch_jax import errors, features

STATS_DIR = "_chunks"
RUN_FILE = "run.json"
REJECTS_FILE = "rejects.jsonl"  # one JSON object per rejected item: {"id", "path", "reason"}
TMP_PREFIX = ".tmp."
SPLITS = ("train", "test")


class OutputError(errors.UsageError):
  """`--output` cannot be used (one-line message, exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Shard:
  """One output shard: its file name and the source indices it covers (sorted)."""

  split: str
  name: str
  indices: tuple[int, ...]


def id_hash(example_id: str) -> str:
  """sha1 hex of an id (the split key)."""
  return hashlib.sha1(features.id_bytes(example_id)).hexdigest()


def test_indices(ids: Sequence[str], test_count: int) -> set[int]:
  """Indices of the `test_count` ids with the smallest sha1 (ties by id)."""
  order = sorted(range(len(ids)), key=lambda i: (id_hash(ids[i]), ids[i]))
  return set(order[:test_count])


def plan_shards(ids: Sequence[str], test_count: int, shard_size: int) -> list[Shard]:
  """Splits and shards all items. Train shards first, then test shards."""
  test = test_indices(ids, test_count)
  by_split = {
    "train": [i for i in range(len(ids)) if i not in test],
    "test": sorted(test),
  }
  shards = []
  for split in SPLITS:
    idx = by_split[split]
    n = (len(idx) + shard_size - 1) // shard_size
    for k in range(n):
      chunk = tuple(idx[k * shard_size : (k + 1) * shard_size])
      shards.append(Shard(split, features.shard_name(split, k, n), chunk))
  return shards


def _gfile():
  import tensorflow as tf

  return tf.io.gfile


def write_text_atomic(path: str, text: str, tag: str = "") -> None:
  """Writes `text` to `path` via a temp file (its name + `tag`) and a rename (local or gs://)."""
  gfile = _gfile()
  tmp = os.path.join(os.path.dirname(path), TMP_PREFIX + os.path.basename(path) + tag)
  with gfile.GFile(tmp, "w") as f:
    f.write(text)
  gfile.rename(tmp, path, overwrite=True)


def write_json_atomic(path: str, obj: Any, tag: str = "") -> None:
  """Writes JSON to `path` via a temp file (its name + `tag`) and a rename (local or gs://)."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", tag)


def read_json(path: str) -> Any:
  with _gfile().GFile(path, "r") as f:
    return json.load(f)


def prepare_output(
  out_dir: str,
  fingerprint: dict[str, Any],
  owned: Sequence[Shard] | None,
  tag: str,
  difference: Callable[[dict[str, Any], dict[str, Any]], str | None],
) -> None:
  """Creates `out_dir`, removes stale temp files, and checks a resumed run's options.

  Args:
    out_dir: the output directory.
    fingerprint: the content options; `_chunks/run.json` holds the first run's.
    owned: the shards this process writes when several tasks share `out_dir`
      (only their temp files are removed: other tasks' are in flight); None
      for a one-task run (every temp file is stale).
    tag: suffix of this task's temp file for `run.json` (tasks may race on it).
    difference: (first run's, this run's fingerprint) -> what differs, in
      words, or None when the content is the same (`fingerprint.difference`).

  Raises:
    OutputError: when `out_dir` holds shards made with different options.
  """
  gfile = _gfile()
  if not gfile.isdir(os.path.join(out_dir, STATS_DIR)):  # a finished dataset on a read-only mount is not written
    gfile.makedirs(os.path.join(out_dir, STATS_DIR))
  if owned is None:
    dirs = (out_dir, os.path.join(out_dir, STATS_DIR))
    stale = [p for d in dirs for p in gfile.glob(os.path.join(d, TMP_PREFIX + "*"))]
  else:
    stale = [os.path.join(out_dir, TMP_PREFIX + s.name) for s in owned]
    stale += [os.path.join(out_dir, STATS_DIR, TMP_PREFIX + s.name + ".json") for s in owned]
  for path in stale:
    if gfile.exists(path):
      gfile.remove(path)
  run_path = os.path.join(out_dir, STATS_DIR, RUN_FILE)
  if gfile.exists(run_path):
    differs = difference(read_json(run_path), json.loads(json.dumps(fingerprint)))
    if differs:
      raise OutputError(f"--output {out_dir}: holds a dataset (or part of one) made with different options ({differs})")
  else:
    write_json_atomic(run_path, fingerprint, tag)


def is_done(out_dir: str, shard: Shard) -> bool:
  """Whether `shard` was finished by an earlier run and its file is intact (the recorded size)."""
  gfile = _gfile()
  path, stats_path = os.path.join(out_dir, shard.name), os.path.join(out_dir, STATS_DIR, shard.name + ".json")
  if not (gfile.exists(path) and gfile.exists(stats_path)):
    return False
  expected = read_json(stats_path).get("bytes")
  return expected is None or gfile.stat(path).length == expected


def missing_shards(out_dir: str, shards: Sequence[Shard]) -> list[Shard]:
  """The shards of `shards` that are not finished in `out_dir`."""
  return [s for s in shards if not is_done(out_dir, s)]


def task_shards(shards: Sequence[Shard], num_tasks: int, task_index: int) -> list[Shard]:
  """The shards task `task_index` of `num_tasks` writes: every num_tasks-th of the plan, from its index.

  Disjoint across tasks and covering the plan; round robin, so every task gets
  train and (when there are enough) test shards of about equal size.
  """
  return [s for k, s in enumerate(shards) if k % num_tasks == task_index]


def write_shard(out_dir: str, shard: Shard, records: Sequence[bytes], rejected: Sequence[dict[str, Any]] = ()) -> None:
  """Writes serialised examples and the shard's stats, atomically.

  Args:
    out_dir: the output directory.
    shard: the shard.
    records: serialised examples, in order.
    rejected: one dict per rejected item of the shard: {"id", "path", "reason"}.
  """
  import tensorflow as tf

  tmp = os.path.join(out_dir, TMP_PREFIX + shard.name)
  with tf.io.TFRecordWriter(tmp) as w:
    for r in records:
      w.write(r)  # features.encode_example serialises deterministically
  rejects: dict[str, int] = {}
  for r in rejected:
    rejects[r["reason"]] = rejects.get(r["reason"], 0) + 1
  stats = {
    "count": len(records),
    "bytes": tf.io.gfile.stat(tmp).length,
    "rejects": dict(sorted(rejects.items())),
    "rejected": list(rejected),
  }
  write_json_atomic(os.path.join(out_dir, STATS_DIR, shard.name + ".json"), stats)
  tf.io.gfile.rename(tmp, os.path.join(out_dir, shard.name), overwrite=True)


def discard_dataset(out_dir: str, info: dict[str, Any]) -> None:
  """Removes what `info`'s run wrote in `out_dir` but `rejects.jsonl`: a dataset without a single example.

  Its shards, their stats, `run.json` and `dataset_info.json` go, so that a
  rerun with other options (a fixed boxes file, a smaller crop) starts afresh.
  """
  gfile = _gfile()
  names = [name for split in SPLITS for name in info["shards"][split]]
  paths = [os.path.join(out_dir, name) for name in names]
  paths += [os.path.join(out_dir, STATS_DIR, name + ".json") for name in names]
  paths += [os.path.join(out_dir, STATS_DIR, RUN_FILE), os.path.join(out_dir, features.INFO_FILE)]
  for path in paths:
    if gfile.exists(path):
      gfile.remove(path)


def collect_stats(out_dir: str, shards: Sequence[Shard]) -> tuple[dict[str, int], dict[str, int]]:
  """Sums the stats files: (counts per split, rejects per reason)."""
  counts = dict.fromkeys(SPLITS, 0)
  rejects: dict[str, int] = {}
  for shard in shards:
    stats = read_json(os.path.join(out_dir, STATS_DIR, shard.name + ".json"))
    counts[shard.split] += stats["count"]
    for reason, n in stats["rejects"].items():
      rejects[reason] = rejects.get(reason, 0) + n
  return counts, dict(sorted(rejects.items()))


def write_info(out_dir: str, shards: Sequence[Shard], info: dict[str, Any]) -> dict[str, Any]:
  """Writes `rejects.jsonl`, then `dataset_info.json` from `info` plus the shards' stats.

  Added keys: counts (accepted examples per split), rejects (count per
  reason), rejects_file, shards (file names per split) and shard_files
  ({name: {"records", "bytes"}}, which the readers check the files against).
  """
  counts, rejects = collect_stats(out_dir, shards)
  rejected: list[dict[str, Any]] = []
  shard_files = {}
  for shard in shards:
    stats = read_json(os.path.join(out_dir, STATS_DIR, shard.name + ".json"))
    rejected.extend(stats.get("rejected", ()))
    shard_files[shard.name] = {"records": stats["count"], "bytes": stats.get("bytes")}
  rejects_text = "".join(json.dumps(r) + "\n" for r in rejected)
  info = dict(info)
  info.update(
    format=features.FORMAT_NAME,
    version=features.FORMAT_VERSION,
    counts=counts,
    rejects=rejects,
    rejects_file=REJECTS_FILE,
    shards={s: [sh.name for sh in shards if sh.split == s] for s in SPLITS},
    shard_files=shard_files,
  )
  # A rerun of a complete dataset writes nothing (it may be on a read-only mount): only what differs.
  if _read_text(os.path.join(out_dir, REJECTS_FILE)) != rejects_text:
    write_text_atomic(os.path.join(out_dir, REJECTS_FILE), rejects_text)
  info_path = os.path.join(out_dir, features.INFO_FILE)
  if _read_text(info_path) != json.dumps(info, indent=2, sort_keys=True) + "\n":
    write_json_atomic(info_path, info)
  return info


def _read_text(path: str) -> str | None:
  """The text of `path`, or None when it cannot be read."""
  gfile = _gfile()
  try:
    with gfile.GFile(path, "r") as f:
      return f.read()
  except Exception:  # noqa: BLE001 - missing or unreadable: to be written
    return None
