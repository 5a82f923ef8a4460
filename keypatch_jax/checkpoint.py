"""Orbax checkpoints of a run: `WORKDIR/checkpoints/<step>/{generator,rest,meta}` (docs/design.md §8.1).

The state is saved as three Orbax items so that sampling restores only what it
needs: `generator` (params, batch_stats, EMA params), `rest` (the step, the
generator's Adam state, the discriminator) and `meta` (JSON: the step, its
data position and what that position depends on). The data position of a step
is (epoch, batches into the epoch) = divmod(step, steps_per_epoch): the input
pipeline is deterministic, so that pair is all a restart needs.

Resume order (`train.train_and_evaluate`): build the fresh state -> check the
latest checkpoint's `meta` against the run (`check_resumable`) -> restore the
state into the fresh one -> rebuild the input iterator at the restored step ->
go on.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from keypatch_jax import digests, errors, models, preflight
from keypatch_jax.state import TrainState, create_train_state

CHECKPOINT_DIR = preflight.CHECKPOINT_DIR
CONFIG_FILE = preflight.CONFIG_FILE


ITEMS = ("generator", "rest", "meta")
# The file each item's Orbax handler writes last-but-commit; an item without it cannot be restored.
ITEM_METADATA = {"generator": "_METADATA", "rest": "_METADATA", "meta": "metadata"}
INCOMPLETE_DIR = "incomplete_checkpoints"  # where a resumed run moves newer incomplete steps (never deletes)
DAMAGED_DIR = "damaged_checkpoints"  # where a resumed run moves newer damaged steps (never deletes)


class CheckpointError(errors.UserError):
  """No usable checkpoint (one-line message naming the workdir)."""


class DamagedCheckpointError(CheckpointError):
  """A restored item differs from the digests recorded when its step was saved (`digests.py`)."""


def missing_items(directory: str, step: int, items: tuple[str, ...] = ITEMS) -> list[str]:
  """The items of checkpoint `step` under `directory` (WORKDIR/checkpoints) that are absent or incomplete."""
  return [name for name in items if not (epath.Path(directory) / str(step) / name / ITEM_METADATA[name]).exists()]


def saved_steps(directory: str) -> list[int]:
  """The finished checkpoint steps under `directory` (WORKDIR/checkpoints), without creating anything.

  Orbax writes a step under a temporary name and renames it when done, so a
  save that never finished is not listed.
  """
  path = epath.Path(directory)
  if not path.is_dir():
    return []
  return sorted(int(child.name) for child in path.iterdir() if child.name.isdigit())


def newest_complete_step(
  directory: str, items: tuple[str, ...] = ITEMS, below: int | None = None
) -> tuple[int | None, dict[int, list[str]]]:
  """The newest step under `directory` (WORKDIR/checkpoints) holding every one of `items`, and the newer
  steps skipped with what each lacks.

  Args:
    below: consider only steps before this one.

  Returns:
    (step or None when no step is complete, {skipped step: [missing item names]}).
  """
  skipped = {}
  for step in reversed([s for s in saved_steps(directory) if below is None or s < below]):
    missing = missing_items(directory, step, items)
    if not missing:
      return step, skipped
    skipped[step] = missing
  return None, skipped


def describe_skipped(skipped: dict[int, list[str]]) -> str:
  """'step 4 lacks rest/, step 3 lacks generator/ and meta/'."""
  return ", ".join(f"step {s} lacks {' and '.join(m + '/' for m in items)}" for s, items in skipped.items())


def set_aside(workdir: str, steps: list[int], folder: str = INCOMPLETE_DIR) -> str:
  """Moves checkpoint `steps` to WORKDIR/`folder`/ (so new saves can use their numbers); its path."""
  target = epath.Path(workdir) / folder
  target.mkdir(parents=True, exist_ok=True)
  for step in steps:
    dest = target / str(step)
    k = 1
    while dest.exists():
      dest, k = target / f"{step}.{k}", k + 1
    (epath.Path(workdir) / CHECKPOINT_DIR / str(step)).rename(dest)
  return os.fspath(target)


def manager(
  workdir: str, *, max_to_keep: int = 3, save_every: int = 1, read_only: bool = False
) -> ocp.CheckpointManager:
  """A `CheckpointManager` with async saves over `WORKDIR/checkpoints`, keeping the latest `max_to_keep`."""
  policy = None if read_only else ocp.checkpoint_managers.LatestN(n=max_to_keep)
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy,
    save_interval_steps=0 if read_only else save_every,
    create=not read_only,
    enable_async_checkpointing=not read_only,
    read_only=read_only,
  )
  path = os.path.join(os.path.abspath(workdir) if "://" not in workdir else workdir, CHECKPOINT_DIR)
  return ocp.CheckpointManager(path, options=options, item_names=("generator", "rest", "meta"))


def _split(state: TrainState) -> tuple[dict, dict]:
  generator = {"params": state.g.params, "batch_stats": state.g.batch_stats, "ema_params": state.ema_params}
  rest = {
    "step": state.step,
    "g_opt_state": state.g.opt_state,
    "d": {
      "params": state.d.params,
      "batch_stats": state.d.batch_stats,
      "opt_state": state.d.opt_state,
      "step": state.d.step,
    },
    "g_step": state.g.step,
  }
  return generator, rest


def _join(template: TrainState, generator: dict, rest: dict) -> TrainState:
  g = template.g.replace(
    params=generator["params"], batch_stats=generator["batch_stats"], opt_state=rest["g_opt_state"], step=rest["g_step"]
  )
  d = template.d.replace(
    params=rest["d"]["params"],
    batch_stats=rest["d"]["batch_stats"],
    opt_state=rest["d"]["opt_state"],
    step=rest["d"]["step"],
  )
  return template.replace(step=rest["step"], g=g, d=d, ema_params=generator["ema_params"])


def save(mngr: ocp.CheckpointManager, state: TrainState, meta: dict[str, Any], *, force: bool = False) -> bool:
  """Saves an unreplicated state asynchronously (numpy copies, primary host writes).

  `meta` gains "digests": {"generator" | "rest": {leaf path: SHA-256}} of the
  arrays written (`digests.py`), which `restore` and the readers check.
  """
  generator, rest = jax.device_get(_split(state))
  step = int(rest["step"])
  meta = {**meta, "digests": {"generator": digests.tree_digests(generator), "rest": digests.tree_digests(rest)}}
  return mngr.save(
    step,
    args=ocp.args.Composite(
      generator=ocp.args.StandardSave(generator), rest=ocp.args.StandardSave(rest), meta=ocp.args.JsonSave(meta)
    ),
    force=force,
  )


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore(mngr: ocp.CheckpointManager, template: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
  """Restores the full state (into the structure of `template`) and its meta.

  Raises:
    DamagedCheckpointError: an array differs from the digest its step recorded.
  """
  step = mngr.latest_step() if step is None else step
  generator, rest = _split(template)
  out = mngr.restore(
    step,
    args=ocp.args.Composite(
      generator=ocp.args.StandardRestore(_abstract(generator)),
      rest=ocp.args.StandardRestore(_abstract(rest)),
      meta=ocp.args.JsonRestore(),
    ),
  )
  verify(out, step, str(mngr.directory))
  return _join(template, out["generator"], out["rest"]), out["meta"]


def verify(restored: dict[str, Any], step: int, directory: str) -> None:
  """Checks restored items against the digests in `restored["meta"]` (a step saved without them passes).

  Raises:
    DamagedCheckpointError: one line naming the step, the item and the first differing array.
  """
  recorded = (restored.get("meta") or {}).get("digests") or {}
  for item, tree in restored.items():
    if item == "meta" or item not in recorded:
      continue
    bad = digests.mismatches(tree, recorded[item])
    if bad:
      raise DamagedCheckpointError(
        f"checkpoint step {step} in {os.path.dirname(directory.rstrip('/'))!r} is damaged: {len(bad)} array(s) "
        f"of {item}/ differ from the digests recorded when it was saved (first: {bad[0]})"
      )


def ignore_closed_loop_callbacks() -> None:
  """Drops the "Event loop is closed" reports of TensorStore operations that finish after Orbax gave up.

  When one array of a step cannot be read (or written: disk full), Orbax stops
  and closes its event loop; the other TensorStore operations still complete
  and report, through `sys.unraisablehook`, one traceback each (65 for the
  tiny generator, 75 for a failed tiny save). Other unraisable errors reach
  the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "keypatch_quiet", False):
    return

  def hook(unraisable) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.keypatch_quiet = True
  sys.unraisablehook = hook


def _files(path: str) -> set[str]:
  """Every file below `path` (empty when it is gone)."""
  out, todo = set(), [epath.Path(path)]
  while todo:
    folder = todo.pop()
    try:
      children = list(folder.iterdir())
    except OSError:  # gone (or never there)
      continue
    for child in children:
      if child.is_dir():
        todo.append(child)
      else:
        out.add(os.fspath(child))
  return out


def read_newest(
  workdir: str,
  read: Callable[[ocp.CheckpointManager, int], Any],
  step: int | None,
  items: tuple[str, ...],
  *,
  warn_incomplete: bool = True,
) -> tuple[Any, int, dict[int, str]]:
  """`read(manager, step)` of the newest step that is complete, intact and still there (docs/design.md §7.3).

  Without `step`, a step whose `read` raises `DamagedCheckpointError` (an
  array differs from its digest), raises a ValueError or OSError (TensorStore's
  DATA_LOSS: a damaged index or metadata file), or fails because files of it
  disappeared meanwhile (a training run deleting old steps, `max_to_keep`), is
  passed over for the next newest complete one; one warning names every step
  passed over and why. With `step`, any of these is a `CheckpointError`.

  Args:
    workdir: a training workdir (local or gs://).
    read: restores what the caller needs from the read-only manager; raises
      `DamagedCheckpointError` through `verify`.
    step: a checkpoint step, or None for the newest usable one.
    items: the items `read` needs (a step lacking one is incomplete).
    warn_incomplete: warn about newer incomplete steps passed over (the
      training loop names them itself).

  Returns:
    (what `read` returned, its step, {step passed over: why}).

  Raises:
    CheckpointError: no workdir, no checkpoint, `step` absent, incomplete,
      damaged or deleted, or no usable step left (one line).
  """
  if not os.path.isdir(workdir) and "://" not in workdir:
    raise CheckpointError(f"workdir {workdir!r} does not exist")
  mngr = manager(workdir, read_only=True)
  directory = str(mngr.directory)
  try:
    steps = saved_steps(directory)
    if not steps:
      raise CheckpointError(
        f"no checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)!r}; train first or pass the right --workdir"
      )
    if step is not None:
      if step not in steps:
        raise CheckpointError(f"--step {step} not in {workdir!r} (available: {steps})")
      if missing := missing_items(directory, step, items):
        raise CheckpointError(f"--step {step} in {workdir!r}: {describe_skipped({step: missing})}")
    explicit, passed = step is not None, {}
    while True:
      if not explicit:
        step, skipped = newest_complete_step(directory, items, below=min(passed) if passed else None)
        if step is None:
          why = "; ".join([*passed.values(), *([describe_skipped(skipped)] if skipped else [])])
          raise CheckpointError(f"no usable checkpoint in {workdir!r}: {why}")
        if skipped and not passed and warn_incomplete:
          logging.warning("Using checkpoint step %d of %s: %s", step, workdir, describe_skipped(skipped))
      files = _files(os.path.join(directory, str(step)))
      try:
        out = read(mngr, step)
      except DamagedCheckpointError as e:
        passed[step] = str(e)
      except Exception as e:  # a step that lost files meanwhile, or that Orbax cannot decode; the rest re-raises
        if files - _files(os.path.join(directory, str(step))):
          passed[step] = f"checkpoint step {step} in {workdir!r} was deleted while it was read"
        elif isinstance(e, (ValueError, OSError)):  # TensorStore's DATA_LOSS, undecodable metadata
          ignore_closed_loop_callbacks()
          reason = " ".join(str(e).split())[:200]
          passed[step] = f"checkpoint step {step} in {workdir!r} cannot be read ({type(e).__name__}: {reason})"
        else:
          raise
      else:
        if passed:
          logging.warning("%s; using step %d", "; ".join(passed.values()), step)
        return out, step, passed
      if explicit:
        raise CheckpointError(f"--step {step}: {passed[step]}; pass another --step (available: {steps})")
  finally:
    mngr.close()


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The `meta` item of checkpoint `step` (JSON; see `train.train_and_evaluate`'s `position`)."""
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def check_resumable(saved: dict[str, Any], current: dict[str, Any], workdir: str) -> None:
  """Compares a checkpoint's `meta` with the run about to resume from it.

  Args:
    saved: the checkpoint's meta (`read_meta`).
    current: the same fields for the current config and dataset.
    workdir: named in the messages.

  Raises:
    CheckpointError: the checkpoint is for other image sizes or patch counts
      (its networks cannot be restored into this config's).

  A different `data_dir` is logged as a warning: the run goes on, but its
  data is no longer the one an uninterrupted run would have seen. A different
  batch size is no such change: the run continues at the checkpoint's epoch
  and example (`resume.Segment`).
  """
  for key in ("image_size", "num_patches"):
    if key in saved and saved[key] != current[key]:
      raise CheckpointError(
        f"the checkpoint at step {saved['step']} in {workdir!r} has {key} {saved[key]} but the config has "
        f"{current[key]}; train on a dataset with {key} {saved[key]} or use a new --workdir"
      )
  for key in ("data_dir",):
    if key in saved and saved[key] != current[key]:
      logging.warning(
        "Resuming %s from step %s with %s %r (the checkpoint had %r): the data order differs from an "
        "uninterrupted run's",
        workdir,
        saved["step"],
        key,
        current[key],
        saved[key],
      )


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config as JSON next to the checkpoints (sampling reads it)."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  path = epath.Path(workdir) / CONFIG_FILE
  tmp = path.with_name(CONFIG_FILE + ".tmp")  # then a rename: an interrupted write never leaves a truncated file
  tmp.write_text(config.to_json_best_effort(indent=2))
  tmp.replace(path)


def has_config(workdir: str) -> bool:
  """Whether `workdir` holds a run's config.json."""
  return (epath.Path(workdir) / CONFIG_FILE).exists()


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not epath.Path(path).exists():
    raise CheckpointError(preflight.not_a_workdir(workdir))
  try:
    config = ml_collections.ConfigDict(json.loads(epath.Path(path).read_bytes()))
    config.loss.fakes = tuple(config.loss.fakes)
  except (ValueError, AttributeError, KeyError, TypeError) as e:  # JSON errors are ValueErrors
    raise CheckpointError(f"{path!r} is not a training config ({type(e).__name__}: {e})") from None
  return config


def _with_meta(mngr: ocp.CheckpointManager, step: int, **args) -> dict[str, Any]:
  """`mngr.restore` of the items in `args` plus the step's `meta` (when it has one), verified (`verify`)."""
  if not missing_items(str(mngr.directory), step, ("meta",)):
    args["meta"] = ocp.args.JsonRestore()
  out = mngr.restore(step, args=ocp.args.Composite(**args))
  verify(out, step, str(mngr.directory))
  return out


def restore_generator(workdir: str, step: int | None = None, *, ema: bool = True):
  """Restores only what sampling needs: the generator and its variables.

  Args:
    workdir: a training workdir.
    step: checkpoint step (default: the newest complete and intact one, `read_newest`).
    ema: use the EMA parameters (default) instead of the raw ones.

  Returns:
    (generator module (no device axis), variables {"params", "batch_stats"},
     config, step).

  Raises:
    CheckpointError: a one-line message when there is no workdir or usable checkpoint.
  """
  if not os.path.isdir(workdir) and "://" not in workdir:
    raise CheckpointError(f"workdir {workdir!r} does not exist")
  config = read_config(workdir)
  generator, _ = models.build_models(config)
  s, n = config.image_size, config.num_patches
  shapes = jax.eval_shape(
    lambda: generator.init(
      jax.random.key(0),
      np.zeros((1, n, s, s, 3), np.float32),
      np.zeros((1, config.model.z_dim), np.float32),
      train=False,
    )
  )
  abstract = {"params": shapes["params"], "batch_stats": shapes["batch_stats"], "ema_params": shapes["params"]}

  def read(mngr, step):
    return _with_meta(mngr, step, generator=ocp.args.StandardRestore(abstract))["generator"]

  restored, step, _ = read_newest(workdir, read, step, ("generator",))
  params = restored["ema_params"] if ema else restored["params"]
  return generator, {"params": params, "batch_stats": restored["batch_stats"]}, config, step


def restore_discriminator(workdir: str, step: int | None = None):
  """Restores only the discriminator (params, batch_stats) of a checkpoint, for evaluation.

  Partial restore of the `rest` item: only its "d" params and batch_stats are
  read (`PyTreeRestore(partial_restore=True)`); the Adam states are skipped.
  The arrays read are checked against the step's digests.

  Returns:
    (KindsDiscriminator, variables {"params", "batch_stats"} with the per-kind
     statistics [K, ...], config, step).

  Raises:
    CheckpointError: a one-line message when there is no workdir or usable checkpoint.
  """
  if not os.path.isdir(workdir) and "://" not in workdir:
    raise CheckpointError(f"workdir {workdir!r} does not exist")
  config = read_config(workdir)
  _, rest = _split(jax.eval_shape(lambda: create_train_state(config, jax.random.key(0))))
  wanted = _abstract({"d": {"params": rest["d"]["params"], "batch_stats": rest["d"]["batch_stats"]}})
  restore_args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray), wanted)

  def read(mngr, step):
    args = ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)
    return _with_meta(mngr, step, rest=args)["rest"]["d"]

  d, step, _ = read_newest(workdir, read, step, ("rest",))
  _, discriminator = models.build_models(config)
  return discriminator, {"params": d["params"], "batch_stats": d["batch_stats"]}, config, step
