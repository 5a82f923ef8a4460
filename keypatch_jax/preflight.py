"""Checks that need only the arguments and the file system, run before anything slow.

`sample`, `evaluate` and `probe` restore a checkpoint and compile a model
before they would otherwise notice a mistyped path: on a busy machine that
is minutes. These checks answer in milliseconds, with the messages the slow
path would give, and import nothing heavy. Remote paths (`gs://...`) are
left to the slow path.
"""

from __future__ import annotations

import json
import os

from keypatch_jax import errors
from keypatch_jax.features import INFO_FILE

CONFIG_FILE = "config.json"  # a run's config, next to its checkpoints (checkpoint.py)
CHECKPOINT_DIR = "checkpoints"
NO_TRAIN_SPLIT = "has no train split (0 train images)"  # what `no_baseline` says of such a dataset
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what OpenCV writes


def _remote(path: str) -> bool:
  return "://" in path


def runs_below(folder: str) -> list[str]:
  """The immediate sub-folders of `folder` that hold a training run (a config file), sorted."""
  try:
    names = sorted(os.listdir(folder))
  except OSError:
    return []
  return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n, CONFIG_FILE))]


def not_a_workdir(workdir: str) -> str:
  """The message for a folder without a run's config, naming the runs just below it (the demo's WORKDIR/train)."""
  runs = runs_below(workdir)
  hint = f" (did you mean --workdir {' or '.join(runs)}?)" if runs else ""
  return f"{os.path.join(workdir, CONFIG_FILE)!r} not found: {workdir!r} is not a training workdir{hint}"


def _folder(path: str, what: str, missing_hint: str) -> bool:
  """False for a remote path (left to the slow path); raises when a local `path` is not a folder."""
  if _remote(path):
    return False
  if not os.path.isdir(path):
    raise errors.UserError(f"{what} {path!r} does not exist{missing_hint}")
  return True


def workdir(path: str) -> None:
  """A local `--workdir` must exist, hold a run's config and at least one checkpoint step.

  Raises:
    errors.UserError: one line naming the folder and what to do.
  """
  if not _folder(path, "workdir", ""):
    return
  if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
    raise errors.UserError(not_a_workdir(path))
  checkpoints = os.path.join(path, CHECKPOINT_DIR)
  steps = [n for n in os.listdir(checkpoints) if n.isdigit()] if os.path.isdir(checkpoints) else []
  if not steps:
    raise errors.UserError(f"no checkpoint in {checkpoints!r}; train first or pass the right --workdir")


def data(path: str) -> None:
  """A local `--data` must be a folder written by `python -m preprocessing`.

  Raises:
    errors.UserError: one line naming the folder and what to do.
  """
  if not _folder(path, "data dir", "; run `python -m preprocessing`"):
    return
  if not os.path.isfile(os.path.join(path, INFO_FILE)):
    raise errors.UserError(
      f"{os.path.join(path, INFO_FILE)!r} not found: {path!r} is not a preprocessed dataset; "
      "run `python -m preprocessing --output` on it first"
    )


def run_data_dir(workdir: str) -> str | None:
  """The `data_dir` a local run was trained on (its config.json), or None for a remote `workdir`.

  Call after `workdir(...)`: the config file exists.

  Raises:
    errors.UserError: config.json is not JSON or names no data_dir.
  """
  if _remote(workdir):
    return None
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      data_dir = json.load(f).get("data_dir")
  except (OSError, ValueError, AttributeError) as e:
    raise errors.UserError(f"{path!r} is not a training config ({type(e).__name__}: {e})") from None
  if not data_dir:
    raise errors.UserError(f"{path!r} names no data_dir; pass --baseline-data DIR (a dataset with a train split)")
  return str(data_dir)


def no_baseline(chosen_by: str, path: str, what: str) -> str:
  """The one-line message for a dataset that cannot give the patch-blind baseline: `what` is wrong with it."""
  return (
    f"patch-blind baseline: {chosen_by} {path!r} {what}; pass --baseline-data DIR, a preprocessed dataset "
    "with a train split (the images the model was trained on)"
  )


def baseline_data(path: str, chosen_by: str) -> None:
  """A local dataset for the patch-blind baseline must exist and have a train split (docs/design.md §6.2).

  Args:
    path: the dataset; chosen_by: how it was chosen, for the message (`--baseline-data`, or the run's data_dir).

  Raises:
    errors.UserError: one line naming the folder, how it was chosen and `--baseline-data`.
  """
  if _remote(path):
    return
  info = os.path.join(path, INFO_FILE)
  if not os.path.isfile(info):
    what = "does not exist" if not os.path.isdir(path) else f"is not a preprocessed dataset (no {INFO_FILE})"
    raise errors.UserError(no_baseline(chosen_by, path, what))
  try:
    with open(info) as f:
      num_train = int(json.load(f)["counts"].get("train", 0))
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise errors.UserError(f"{info!r} is not a keypatch dataset_info file ({type(e).__name__}: {e})") from None
  if num_train == 0:
    raise errors.UserError(no_baseline(chosen_by, path, NO_TRAIN_SPLIT))


def run_and_data(args, *, output_suffixes: tuple[str, ...]) -> None:
  """The cheap checks of a command over a run and a dataset: `args.output`, `args.workdir`, `args.data`.

  Raises:
    errors.UserError / errors.UsageError: one line, before anything slow.
  """
  if args.output is not None:
    output(args.output, suffixes=output_suffixes)
  workdir(args.workdir)
  data(args.data)


def patch_folder(path: str) -> None:
  """`--patches` must be a folder holding files (whether they decode is checked when they are read).

  Raises:
    errors.UserError: one line naming the folder.
  """
  if not os.path.isdir(path):
    raise errors.UserError(f"--patches {path!r} is not a directory")
  if not any(os.path.isfile(os.path.join(path, f)) for f in os.listdir(path)):
    raise errors.UserError(f"--patches {path!r} holds no files")


def output(path: str, *, flag: str = "--output", suffixes: tuple[str, ...] | None = None) -> None:
  """An output file name that can be written: not a folder, a known suffix, a writable place.

  The folders it needs may be missing (they are created); the nearest one
  that exists must be a writable folder.

  Raises:
    errors.UsageError: one line naming the flag and the value (exit status 2, as a bad option).
  """
  if _remote(path):
    return
  if os.path.isdir(path):
    raise errors.UsageError(f"{flag} {path!r} is a directory; give a file name")
  if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
    raise errors.UsageError(f"{flag} {path!r}: use a file name ending in {' or '.join(suffixes)}")
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise errors.UsageError(f"{flag} {path!r}: {parent!r} is a file, not a directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise errors.UsageError(f"{flag} {path!r}: {parent!r} is not writable")
