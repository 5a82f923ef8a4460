"""Orbax checkpoints of a run: `WORKDIR/checkpoints/<step>/{generator,rest,meta}` (docs/design.md §7).

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
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from keypatch_jax import errors, models, preflight
from keypatch_jax.state import TrainState, create_train_state

CHECKPOINT_DIR = preflight.CHECKPOINT_DIR
CONFIG_FILE = preflight.CONFIG_FILE


ITEMS = ("generator", "rest", "meta")
# The file each item's Orbax handler writes last-but-commit; an item without it cannot be restored.
ITEM_METADATA = {"generator": "_METADATA", "rest": "_METADATA", "meta": "metadata"}
INCOMPLETE_DIR = "incomplete_checkpoints"  # where a resumed run moves newer incomplete steps (never deletes)


class CheckpointError(errors.UserError):
  """No usable checkpoint (one-line message naming the workdir)."""


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


def newest_complete_step(directory: str, items: tuple[str, ...] = ITEMS) -> tuple[int | None, dict[int, list[str]]]:
  """The newest step under `directory` (WORKDIR/checkpoints) holding every one of `items`, and the newer
  steps skipped with what each lacks.

  Returns:
    (step or None when no step is complete, {skipped step: [missing item names]}).
  """
  skipped = {}
  for step in reversed(saved_steps(directory)):
    missing = missing_items(directory, step, items)
    if not missing:
      return step, skipped
    skipped[step] = missing
  return None, skipped


def describe_skipped(skipped: dict[int, list[str]]) -> str:
  """'step 4 lacks rest/, step 3 lacks generator/ and meta/'."""
  return ", ".join(f"step {s} lacks {' and '.join(m + '/' for m in items)}" for s, items in skipped.items())


def set_aside(workdir: str, steps: list[int]) -> str:
  """Moves checkpoint `steps` to WORKDIR/incomplete_checkpoints/ (so new saves can use their numbers); its path."""
  target = epath.Path(workdir) / INCOMPLETE_DIR
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
  """Saves an unreplicated state asynchronously (numpy copies, primary host writes)."""
  generator, rest = jax.device_get(_split(state))
  step = int(rest["step"])
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
  """Restores the full state (into the structure of `template`) and its meta."""
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
  return _join(template, out["generator"], out["rest"]), out["meta"]


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


def _open_step(
  workdir: str, step: int | None, items: tuple[str, ...]
) -> tuple[ml_collections.ConfigDict, ocp.CheckpointManager, int]:
  """The run's config, a read-only manager and the checkpoint step to restore `items` from.

  Without `step`: the newest step that holds `items` (a warning names newer
  steps that lack them).

  Raises:
    CheckpointError: no workdir, no checkpoint (with `items`), or `step` not
      among them or lacking an item.
  """
  if not os.path.isdir(workdir) and "://" not in workdir:
    raise CheckpointError(f"workdir {workdir!r} does not exist")
  config = read_config(workdir)
  mngr = manager(workdir, read_only=True)
  steps = mngr.all_steps()
  if not steps:
    raise CheckpointError(
      f"no checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)!r}; train first or pass the right --workdir"
    )
  if step is None:
    step, skipped = newest_complete_step(str(mngr.directory), items)
    if step is None:
      raise CheckpointError(f"no complete checkpoint in {workdir!r}: {describe_skipped(skipped)}")
    if skipped:
      logging.warning("Using checkpoint step %d of %s: %s", step, workdir, describe_skipped(skipped))
  elif step not in steps:
    raise CheckpointError(f"--step {step} not in {workdir!r} (available: {sorted(steps)})")
  elif missing := missing_items(str(mngr.directory), step, items):
    raise CheckpointError(f"--step {step} in {workdir!r}: {describe_skipped({step: missing})}")
  return config, mngr, step


def restore_generator(workdir: str, step: int | None = None, *, ema: bool = True):
  """Restores only what sampling needs: the generator and its variables.

  Args:
    workdir: a training workdir.
    step: checkpoint step (default: the latest).
    ema: use the EMA parameters (default) instead of the raw ones.

  Returns:
    (generator module (no device axis), variables {"params", "batch_stats"},
     config, step).

  Raises:
    CheckpointError: a one-line message when there is no workdir or checkpoint.
  """
  config, mngr, step = _open_step(workdir, step, ("generator",))
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
  out = mngr.restore(step, args=ocp.args.Composite(generator=ocp.args.StandardRestore(abstract)))
  mngr.close()
  restored = out["generator"]
  params = restored["ema_params"] if ema else restored["params"]
  return generator, {"params": params, "batch_stats": restored["batch_stats"]}, config, step


def restore_discriminator(workdir: str, step: int | None = None):
  """Restores only the discriminator (params, batch_stats) of a checkpoint, for evaluation.

  Partial restore of the `rest` item: only its "d" params and batch_stats are
  read (`PyTreeRestore(partial_restore=True)`); the Adam states are skipped.

  Returns:
    (KindsDiscriminator, variables {"params", "batch_stats"} with the per-kind
     statistics [K, ...], config, step).

  Raises:
    CheckpointError: a one-line message when there is no workdir or checkpoint.
  """
  config, mngr, step = _open_step(workdir, step, ("rest",))
  _, rest = _split(jax.eval_shape(lambda: create_train_state(config, jax.random.key(0))))
  wanted = {"d": {"params": rest["d"]["params"], "batch_stats": rest["d"]["batch_stats"]}}
  wanted = _abstract(wanted)
  restore_args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  out = mngr.restore(
    step,
    args=ocp.args.Composite(rest=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args, partial_restore=True)),
  )
  mngr.close()
  d = out["rest"]["d"]
  _, discriminator = models.build_models(config)
  return discriminator, {"params": d["params"], "batch_stats": d["batch_stats"]}, config, step
