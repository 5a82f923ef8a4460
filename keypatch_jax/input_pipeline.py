"""tf.data input pipeline over the TFRecords written by `preprocessing/`.

Per training example (docs/design.md §2.3): the real image y, its N boxes, the N key
patches (each cropped with its box and resized, bicubic, to S x S: the
location is discarded), and y', a real image from outside the current batch
(a second, independently shuffled stream of the training set; an entry that
collides with an image of the batch is swapped for one that does not). The
ground-truth mask is built on the device from the (flipped) boxes by
`losses.mask_from_boxes`, the one definition shared by training, sampling and
evaluation.

Determinism and resume: epoch e's order depends only on (seed, e, process),
and the flip of the k-th example of an epoch on (seed, e, k), so the batch
stream from any step is reproducible; `train_iterator(start_step=s)` skips the
first s mod steps_per_epoch batches' records before decoding and resumes
exactly.

Layout: every array of a training batch is [local_devices, per_device_batch,
...]; images and patches are float32 in [-1, 1], boxes float32 [.., N, 4]
(x, y, w, h) in pixels. What the dataset says about itself (S, N, counts) and
its checks against the config are in `dataset_meta`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from keypatch_jax import dataset_meta, features

AUTOTUNE = -1


def _tf():
  """Imports TensorFlow with accelerators hidden (it only feeds the host)."""
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")
  return tf


def crop_patches(image, boxes, image_size: int):
  """Crops each box of `image` and resizes it (bicubic) to S x S.

  Args:
    image: float32 [S, S, 3] in [-1, 1].
    boxes: float32 [N, 4] (x, y, w, h) in pixels.
    image_size: S.

  Returns:
    float32 [N, S, S, 3] in [-1, 1].
  """
  tf = _tf()
  s = float(image_size)
  x0 = tf.clip_by_value(tf.round(boxes[:, 0]), 0.0, s - 1.0)
  y0 = tf.clip_by_value(tf.round(boxes[:, 1]), 0.0, s - 1.0)
  x1 = tf.clip_by_value(tf.round(boxes[:, 0] + boxes[:, 2]), x0 + 1.0, s)
  y1 = tf.clip_by_value(tf.round(boxes[:, 1] + boxes[:, 3]), y0 + 1.0, s)
  ints = tf.cast(tf.stack([y0, x0, y1 - y0, x1 - x0], axis=1), tf.int32)

  def one(b):
    crop = tf.image.crop_to_bounding_box(image, b[0], b[1], b[2], b[3])
    return tf.image.resize(crop, [image_size, image_size], method="bicubic")

  patches = tf.map_fn(one, ints, fn_output_signature=tf.float32)
  return tf.clip_by_value(patches, -1.0, 1.0)


def flip_boxes(boxes, image_size: int):
  """Left-right flip of boxes [..., 4] (x, y, w, h) in an S-wide image: x' = S - x - w."""
  tf = _tf()
  x = float(image_size) - boxes[..., 0] - boxes[..., 2]
  return tf.concat([x[..., None], boxes[..., 1:]], axis=-1)


def flip_example(image, boxes, image_size: int):
  """Left-right flip of an image [S, S, 3] and its boxes [N, 4]."""
  tf = _tf()
  return tf.reverse(image, axis=[1]), flip_boxes(boxes, image_size)


def _to_float(image):
  tf = _tf()
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def _records(files: list[str], seed: int | None, cycle_length: int = 8):
  """Records of `files`, in a deterministic order (shuffled by `seed` if given)."""
  tf = _tf()
  ds = tf.data.Dataset.from_tensor_slices(files)
  if seed is not None:
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=False)
  return ds.interleave(
    tf.data.TFRecordDataset,
    cycle_length=min(cycle_length, len(files)),
    block_length=1,
    num_parallel_calls=AUTOTUNE,
    deterministic=True,
  )


def find_corrupt_shard(meta: dataset_meta.DatasetMeta, files: list[str]) -> tuple[str, int, str] | None:
  """The first of `files` that does not read and parse to the end.

  Returns:
    (file, number of good records before the bad one, TensorFlow's message),
    or None when every file reads.
  """
  tf = _tf()
  n, s = meta.num_patches, meta.image_size
  for path in files:
    count = 0
    try:
      for _ in tf.data.TFRecordDataset(path).map(lambda r: features.parse_example(r, n, s)).as_numpy_iterator():
        count += 1
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      message = re.sub(r"\{\{.*?\}\}|\[Op:.*$", "", " ".join(str(e).split()))  # drop TF's op context
      return path, count, message.strip()[:200]
  return None


def _numpy_batches(ds, meta: dataset_meta.DatasetMeta, files: list[str]) -> Iterator[dict[str, Any]]:
  """`ds.as_numpy_iterator()`, turning a corrupt or truncated shard into a one-line DatasetFormatError."""
  tf = _tf()
  # Bound now, not looked up in `except`: a generator left open is closed at interpreter
  # exit, when TensorFlow's module attributes may already be None.
  data_errors = (tf.errors.DataLossError, tf.errors.InvalidArgumentError)
  try:
    yield from ds.as_numpy_iterator()
  except data_errors as e:
    found = find_corrupt_shard(meta, files)
    if found is None:  # not a data problem after all
      raise
    path, count, message = found
    raise features.DatasetFormatError(
      f"{path}: unreadable after {count} good records ({message}); delete that file and "
      f"{features.rebuild_hint(meta.info, meta.data_dir)}"
    ) from e


def _short_epoch_error(
  meta: dataset_meta.DatasetMeta, epoch: int, got: int, wanted: int
) -> features.DatasetFormatError:
  """The one-line error for an epoch that yielded fewer batches than `dataset_info.json` promises."""
  return features.DatasetFormatError(
    f"{meta.data_dir}: the train shards of this process yielded {got} of the {wanted} batches of epoch {epoch} "
    f"that {features.INFO_FILE} promises ({meta.num_train} train records); "
    f"{features.rebuild_hint(meta.info, meta.data_dir)}"
  )


def _host_files(meta: dataset_meta.DatasetMeta, split: str) -> tuple[list[str], bool]:
  """This process's shard files (checked against `dataset_info.json`), and whether records still need `shard()`."""
  files = features.split_files(meta.data_dir, split, meta.info)
  if not files:
    raise features.DatasetFormatError(f"{meta.data_dir}: no {split} shards (see {features.INFO_FILE})")
  count, index = jax.process_count(), jax.process_index()
  if len(files) >= count:
    return files[index::count], False
  return files, True


def _epoch_stream(meta: dataset_meta.DatasetMeta, config, epoch: int, salt: int):
  """One epoch of (index, serialized record) for this host, shuffled by (seed, epoch, salt).

  Returns:
    (dataset, the integer seed used), the seed also drives per-example flips.
  """
  files, shard_records = _host_files(meta, "train")
  seed = int(np.random.SeedSequence([config.seed, salt, epoch, jax.process_index()]).generate_state(1)[0] % (2**31))
  ds = _records(files, seed)
  if shard_records:
    ds = ds.shard(jax.process_count(), jax.process_index())
  ds = ds.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
  return ds.enumerate(), seed


def _decode(meta: dataset_meta.DatasetMeta, seed: int, flip: bool):
  """The per-example map: parse, scale to [-1, 1], random flip (stateless)."""
  tf = _tf()
  s, n = meta.image_size, meta.num_patches

  def fn(index, serialized):
    ex = features.parse_example(serialized, n, s)
    image, boxes = _to_float(ex["image"]), ex["boxes"]
    if flip:
      coin = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), index]))
      image, boxes = tf.cond(coin < 0.5, lambda: flip_example(image, boxes, s), lambda: (image, boxes))
    return {"image": image, "boxes": boxes, "id": ex["id"], "label": ex["label"]}

  return fn


def _train_dataset(meta: dataset_meta.DatasetMeta, config, epoch: int, skip_records: int, host_batch: int):
  """tf.data pipeline of one epoch, starting after this host's first `skip_records` records."""
  tf = _tf()
  s = meta.image_size
  per_example = config.flip == "per_example"
  real, seed = _epoch_stream(meta, config, epoch, salt=0)
  other, other_seed = _epoch_stream(meta, config, epoch, salt=1)
  real = real.skip(skip_records).map(_decode(meta, seed, per_example), num_parallel_calls=AUTOTUNE, deterministic=True)
  other = (
    other.repeat()
    .skip(skip_records)
    .map(_decode(meta, other_seed, per_example), num_parallel_calls=AUTOTUNE, deterministic=True)
  )

  def add_patches(ex, oth):
    ex = dict(ex)
    ex["patches"] = crop_patches(ex["image"], ex["boxes"], s)
    ex["other"], ex["other_id"] = oth["image"], oth["id"]
    return ex

  ds = tf.data.Dataset.zip(real, other).map(add_patches, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(host_batch, drop_remainder=True, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.map(_exclude_batch_from_other, num_parallel_calls=AUTOTUNE, deterministic=True)
  if config.flip == "per_batch":  # the official code: one coin per batch
    batch_seed = int(np.random.SeedSequence([config.seed, 2, epoch]).generate_state(1)[0] % 2**31)
    ds = ds.enumerate(start=skip_records // host_batch).map(_flip_batch(s, batch_seed), deterministic=True)
  return ds.prefetch(AUTOTUNE)


def _exclude_batch_from_other(batch):
  """Replaces y' entries whose id is in the batch by y' entries whose id is not."""
  tf = _tf()
  collide = tf.reduce_any(tf.equal(batch["other_id"][:, None], batch["id"][None, :]), axis=1)
  good = tf.where(~collide)[:, 0]
  if_any = tf.size(good) > 0
  fallback = tf.gather(
    good,
    tf.math.floormod(tf.range(tf.size(collide, out_type=tf.int64)), tf.maximum(tf.size(good, out_type=tf.int64), 1)),
  )
  src = tf.where(collide & if_any, fallback, tf.range(tf.size(collide, out_type=tf.int64)))
  batch = dict(batch)
  batch["other"] = tf.gather(batch["other"], src)
  del batch["other_id"]
  return batch


def _flip_batch(image_size: int, seed: int):
  tf = _tf()

  def fn(index, batch):
    coin = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), index]))

    def flipped():
      b = dict(batch)
      b["image"] = tf.reverse(b["image"], axis=[2])
      b["other"] = tf.reverse(b["other"], axis=[2])
      b["patches"] = tf.reverse(b["patches"], axis=[3])
      b["boxes"] = flip_boxes(b["boxes"], image_size)
      return b

    return tf.cond(coin < 0.5, flipped, lambda: dict(batch))

  return fn


def shard_batch(batch: dict[str, Any], num_devices: int) -> dict[str, Any]:
  """[host_batch, ...] -> [num_devices, host_batch / num_devices, ...] (numeric arrays only)."""
  out = {}
  for k, v in batch.items():
    if v.dtype.kind in "OSU":  # ids stay on the host
      continue
    out[k] = v.reshape(num_devices, v.shape[0] // num_devices, *v.shape[1:])
  return out


def host_batch_size(global_batch: int) -> int:
  """This process's share of the global batch; checks divisibility by the devices."""
  if global_batch % jax.device_count():
    raise dataset_meta.DataConfigError(
      f"--config.batch_size={global_batch} is not divisible by the {jax.device_count()} devices"
    )
  return global_batch // jax.process_count()


def train_iterator(
  meta: dataset_meta.DatasetMeta, config, start_step: int = 0, *, position: tuple[int, int] | None = None
) -> Iterator[dict[str, Any]]:
  """Endless iterator of device-sharded training batches, from `start_step` (or `position`) on.

  Args:
    meta: the dataset.
    config: batch_size, seed, flip, shuffle_buffer.
    start_step: steps already taken at this batch size: the position is
      (epoch, examples) = (start_step // steps_per_epoch, the rest * batch_size).
    position: (epoch, examples of it already seen, global) instead of
      `start_step`, e.g. a checkpoint's position after a batch size change.
      The record order of an epoch does not depend on the batch size, so the
      run continues with the same examples.

  Yields dicts of numpy arrays: image, other [D, b, S, S, 3]; patches
  [D, b, N, S, S, 3]; boxes [D, b, N, 4]; label [D, b].

  Raises:
    features.DatasetFormatError: a shard is missing, has the wrong size or
      is unreadable, or an epoch yields fewer batches than
      `dataset_info.json` promises (it never loops on an input that yields
      nothing).
  """
  host_batch = host_batch_size(config.batch_size)
  spe = dataset_meta.steps_per_epoch(meta, config.batch_size)
  if position is None:
    epoch, batches = divmod(start_step, spe)
    position = (epoch, batches * config.batch_size)
  epoch, seen = position
  devices = jax.local_device_count()
  files, _ = _host_files(meta, "train")  # this process's shards, searched if one is unreadable
  while True:
    wanted = (meta.num_train - seen) // config.batch_size  # full batches left in this epoch
    ds = _train_dataset(meta, config, epoch, seen // jax.process_count(), host_batch).take(wanted)
    count = 0
    for batch in _numpy_batches(ds, meta, files):
      count += 1
      yield shard_batch(batch, devices)
    if count < wanted:
      raise _short_epoch_error(meta, epoch, spe - wanted + count, spe)
    epoch, seen = epoch + 1, 0


def eval_batches(
  meta: dataset_meta.DatasetMeta, split: str = "test", batch_size: int = 64, limit: int | None = None
) -> Iterator[dict[str, Any]]:
  """Unshuffled, unflipped batches of a split for sampling and evaluation.

  Yields dicts of numpy arrays (not device-sharded): image [b, S, S, 3],
  patches [b, N, S, S, 3], boxes [b, N, 4], label [b], id [b] (bytes). The
  last batch may be smaller.
  """
  files = features.split_files(meta.data_dir, split, meta.info)
  if not files:
    raise features.DatasetFormatError(
      f"{meta.data_dir}: no {split} shards (see {features.INFO_FILE}); preprocess with a --test-count > 0"
      if split == "test"
      else f"{meta.data_dir}: no {split} shards (see {features.INFO_FILE})"
    )
  s, n = meta.image_size, meta.num_patches

  def fn(serialized):
    ex = features.parse_example(serialized, n, s)
    image = _to_float(ex["image"])
    return {
      "image": image,
      "boxes": ex["boxes"],
      "patches": crop_patches(image, ex["boxes"], s),
      "label": ex["label"],
      "id": ex["id"],
    }

  ds = _records(files, seed=None)
  if limit is not None:
    ds = ds.take(limit)
  ds = ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size)
  yield from _numpy_batches(ds.prefetch(AUTOTUNE), meta, files)
