"""What a preprocessed dataset says about itself, checked against the config.

`DatasetMeta` holds the fields of `dataset_info.json` (docs/design.md §2.2)
that training, sampling and evaluation need; `load_meta` reads it and checks S
and N against the config, `check_shards` the shard files of the splits (one
stat each), `steps_per_epoch` the training set against the batch size. A
disagreement is a `DataConfigError` (or `features.DatasetFormatError`), one
line naming the directory and the flag to change, raised before anything slow
starts.
"""

from __future__ import annotations

import dataclasses

from keypatch_jax import errors, features


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What training needs to know about a preprocessed dataset."""

  data_dir: str
  image_size: int
  num_patches: int
  num_train: int
  num_test: int
  num_labels: int
  info: dict


class DataConfigError(errors.UserError):
  """The config and the dataset disagree, or the dataset cannot be used."""


def load_meta(data_dir: str, image_size: int | None = None, num_patches: int | None = None) -> DatasetMeta:
  """Reads `dataset_info.json` and checks it against the expected S and N.

  Raises:
    features.DatasetFormatError / DataConfigError with a one-line message.
  """
  if not data_dir:
    raise DataConfigError(
      "config.data_dir is empty; set --config.data_dir=DIR (a directory written by `python -m preprocessing`)"
    )
  info = features.read_dataset_info(data_dir)
  meta = DatasetMeta(
    data_dir,
    int(info["image_size"]),
    int(info["num_patches"]),
    int(info["counts"].get("train", 0)),
    int(info["counts"].get("test", 0)),
    int(info.get("num_labels", 0) or 0),
    info,
  )
  if image_size is not None and meta.image_size != image_size:
    raise DataConfigError(
      f"{data_dir}: dataset image_size {meta.image_size} != config "
      f"image_size {image_size}; set --config.image_size={meta.image_size} "
      "or preprocess with --image-size"
    )
  if num_patches is not None and meta.num_patches != num_patches:
    raise DataConfigError(
      f"{data_dir}: dataset num_patches {meta.num_patches} != config "
      f"num_patches {num_patches}; set --config.num_patches={meta.num_patches}"
    )
  return meta


def check_shards(meta: DatasetMeta, splits: tuple[str, ...]) -> None:
  """Checks the shard files of `splits` against `dataset_info.json` (one stat each): see `features.split_files`.

  Raises:
    features.DatasetFormatError: a missing or wrong-sized shard, named with the command that rebuilds it.
  """
  for split in splits:
    features.split_files(meta.data_dir, split, meta.info)


def steps_per_epoch(meta: DatasetMeta, global_batch: int) -> int:
  """Full global batches per epoch (the last partial batch is dropped)."""
  steps = meta.num_train // global_batch
  if steps < 1:
    raise DataConfigError(
      f"{meta.data_dir}: {meta.num_train} training images is fewer than one "
      f"batch of {global_batch}; lower --config.batch_size"
    )
  return steps
