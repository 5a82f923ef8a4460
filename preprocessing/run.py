"""Runs the whole offline job: plan, parallel detection, shard writing, info, preview.

With several tasks (`--num-tasks K`), `run` writes one task's shards and
`merge` writes `dataset_info.json` and the preview once all tasks are done.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from keypatch_jax import features
from preprocessing import boxes_file, fingerprint, sources, worker, writer

Job = dict[str, Any]  # the parsed CLI options of one job
Assignment = boxes_file.Assignment | None  # boxes from a `--boxes` file, or None to detect them
PREVIEW_DIR = "preview"
TASK_OPTIONS = fingerprint.TASK_OPTIONS
CHUNK = 4  # items per task sent to a worker
IN_FLIGHT_PER_WORKER = 8  # queued tasks per worker


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
  """Consecutive lists of `size` items (the last may be shorter)."""
  batch: list[Any] = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _init_tf() -> None:
  """Imports TensorFlow for writing, on one thread and without accelerators."""
  import tensorflow as tf

  try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised in this process (tests)
    pass


def start_pool(settings: worker.Settings, workers: int) -> ProcessPoolExecutor | None:
  """A spawn-context executor of `workers` initialised processes, or None for in-process work.

  A worker that dies (e.g. a crash in a decoder) breaks the executor, which
  stops the run with an error instead of hanging; a rerun resumes. Every
  worker is started here with Ctrl-C ignored (inherited from the start, so
  even one still importing prints nothing): the parent stops the run.
  """
  if workers <= 1:
    worker.init_worker(settings)
    return None
  main = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
  try:
    pool = ProcessPoolExecutor(
      workers,
      mp_context=multiprocessing.get_context("spawn"),
      initializer=worker.init_pool_worker,
      initargs=(settings,),
    )
    for _ in range(workers):  # one process per submit while none is idle: all start now, while TensorFlow imports
      pool.submit(int)
  finally:
    if main:  # None: a handler set outside Python
      signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
  return pool


def process_all(
  pool: ProcessPoolExecutor | None,
  items: Iterable[tuple[sources.Item, worker.Given]],
  workers: int,
  total: int,
  quiet: bool,
  settings: worker.Settings,
) -> Iterator[worker.Result]:
  """Processes (item, given) pairs on `pool` (None: in-process); results in item order, with a progress bar.

  At most `IN_FLIGHT_PER_WORKER * workers` chunks of `CHUNK` items are queued
  at a time, so memory stays bounded for sources that carry decoded arrays.
  """
  from tqdm import tqdm

  bar = tqdm(
    total=total,
    unit="img",
    desc="preprocess",
    disable=quiet or total == 0,
    smoothing=0.1,
    mininterval=0.1 if sys.stderr.isatty() else 10.0,
    file=sys.stderr,
  )
  try:
    for r in finish_pending(_processed(pool, items, workers), settings, pool, workers):
      bar.update(1)  # counts finished images (with HED, after their edge maps and boxes)
      yield r
  finally:
    bar.close()


def _processed(pool, items, workers: int) -> Iterator[worker.Result]:
  if pool is None:
    for item, given in items:
      yield worker.process_item(item, given)
    return
  queue: collections.deque = collections.deque()
  for batch in chunked(items, CHUNK):
    queue.append(pool.submit(worker.process_items, batch))
    if len(queue) >= IN_FLIGHT_PER_WORKER * workers:
      yield from queue.popleft().result()
  while queue:
    yield from queue.popleft().result()


def finish_pending(
  results: Iterable[worker.Result], settings: worker.Settings, pool: ProcessPoolExecutor | None = None, workers: int = 1
) -> Iterator[worker.Result]:
  """Passes finished results on and finishes pending ones (HED detection), `hed.BATCH` frames at a time.

  The edge maps are computed here, in the parent, on its default JAX device
  (the accelerator where there is one); thinning, EdgeBoxes and the filters
  (`worker.finish_items`) run on `pool` (None: here). At most one batch of
  frames and `IN_FLIGHT_PER_WORKER * workers` batches being finished are held.
  """
  pending: list[worker.Result] = []
  finishing: collections.deque = collections.deque()

  def flush() -> Iterator[worker.Result]:
    pairs = list(zip(pending, worker.edge_model(settings.hed_weights)([r.frame for r in pending]), strict=True))
    pending.clear()
    if pool is None:
      yield from worker.finish_items(pairs)
      return
    finishing.append(pool.submit(worker.finish_items, pairs))
    while len(finishing) > IN_FLIGHT_PER_WORKER * workers:
      yield from finishing.popleft().result()

  for r in results:
    if not r.pending:
      yield r
      continue
    from preprocessing import hed  # JAX is imported only when HED runs

    pending.append(r)
    if len(pending) == hed.BATCH:
      yield from flush()
  if pending:
    yield from flush()
  while finishing:
    yield from finishing.popleft().result()


def write_shards(
  out_dir: str,
  source: sources.Source,
  pending: list[writer.Shard],
  owner: dict[int, writer.Shard],
  results: Iterable[worker.Result],
) -> None:
  """Groups results by shard and writes each shard as soon as all its items are in."""
  buffers: dict[str, list[worker.Result]] = {s.name: [] for s in pending}
  for res in results:
    shard = owner[res.index]
    buf = buffers[shard.name]
    buf.append(res)
    if len(buf) == len(shard.indices):
      records, rejected = [], []
      for r in sorted(buf, key=lambda r: r.index):
        if r.reason is None:
          records.append(features.encode_example(r.image, r.boxes, source.ids[r.index], r.label))
        else:
          path = source.location(r.index) if source.root else None
          rejected.append({"id": source.ids[r.index], "path": path, "reason": r.reason})
      writer.write_shard(out_dir, shard, records, rejected)
      del buffers[shard.name]


def _task(options: dict[str, Any]) -> tuple[int, int]:
  return options.get("num_tasks", 1), options.get("task_index") or 0


def run(
  options: Job, source: sources.Source, settings: worker.Settings, boxes: Assignment = None, command: str | None = None
) -> dict[str, Any]:
  """Writes the dataset for `options` (the parsed CLI options) into `options['output']`.

  With `num_tasks` K > 1, writes only task `task_index`'s shards (see
  `writer.task_shards`); `merge` then writes the info.

  Args:
    options: the parsed CLI options.
    source: the opened source.
    settings: the workers' settings.
    boxes: boxes from a `--boxes` file (per source index), or None to detect.
    command: the one-task CLI line that writes this dataset, recorded in
      `dataset_info.json` (readers quote it when a shard must be rebuilt).

  Returns:
    the dataset_info dict that was written (one task), or for task I of K
    {"task_index", "num_tasks", "shards", "counts", "rejects"} of its shards;
    either with "shards_written": how many shards this run wrote (0: the
    output was already complete).
  """
  out_dir = options["output"]
  num_tasks, task_index = _task(options)
  shards = writer.plan_shards(source.ids, options["test_count"], options["shard_size"])
  owned = shards if num_tasks == 1 else writer.task_shards(shards, num_tasks, task_index)
  pool = start_pool(settings, options["workers"])  # workers start while TF imports
  try:
    _init_tf()
    content = fingerprint.of(options, source, boxes, settings)
    owned_here = None if num_tasks == 1 else owned
    writer.prepare_output(out_dir, content, owned_here, f".task{task_index}", fingerprint.difference)
    pending = writer.missing_shards(out_dir, owned)
    owner = {i: s for s in pending for i in s.indices}
    items = ((item, None if boxes is None else boxes.given[item[0]]) for item in source.items(set(owner)))
    results = process_all(pool, items, options["workers"], len(owner), options["quiet"], settings)
    write_shards(out_dir, source, pending, owner, results)
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
  if num_tasks > 1:
    counts, rejects = writer.collect_stats(out_dir, owned)
    return {
      "task_index": task_index,
      "num_tasks": num_tasks,
      "shards": len(owned),
      "counts": counts,
      "rejects": rejects,
      "shards_written": len(pending),
    }
  info = _write_info(options, source, settings, boxes, shards, content.get("hed_weights_sha256"), command)
  return {**info, "shards_written": len(pending)}


def merge(
  options: Job, source: sources.Source, settings: worker.Settings, boxes: Assignment = None, command: str | None = None
) -> dict[str, Any]:
  """Writes `dataset_info.json` (and the preview) once all `num_tasks` tasks have written their shards.

  Same arguments as `run`, which every task ran with the same options.

  Raises:
    writer.OutputError: the output holds shards of other options, or shards are
      missing (the message names the unfinished tasks and one missing shard).
  """
  out_dir = options["output"]
  num_tasks, _ = _task(options)
  shards = writer.plan_shards(source.ids, options["test_count"], options["shard_size"])
  _init_tf()
  content = fingerprint.of(options, source, boxes, settings)
  writer.prepare_output(out_dir, content, [], ".merge", fingerprint.difference)
  missing = writer.missing_shards(out_dir, shards)
  if missing:
    index = {s.name: k for k, s in enumerate(shards)}
    tasks = sorted({index[s.name] % num_tasks for s in missing})
    raise writer.OutputError(
      f"--merge: {len(missing)} of {len(shards)} shards missing in {out_dir} (e.g. {missing[0].name}); "
      f"run --num-tasks {num_tasks} --task-index {' / '.join(map(str, tasks))} to finish them first"
    )
  return _write_info(options, source, settings, boxes, shards, content.get("hed_weights_sha256"), command)


def _write_info(
  options: dict[str, Any],
  source: sources.Source,
  settings: worker.Settings,
  boxes: boxes_file.Assignment | None,
  shards: list[writer.Shard],
  hed_weights_sha256: str | None,
  command: str | None = None,
) -> dict[str, Any]:
  """Writes `dataset_info.json`; `hed_weights_sha256`: the fingerprint's (None without HED)."""
  out_dir = options["output"]
  recorded = {k: v for k, v in options.items() if k not in ("output", *TASK_OPTIONS)}
  info = {
    "source": options["source"],
    "options": recorded,
    "image_size": settings.image_size,
    "num_patches": settings.box_filter.num_patches,
    "num_labels": source.num_labels,
    "num_source_images": len(source.ids),
    "edge_method": "boxes_file" if boxes is not None else "structured" if settings.sed_model else settings.edges,
    "hed_weights_sha256": hed_weights_sha256,
    "box_format": "xywh_pixels",
    "command": command,
  }
  if boxes is not None:
    info["boxes_file"] = boxes.info
  info = writer.write_info(out_dir, shards, info)
  if options["preview"] > 0:
    write_preview(out_dir, info, options["preview"])
  return info


def draw_boxes(image: np.ndarray, boxes: np.ndarray, scale: int) -> np.ndarray:
  """RGB uint8 [S, S, 3] and boxes [N, 4] -> BGR uint8 [S*scale, S*scale, 3] with boxes drawn."""
  import cv2

  colours = ((0, 0, 255), (0, 200, 0), (255, 0, 0), (0, 200, 255), (255, 0, 255), (255, 255, 0))
  s = image.shape[0] * scale
  big = cv2.resize(image, (s, s), interpolation=cv2.INTER_NEAREST)[..., ::-1].copy()
  for k, (x, y, w, h) in enumerate(np.asarray(boxes) * scale):
    p0, p1 = (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1)
    cv2.rectangle(big, p0, p1, colours[k % len(colours)], max(1, scale // 2))
  return big


def write_preview(out_dir: str, info: dict[str, Any], count: int) -> list[str]:
  """Reads the first `count` training examples back and writes them as PNGs with boxes (the preview folder then
  holds those `count`: an earlier run's further previews are removed)."""
  import cv2
  import tensorflow as tf

  files = [os.path.join(out_dir, name) for name in info["shards"]["train"]]
  if not files:
    return []
  s, n = info["image_size"], info["num_patches"]
  ds = tf.data.TFRecordDataset(files).map(lambda r: features.parse_example(r, n, s)).take(count)
  preview_dir = os.path.join(out_dir, PREVIEW_DIR)
  done = [os.path.join(preview_dir, f"preview-{k:03d}.png") for k in range(min(count, info["counts"]["train"]))]
  for old in tf.io.gfile.glob(os.path.join(preview_dir, "preview-*.png")):  # an earlier, larger --preview's
    if old not in done:
      tf.io.gfile.remove(old)
  if all(tf.io.gfile.exists(p) for p in done):  # a rerun of a complete dataset writes nothing
    return done
  tf.io.gfile.makedirs(preview_dir)
  paths = []
  for k, ex in enumerate(ds.as_numpy_iterator()):
    png = cv2.imencode(".png", draw_boxes(ex["image"], ex["boxes"], max(1, 256 // s)))[1]
    path = os.path.join(preview_dir, f"preview-{k:03d}.png")
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(png.tobytes())
    paths.append(path)
  return paths
