"""What `sample`, `evaluate`, `probe` and the training loop share: restore a
run, check it against a dataset, generate under `jax.jit`, score a batch."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np

from keypatch_jax import checkpoint, dataset_meta, losses, metrics, models


@dataclasses.dataclass(frozen=True)
class Run:
  """A restored generator and the dataset it is used on."""

  generator: models.Generator
  variables: dict  # {"params", "batch_stats"}
  config: object  # the run's ml_collections.ConfigDict
  step: int
  meta: dataset_meta.DatasetMeta | None


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
  meta = dataset_meta.load_meta(data_dir)
  if meta.image_size != config.image_size:
    raise dataset_meta.DataConfigError(
      f"the checkpoint in {workdir!r} is for {config.image_size}x{config.image_size} images but {data_dir!r} "
      f"has image_size {meta.image_size}"
    )
  n = config.num_patches if num_patches is None else num_patches
  if meta.num_patches != n:
    source = "--num-patches" if num_patches is not None else f"the checkpoint in {workdir!r}"
    raise dataset_meta.DataConfigError(
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
  """z ~ U(-1, 1) [batch, z_dim] for batch `index` of a run seeded `seed` (`models.sample_z`)."""
  return np.asarray(models.sample_z(jax.random.fold_in(jax.random.key(seed), index), z_dim, batch))


def evaluate_batch(
  generate: Callable, variables: dict, patch_sets, z, boxes, real
) -> tuple[dict[str, np.ndarray], jax.Array]:
  """Generates one batch and scores it against the real images: the one batch-evaluation path.

  Args:
    generate: `generate_fn(...)`; variables: its {"params", "batch_stats"}.
    patch_sets: [B, N, S, S, 3]; z: [B, z_dim].
    boxes: [B, N, 4] (x, y, w, h) in pixels, whose union is the true mask.
    real: [B, S, S, 3], the images the patches come from.

  Returns:
    (`metrics.generation_metrics` as numpy arrays [B] each, the generated
    images [B, S, S, 3]). Without a mask network the true mask stands in for
    the prediction.
  """
  mask, image = generate(variables, patch_sets, z)
  true = losses.mask_from_boxes(boxes, real.shape[1])
  scores = metrics.generation_metrics(true if mask is None else mask, image, real, true)
  return {name: np.asarray(values) for name, values in scores.items()}, image
