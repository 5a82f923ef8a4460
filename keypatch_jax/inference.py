"""What `sample`, `evaluate` and `probe` share: restore a run, check it against
a dataset, generate under `jax.jit`, and turn bad input into one-line errors."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Sequence

import jax
import numpy as np

from keypatch_jax import checkpoint, features, input_pipeline, models, patches

# Errors that are the user's input, not a bug: printed as one line, exit 1.
USER_ERRORS = (
  checkpoint.CheckpointError,
  input_pipeline.DataConfigError,
  features.DatasetFormatError,
  patches.PatchError,
)


@dataclasses.dataclass(frozen=True)
class Run:
  """A restored generator and the dataset it is used on."""

  generator: models.Generator
  variables: dict  # {"params", "batch_stats"}
  config: object  # the run's ml_collections.ConfigDict
  step: int
  meta: input_pipeline.DatasetMeta | None


def load_run(
  workdir: str,
  data_dir: str | None,
  *,
  step: int | None = None,
  ema: bool = True,
  num_patches: int | None = None,
) -> Run:
  """Restores the generator of `workdir` (no optimizer state) and checks it against `data_dir`.

  Args:
    workdir: a training workdir.
    data_dir: a preprocessed dataset, or None (user patches only).
    step: checkpoint step (default: the latest).
    ema: EMA parameters (default) or the raw ones.
    num_patches: N to use instead of the checkpoint's; the dataset's stored
      boxes must have that many.

  Raises:
    CheckpointError, DatasetFormatError, DataConfigError: one-line messages.
  """
  generator, variables, config, step = checkpoint.restore_generator(workdir, step, ema=ema)
  if data_dir is None:
    return Run(generator, variables, config, step, None)
  meta = input_pipeline.load_meta(data_dir)
  if meta.image_size != config.image_size:
    raise input_pipeline.DataConfigError(
      f"the checkpoint in {workdir!r} is for {config.image_size}x{config.image_size} images but {data_dir!r} "
      f"has image_size {meta.image_size}"
    )
  n = config.num_patches if num_patches is None else num_patches
  if meta.num_patches != n:
    source = "--num-patches" if num_patches is not None else f"the checkpoint in {workdir!r}"
    raise input_pipeline.DataConfigError(
      f"{source} uses N={n} patches but {data_dir!r} stores {meta.num_patches} boxes per image"
    )
  return Run(generator, variables, config, step, meta)


@functools.partial(jax.jit, static_argnames=("generator", "batch_stats"))
def generate(variables: dict, patch_sets: jax.Array, z: jax.Array, *, generator: models.Generator, batch_stats: bool):
  """(mask [B, S, S, 1] | None, image [B, S, S, 3]) from patches [B, N, S, S, 3] and z [B, z_dim].

  `batch_stats=True` normalises with the batch's own statistics as the
  official code samples (train=True; the updated statistics are discarded).
  """
  if batch_stats:
    out, _ = generator.apply(variables, patch_sets, z, train=True, mutable=["batch_stats"])
    return out
  return generator.apply(variables, patch_sets, z, train=False)


def generate_fn(generator: models.Generator, *, batch_stats: bool = False) -> Callable:
  """`generate` bound to a generator: `(variables, patches, z) -> (mask, image)`.

  Jitted once per (generator, batch_stats, shapes): modules are hashable, so
  calls from different commands in one process share the compiled function.
  """
  return functools.partial(generate, generator=generator, batch_stats=batch_stats)


def noise(seed: int, index: int, batch: int, z_dim: int) -> np.ndarray:
  """z ~ U(-1, 1) [batch, z_dim] for batch `index` of a run seeded `seed`."""
  key = jax.random.fold_in(jax.random.key(seed), index)
  return np.asarray(jax.random.uniform(key, (batch, z_dim), minval=-1.0, maxval=1.0))


def cli(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
  """Runs `main(argv)`; a user error is printed as `prog: error: message` on stderr and returns 1."""
  try:
    return main(argv)
  except USER_ERRORS as e:
    message = " ".join(str(e).split())
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 1


def quiet_logs() -> None:
  """For console runs: keeps TensorFlow's C++ banner and Orbax's absl warnings off stderr.

  Call before TensorFlow is imported. oneDNN is off for TensorFlow only (it
  just crops and resizes patches on the host here); JAX is unaffected.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  from absl import logging

  logging.set_verbosity(logging.ERROR)
