"""Rerunning training on an existing workdir: what the new config may change, and where the data continues.

Config: fields that change the state's shapes or dtypes (`model.conv_dim`,
`image_size`, `model.embed_dim`, `num_patches`, `loss.fakes`, ...) cannot
change under existing checkpoints. `check_config_change` finds them by
tracing the state (`jax.eval_shape`, nothing is allocated) under the old and
the new config, so no hand-kept list of fields can go stale, and names each
one with its old and new value before the run writes anything.

Data position: a checkpoint stores the epoch and the examples of it already
seen. `Segment` maps the steps of this run to data positions at this run's
batch size, so a rerun with another `batch_size` (e.g. on more accelerators)
continues the same epoch at the same example, and the per-epoch λ schedule
(paper Sec. 3.3; `losses.lambda_schedule`) follows the epoch rather than the
raw step count.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from keypatch_jax import validation
from keypatch_jax.state import create_train_state


def _with(config: ml_collections.ConfigDict, changes: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-path `changes` applied (changes the types forbid are left out)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for path, value in changes.items():
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
      node = node[p]
    try:
      node[leaf] = value
    except (TypeError, ValueError):
      pass
  return out


def _state_signature(config) -> list[tuple[str, tuple[int, ...], str]]:
  """[(path, shape, dtype)] of every array of the train state `config` builds, by tracing only.

  Paths, not the tree definition: that also holds static fields (the optax
  transform), which differ between any two builds.
  """
  state = jax.eval_shape(lambda: create_train_state(config, jax.random.key(0)))
  leaves, _ = jax.tree_util.tree_flatten_with_path(state)
  return [(jax.tree_util.keystr(path), tuple(x.shape), str(x.dtype)) for path, x in leaves]


def _changed(old_flat: dict[str, Any], new_flat: dict[str, Any]) -> list[str]:
  """The dotted fields two flattened configs both have with different values, sorted."""
  return [k for k in sorted(new_flat) if k in old_flat and old_flat[k] != new_flat[k]]


def _change(key: str, old_flat: dict[str, Any], new_flat: dict[str, Any]) -> str:
  """ "model.conv_dim 8 -> 16": one changed field as the messages name it."""
  return f"{key} {old_flat[key]!r} -> {new_flat[key]!r}"


def check_config_change(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises if `new` changes the shapes or dtypes of the state that `old` (the workdir's config) saved.

  Fields only `new` has keep their value on both sides (older configs); a
  field that changes nothing in the state (learning rate, data_dir, ...) may
  change.

  Raises:
    validation.ConfigError: one line naming each shape-changing field with its
      old and new value.
  """
  old_flat, new_flat = validation.flatten(old), validation.flatten(new)
  changed = {k: old_flat[k] for k in _changed(old_flat, new_flat)}
  if not changed:
    return
  before = _with(new, changed)  # the new config with the old values of the changed fields
  try:
    reference = _state_signature(before)
  except (TypeError, ValueError, KeyError, AttributeError):  # an old value this code cannot build
    reference = None
  if reference == _state_signature(new):
    return
  culprits = [k for k in changed if reference is None or _state_signature(_with(before, {k: new_flat[k]})) != reference]
  fields = ", ".join(_change(k, old_flat, new_flat) for k in culprits or changed)
  raise validation.ConfigError(
    f"--workdir {workdir} holds checkpoints of another model shape ({fields}); rerun with the old "
    "value(s) or use a new --workdir"
  )


def describe_changes(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> str | None:
  """What a resumed run changes in the workdir's config, as one line (None: nothing).

  Lists the fields whose value differs (they keep the state's shapes, else
  `check_config_change` has refused them) and the fields the workdir's config
  lacks, which a newer code version added: they take their current value,
  which may differ from what the older code did (e.g. `loss.spatial_weight`).
  """
  old_flat, new_flat = validation.flatten(old), validation.flatten(new)
  # batch_size has its own line (`Segment`).
  changed = [_change(k, old_flat, new_flat) for k in _changed(old_flat, new_flat) if k != "batch_size"]
  added = [f"{k}={new_flat[k]!r}" for k in sorted(new_flat) if k not in old_flat and k != "batch_size"]
  parts = []
  if changed:
    parts.append("changed: " + ", ".join(changed))
  if added:
    parts.append("not in the workdir's config (written by an older version), now: " + ", ".join(added))
  return "; ".join(parts) or None


@dataclasses.dataclass(frozen=True)
class Segment:
  """The data position of every step of one run (from scratch or from a checkpoint) at its batch size.

  Attributes:
    start_step: the optimizer step the run starts from.
    epoch: the epoch at `start_step`.
    examples: examples of that epoch already seen at `start_step` (global).
    num_train: training examples per epoch.
    batch_size: this run's global batch size.
  """

  start_step: int
  epoch: int
  examples: int
  num_train: int
  batch_size: int

  @classmethod
  def start(cls, step: int, epoch: int, examples: int, num_train: int, batch_size: int) -> Segment:
    """A segment whose position is normalised: fewer than one batch left in an epoch starts the next one."""
    if num_train - examples < batch_size:
      epoch, examples = epoch + 1, 0
    return cls(step, epoch, max(0, examples), num_train, batch_size)

  @property
  def steps_per_epoch(self) -> int:
    return self.num_train // self.batch_size

  @property
  def first_epoch_steps(self) -> int:
    """Batches left in the epoch the run starts in."""
    return (self.num_train - self.examples) // self.batch_size

  @property
  def step_offset(self) -> int:
    """`(step + step_offset) // steps_per_epoch` is the epoch of any step of this run (0 unless resumed
    mid-epoch after a batch size change)."""
    spe = self.steps_per_epoch
    return spe * (self.epoch + 1) - self.first_epoch_steps - self.start_step

  def position(self, step: int) -> tuple[int, int]:
    """(epoch, examples of it seen) after optimizer step `step` (>= start_step)."""
    done = step - self.start_step
    if done < self.first_epoch_steps:
      return self.epoch, self.examples + done * self.batch_size
    rest = done - self.first_epoch_steps
    return self.epoch + 1 + rest // self.steps_per_epoch, (rest % self.steps_per_epoch) * self.batch_size

  def end_step(self, num_epochs: int) -> int:
    """The step at which epoch `num_epochs` begins (the end of training by epochs)."""
    if self.epoch >= num_epochs:
      return self.start_step
    return self.start_step + self.first_epoch_steps + (num_epochs - self.epoch - 1) * self.steps_per_epoch


def checkpoint_position(meta: dict[str, Any], batch_size: int) -> tuple[int, int]:
  """(epoch, examples of it seen) stored in a checkpoint's meta; `batch_size` is the saving run's batch
  (used for checkpoints written before the example count was stored)."""
  if "examples_into_epoch" in meta:
    return int(meta["epoch"]), int(meta["examples_into_epoch"])
  return int(meta["epoch"]), int(meta["batches_into_epoch"]) * int(meta.get("batch_size", batch_size))
