"""Image sources: `folder:PATH`, `tfds:NAME[:split]` and `synthetic[:POSE]`.

A source knows its item ids up front (for the hash split and the shard plan)
and yields items lazily, in a fixed order. An item is a small picklable tuple
`(index, id, ref)`; `load_item` turns it into an image in a worker process, so
decoding runs in parallel.

Labels: synthetic images carry their hair-colour class (4 classes); TFDS
sources use their `label` feature when present; folder images get -1.

Ids are text. A folder id is the file's path relative to the folder, with
`/` separators; a name that is not valid UTF-8 keeps its bytes as
surrogate escapes (`os.fsdecode`), so `features.id_bytes` gives back the exact
file-system bytes: stable and unique like the path itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from keypatch_jax import errors
from preprocessing import images, synthetic

# (index, id, ref): ref is ("file", path) | ("synthetic", seed, pose) | ("array", image, label).
Item = tuple[int, str, tuple[Any, ...]]


class SourceError(errors.UsageError):
  """`--source` cannot be used; the message names the problem in one line (exit status 2)."""


@dataclasses.dataclass
class Source:
  """A list of ids and a lazy iterator over the items.

  Attributes:
    spec: the `--source` string.
    ids: all item ids, in source order.
    num_labels: number of classes (0 when unlabelled).
    items: `items(wanted)` yields the items whose index is in the set `wanted`,
      in index order.
    root: the folder of a `folder:` source (ids are paths relative to it), else None.
  """

  spec: str
  ids: Sequence[str]
  num_labels: int
  items: Callable[[set[int]], Iterator[Item]]
  root: str | None = None

  def location(self, index: int) -> str:
    """Where item `index` comes from: its file path for a folder source, else its id."""
    return os.path.join(self.root, self.ids[index]) if self.root else self.ids[index]


def load_item(item: Item) -> tuple[np.ndarray, int]:
  """Loads one item: (uint8 RGB [H, W, 3], label). Raises `images.Reject`."""
  _, _, ref = item
  kind = ref[0]
  if kind == "file":
    return images.read_image_file(ref[1]), -1
  if kind == "synthetic":
    return synthetic.make_face(ref[1], item[0], pose=ref[2])
  if kind == "array":
    return array_to_rgb8(ref[1]), int(ref[2])
  raise ValueError(f"unknown item kind {kind!r}")


def array_to_rgb8(image: np.ndarray) -> np.ndarray:
  """A decoded array ([H, W], [H, W, 1|3|4], any int dtype) to uint8 RGB [H, W, 3]."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.size == 0:
    raise images.Reject("not_an_image")
  if image.dtype == np.uint16:
    image = (image >> 8).astype(np.uint8)
  elif image.dtype != np.uint8:
    image = np.clip(image, 0, 255).astype(np.uint8)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])


def list_files(path: str) -> list[str]:
  """Every file under `path`, recursively, as sorted `/`-separated relative paths.

  Whatever the name: whether a file is an image is decided by decoding it.
  Symbolic links to folders are followed, each real folder once (a link back
  to an ancestor, or a second link to the same folder, is not walked again),
  so cyclic links cannot loop. A sub-folder that cannot be listed is returned
  as an entry of its own, so it is counted (as a `read_error` reject) rather
  than skipped without a word.
  """
  rel: list[str] = []

  def unlistable(error: OSError) -> None:
    if error.filename and os.path.realpath(error.filename) != os.path.realpath(path):
      rel.append(_relative(error.filename, path))

  seen = {os.path.realpath(path)}
  for top, dirs, files in os.walk(path, followlinks=True, onerror=unlistable):
    walk = []
    for d in sorted(dirs):
      real = os.path.realpath(os.path.join(top, d))
      if real not in seen:
        seen.add(real)
        walk.append(d)
    dirs[:] = walk
    rel.extend(_relative(os.path.join(top, name), path) for name in files)
  return sorted(rel)


def _relative(file: str, root: str) -> str:
  return os.path.relpath(file, root).replace(os.sep, "/")


def folder_source(spec: str, path: str) -> Source:
  """Every file under `path` (see `list_files`), sorted by relative path."""
  if not os.path.isdir(path):
    raise SourceError(f"--source {spec}: no such directory")
  try:
    os.listdir(path)
  except OSError as e:
    raise SourceError(f"--source {spec}: cannot list the directory ({e.strerror})") from None
  rel = list_files(path)
  if not rel:
    raise SourceError(f"--source {spec}: the folder holds no files")

  def items(wanted: set[int]) -> Iterator[Item]:
    for i in sorted(wanted):
      yield i, rel[i], ("file", os.path.join(path, rel[i]))

  return Source(spec, rel, 0, items, root=path)


def synthetic_source(spec: str, num_images: int, seed: int, pose: str = "varied") -> Source:
  """`num_images` procedural faces in `pose` (see `preprocessing.synthetic`)."""
  if num_images < 1:
    raise SourceError(f"--num-images {num_images}: must be >= 1")
  if pose not in synthetic.POSES:
    raise SourceError(f"--source {spec}: the synthetic pose must be one of {sorted(synthetic.POSES)}")
  ids = [synthetic.face_id(i) for i in range(num_images)]

  def items(wanted: set[int]) -> Iterator[Item]:
    for i in sorted(wanted):
      yield i, ids[i], ("synthetic", seed, pose)

  return Source(spec, ids, synthetic.NUM_LABELS, items)


def tfds_source(spec: str, name: str, split: str, data_dir: str | None = None) -> Source:
  """A TFDS dataset split, read in its canonical order (`shuffle_files=False`).

  `tfds.load` prepares a dataset that is not in `data_dir` yet (download and
  build), as a user's `tfds.load` would. Ids are `NAME/SPLIT/INDEX`. Decoded
  images travel to the workers as arrays.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds

  tf.config.set_visible_devices([], "GPU")
  try:
    ds, info = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False, with_info=True)
  except Exception as e:  # noqa: BLE001 - any TFDS failure is one line for the user
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise SourceError(f"--source {spec}: {msg}") from None
  image_key = next((k for k, f in info.features.items() if isinstance(f, tfds.features.Image)), None)
  if image_key is None:
    raise SourceError(f"--source {spec}: dataset has no image feature")
  has_label = "label" in info.features.keys()
  num_labels = int(getattr(info.features["label"], "num_classes", 0) or 0) if has_label else 0
  count = int(ds.cardinality().numpy())
  if count < 0:
    count = sum(1 for _ in ds)
  if count == 0:
    raise SourceError(f"--source {spec}: split is empty")
  ids = [f"{name}/{split}/{i}" for i in range(count)]
  keys = [image_key, "label"] if has_label else [image_key]
  ds = ds.map(lambda ex: {k: ex[k] for k in keys})

  def items(wanted: set[int]) -> Iterator[Item]:
    for i, ex in enumerate(tfds.as_numpy(ds)):
      if i in wanted:
        yield i, ids[i], ("array", ex[image_key], int(ex["label"]) if has_label else -1)

  return Source(spec, ids, num_labels, items)


def open_source(spec: str, *, num_images: int, seed: int, tfds_data_dir: str | None = None) -> Source:
  """Parses `--source` and opens it. Raises `SourceError` with a one-line message."""
  kind, _, rest = spec.partition(":")
  if kind == "synthetic":
    return synthetic_source(spec, num_images, seed, rest or "varied")
  if kind == "folder" and rest:
    return folder_source(spec, rest)
  if kind == "tfds" and rest:
    name, _, split = rest.partition(":")
    return tfds_source(spec, name, split or "train", tfds_data_dir)
  raise SourceError(
    f"--source {spec}: expected folder:PATH, tfds:NAME[:split] or synthetic[:{'|'.join(synthetic.POSES)}]"
  )
