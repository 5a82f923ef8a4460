"""The one TFRecord feature spec, shared by `preprocessing/` (writer) and
`keypatch_jax.input_pipeline` (reader), so the two cannot drift.

One `tf.train.Example` per image:

  image   bytes    PNG-encoded uint8 image of shape [S, S, 3] (S = image_size).
  boxes   float32  [N * 4], N key-patch boxes as (x, y, w, h) in pixels of the
                   stored S x S image, sorted by objectness (best first).
  id      bytes    a stable identifier (source file path or TFDS key), see
                   `id_bytes`.
  label   int64    a class label when the source has one, else -1 (used only by
                   the linear probe, `keypatch_jax.probe`).

The dataset directory also holds `dataset_info.json` (see `read_dataset_info`)
with `image_size` and `num_patches`, which fix S and N for the reader, the
shard files of each split with their record counts and byte sizes (checked by
`split_files` before anything reads them), and the command that rebuilds them.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

import numpy as np

from keypatch_jax import errors

INFO_FILE = "dataset_info.json"
FORMAT_NAME = "keypatch-tfrecord"
FORMAT_VERSION = 1


def feature_spec(num_patches: int) -> dict[str, Any]:
  """The `tf.io.parse_example` spec for a dataset with `num_patches` boxes."""
  import tensorflow as tf

  return {
    "image": tf.io.FixedLenFeature([], tf.string),
    "boxes": tf.io.FixedLenFeature([num_patches * 4], tf.float32),
    "id": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  }


def id_bytes(example_id: str) -> bytes:
  """The stored bytes of an id: UTF-8, with surrogate escapes turned back into the raw bytes.

  A file name that is not valid UTF-8 is held in Python as `os.fsdecode` does
  (surrogate escapes); it is stored as its original file-system bytes, so ids
  stay unique and every name can be written.
  """
  return example_id.encode("utf-8", "surrogateescape")


def encode_example(image: np.ndarray, boxes: np.ndarray, example_id: str, label: int = -1) -> bytes:
  """Serialises one example.

  Args:
    image: uint8 [S, S, 3].
    boxes: [N, 4] (x, y, w, h) in pixels of `image`.
    example_id: stable identifier.
    label: class label or -1.

  Returns:
    A serialised `tf.train.Example`.
  """
  import tensorflow as tf

  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
  png = tf.io.encode_png(image).numpy()
  boxes = np.asarray(boxes, np.float32).reshape(-1)
  feature = {
    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
    "boxes": tf.train.Feature(float_list=tf.train.FloatList(value=boxes.tolist())),
    "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[id_bytes(example_id)])),
    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
  }
  # deterministic: protobuf map fields otherwise serialise in a per-process order, and
  # a resumed preprocessing run must write byte-identical shards.
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def parse_example(serialized, num_patches: int, image_size: int) -> dict[str, Any]:
  """Parses one serialised example into tensors (usable inside `tf.data.map`).

  Returns:
    dict with `image` uint8 [S, S, 3], `boxes` float32 [N, 4], `id` string,
    `label` int64 scalar.
  """
  import tensorflow as tf

  ex = tf.io.parse_single_example(serialized, feature_spec(num_patches))
  image = tf.io.decode_png(ex["image"], channels=3)
  image = tf.ensure_shape(image, [image_size, image_size, 3])
  boxes = tf.reshape(ex["boxes"], [num_patches, 4])
  return {"image": image, "boxes": boxes, "id": ex["id"], "label": ex["label"]}


class DatasetFormatError(errors.UserError):
  """A data directory is missing or not in this project's format."""


def read_dataset_info(data_dir: str) -> dict[str, Any]:
  """Reads and checks `DIR/dataset_info.json`.

  Raises:
    DatasetFormatError: with a one-line message naming the directory when it
      does not exist or was not written by `preprocessing`.
  """
  import tensorflow as tf

  path = os.path.join(data_dir, INFO_FILE)
  if not tf.io.gfile.isdir(data_dir):
    raise DatasetFormatError(f"data dir {data_dir!r} does not exist; run `python -m preprocessing`")
  if not tf.io.gfile.exists(path):
    raise DatasetFormatError(
      f"{path!r} not found: {data_dir!r} is not a preprocessed dataset; "
      "run `python -m preprocessing --output` on it first"
    )
  with tf.io.gfile.GFile(path, "r") as f:
    try:
      info = json.load(f)
    except json.JSONDecodeError as e:
      raise DatasetFormatError(f"{path!r} is not valid JSON ({e})") from None
  missing = [k for k in ("image_size", "num_patches", "counts") if k not in info]
  if missing or info.get("format", FORMAT_NAME) != FORMAT_NAME:
    raise DatasetFormatError(f"{path!r} is not a keypatch dataset_info file (missing {missing})")
  return info


def shard_name(split: str, index: int, num_shards: int) -> str:
  """`train-00003-of-00010.tfrecord`."""
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def rebuild_hint(info: dict[str, Any], data_dir: str) -> str:
  """How to rewrite missing or damaged shards of `data_dir`: the preprocessing command recorded in
  `info` (without its output directory), with `--output data_dir`."""
  args = shlex.split(info.get("command") or "python -m preprocessing --source ...")
  if "--output" in args[:-1]:  # datasets written when the command held its output
    del args[args.index("--output") : args.index("--output") + 2]
  return f"rerun `{shlex.join([*args, '--output', data_dir])}`, which rewrites missing or damaged shards"


def split_files(data_dir: str, split: str, info: dict[str, Any] | None = None) -> list[str]:
  """The shard files of `split`, checked against `dataset_info.json`.

  The shards `info` lists must all exist; where it records their byte sizes
  (datasets written since the sizes were added), each file must have exactly
  that size, which catches a truncated or emptied shard without reading it
  (one stat per shard). Without `info["shards"]` the files are found by name.

  Args:
    data_dir: the dataset directory.
    split: "train" or "test".
    info: its `dataset_info.json` (read here when None).

  Returns:
    sorted paths (possibly empty when the split has no shards).

  Raises:
    DatasetFormatError: one line naming the first missing or wrong-sized shard
      and the command that rebuilds it.
  """
  import tensorflow as tf

  info = read_dataset_info(data_dir) if info is None else info
  names = (info.get("shards") or {}).get(split)
  if names is None:
    return sorted(tf.io.gfile.glob(os.path.join(data_dir, f"{split}-*-of-*.tfrecord")))
  sizes = info.get("shard_files") or {}
  files = []
  for name in names:
    path = os.path.join(data_dir, name)
    expected = (sizes.get(name) or {}).get("bytes")
    try:
      actual = tf.io.gfile.stat(path).length
    except tf.errors.NotFoundError:
      raise DatasetFormatError(
        f"{path}: missing ({INFO_FILE} lists {len(names)} {split} shards); {rebuild_hint(info, data_dir)}"
      ) from None
    if expected is not None and actual != expected:
      raise DatasetFormatError(
        f"{path}: {actual} bytes where {INFO_FILE} records {expected} (truncated or replaced); "
        f"{rebuild_hint(info, data_dir)}"
      )
    files.append(path)
  return sorted(files)
