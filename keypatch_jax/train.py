"""The training loop: input, checkpoints, logging, NaN guard, preemption (docs/design.md §5.3).

`train_and_evaluate(config, workdir)` validates the config and the dataset,
builds or resumes the state (resume order in docs/design.md §7.2), runs the
data-parallel step of `step.py` and reports the test-split mask IoU through
`inference.evaluate_batch`, the batch-evaluation path `evaluate.py` uses.
"""

from __future__ import annotations

import contextlib
import functools
import logging as logging_lib
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from keypatch_jax import (
  background,
  baselines,
  checkpoint,
  dataset_meta,
  errors,
  inference,
  input_pipeline,
  losses,
  metrics,
  models,
  periodic_eval,
  progress,
  resume,
  save_failures,
  visualize,
  workdir_lock,
)
from keypatch_jax.compiles import CompileCounter
from keypatch_jax.state import TrainState, create_train_state
from keypatch_jax.step import AXIS, parallelize, replicate, step_fn, unreplicate
from keypatch_jax.validation import num_train_steps, validate_config

GRID_EXAMPLES = 8  # training examples shown in the TensorBoard image grid


class NonFiniteLossError(errors.UserError):
  """A loss became NaN/inf; the run stopped and the last good checkpoint is left intact."""


class OutOfMemoryError(errors.UserError):
  """The step did not fit in the accelerator's memory (one line naming the batch size)."""


def out_of_memory_error(error: Exception, config, step: int) -> OutOfMemoryError | None:
  """The one-line error for XLA's RESOURCE_EXHAUSTED while compiling or running `step`, else None."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text:
    return None
  xla = text.split("RESOURCE_EXHAUSTED", 1)[1].lstrip(": ").splitlines()[0][:160]
  devices, batch = jax.device_count(), config.batch_size
  return OutOfMemoryError(
    f"out of {jax.default_backend()} memory at step {step}: --config.batch_size={batch} is {batch // devices} "
    f"images per device on {devices} device(s) (XLA: {xla}); lower --config.batch_size (e.g. "
    f"{max(devices, batch // 2 // devices * devices)}), try --config.model.dtype=bfloat16, or use more devices"
  )


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains from `config.data_dir` into `workdir`, resuming from its latest checkpoint.

  Returns:
    a summary: final step, steps/s and images/s (training time only), traces and compiles, the
    evaluations' seconds and share of the run's wall time, final test mask IoU.

  Raises:
    validation.ConfigError, dataset_meta.DataConfigError, features.DatasetFormatError,
    checkpoint.CheckpointError, inception.WeightsError: bad input, before training starts (one line).
    NonFiniteLossError: a loss became NaN/inf (names the step and the last good checkpoint).
  """
  validate_config(config)
  meta = dataset_meta.load_meta(config.data_dir, config.image_size, config.num_patches)
  dataset_meta.check_shards(meta, ("train", "test"))
  input_pipeline.host_batch_size(config.batch_size)
  quiet = save_failures.WriteErrorLogFilter() if logging.get_verbosity() < 0 else None  # save errors: one line
  checkpoint.ignore_closed_loop_callbacks()
  filtered = [logging.get_absl_logger(), *logging_lib.getLogger().handlers] if quiet is not None else []
  if quiet is not None:  # asyncio reports a failed write's orphaned task when it is collected, maybe after return
    save_failures.quiet_orphaned_write_tasks()
  with workdir_lock.hold(workdir):  # one run per workdir, taken before anything is read or written there
    for f in filtered:
      f.addFilter(quiet)
    try:
      return _train(config, workdir, meta)
    finally:
      for f in filtered:
        f.removeFilter(quiet)


def _train(config, workdir: str, meta: dataset_meta.DatasetMeta) -> dict[str, Any]:
  """`train_and_evaluate` once the config and data are checked and the workdir is locked."""
  spe = dataset_meta.steps_per_epoch(meta, config.batch_size)
  # A rerun: pick the step to resume from and check the config against it, before writing anything.
  resume_step, incomplete = checkpoint.newest_complete_step(os.path.join(workdir, checkpoint.CHECKPOINT_DIR))
  if resume_step is None and incomplete:
    raise checkpoint.CheckpointError(
      f"no complete checkpoint in {workdir!r} ({checkpoint.describe_skipped(incomplete)}); "
      "move its checkpoints/ away to start afresh, or use a new --workdir"
    )
  old_config = None
  if resume_step is not None and checkpoint.has_config(workdir):
    old_config = checkpoint.read_config(workdir)
    resume.check_config_change(old_config, config, workdir)
    changes = resume.describe_changes(old_config, config)
    if changes:
      logging.warning("resuming %s from step %d with its config %s", workdir, resume_step, changes)
  segment = resume.Segment.start(0, 0, 0, meta.num_train, config.batch_size)
  generator, _ = models.build_models(config, train=False)
  generate = inference.generate_fn(generator)  # eval mode, running BatchNorm averages
  # Reads config.inception_weights: a bad path fails here, before anything is written.
  evaluator = periodic_eval.PeriodicEvaluator(config, meta, generate, log=logging.info)

  def position(step: int) -> dict[str, Any]:
    """The checkpoint's `meta` item: the data position of `step` and what it depends on."""
    epoch, examples = segment.position(step)
    return {
      "step": step,
      "epoch": epoch,
      "examples_into_epoch": examples,
      "batches_into_epoch": examples // config.batch_size,
      "batch_size": config.batch_size,
      "steps_per_epoch": spe,
      "image_size": config.image_size,
      "num_patches": config.num_patches,
      "data_dir": config.data_dir,
    }

  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state = jax.jit(functools.partial(create_train_state, config))(init_rng)
  damaged = {}
  if resume_step is not None:  # resume: check, restore the state, then the data position from its meta

    def read(reader, step):
      saved = checkpoint.read_meta(reader, step)
      checkpoint.check_resumable(saved, {**position(0), "step": step}, workdir)
      return checkpoint.restore(reader, state, step)  # checks the digests

    # A damaged step (or, under another reader, one deleted meanwhile) is named and passed over.
    (state, saved), resume_step, damaged = checkpoint.read_newest(
      workdir, read, None, checkpoint.ITEMS, warn_incomplete=False
    )
    ckpts = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
    newer = [s for s in checkpoint.saved_steps(ckpts) if s > resume_step and s not in damaged]
    incomplete = {s: checkpoint.missing_items(ckpts, s) for s in newer}  # all the newer steps left are
    old_batch = config.batch_size if old_config is None else int(old_config.batch_size)
    epoch, examples = resume.checkpoint_position(saved, old_batch)
    segment = resume.Segment.start(int(state.step), epoch, examples, meta.num_train, config.batch_size)
    logging.info("Resumed from step %d in %s", int(state.step), workdir)
    if old_batch != config.batch_size:
      logging.warning(  # a warning: shown at the default verbosity
        "batch_size %d -> %d: continuing epoch %d at example %d of %d (the λ schedule follows the epoch)",
        old_batch,
        config.batch_size,
        segment.epoch,
        segment.examples,
        meta.num_train,
      )
  if jax.process_index() == 0:
    checkpoint.write_config(workdir, config)
    if incomplete:
      moved = checkpoint.set_aside(workdir, sorted(incomplete))
      logging.warning(
        "Resuming from step %d: %s (moved to %s)", resume_step, checkpoint.describe_skipped(incomplete), moved
      )
    if damaged:  # out of the way of new saves, kept for inspection
      moved = checkpoint.set_aside(workdir, sorted(damaged), checkpoint.DAMAGED_DIR)
      logging.warning("Resuming from step %d: moved damaged step(s) %s to %s", resume_step, sorted(damaged), moved)
  mngr = checkpoint.manager(workdir, max_to_keep=config.max_to_keep, save_every=config.checkpoint_every_steps)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  total = num_train_steps(config, segment)
  start = int(state.step)
  console = progress.Progress(total, start, enabled=jax.process_index() == 0)
  console.begin(f"training {workdir} on {jax.device_count()} {jax.default_backend()} device(s)")
  preempted = []
  # Read on a thread: waiting for input never blocks the main thread, so SIGTERM is honoured there too.
  inputs = background.BackgroundIterator(
    input_pipeline.train_iterator(meta, config, position=(segment.epoch, segment.examples)),
    config.prefetch,
    should_stop=lambda: bool(preempted),
  )
  batches = flax.jax_utils.prefetch_to_device(inputs, config.prefetch, axis_name=AXIS)
  p_step = parallelize(step_fn(config, spe, step_offset=segment.step_offset), config.parallel)

  previous = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer, every_steps=config.log_every_steps)
  counter = CompileCounter()
  pstate, pending, last_saved, t0 = replicate(state), [], None, None
  grid_batch = None
  log_from = [start, 0.0]  # (step, time) of the previous log line, for images/s
  run_start = time.perf_counter()

  def save(step: int, force: bool) -> int:
    """Saves `step` once the previous save has finished (Orbax waits for it anyway); a write error stops the run."""
    save_failures.check_saves(mngr, workdir, last_saved, wait=True)
    with save_failures.stop_on_write_error(workdir, step):
      checkpoint.save(mngr, unreplicate(pstate), position(step), force=force)
    return step

  def check(pending_metrics, step):
    """Fetches pending step metrics; raises on a non-finite loss."""
    if not pending_metrics:
      return {}
    fetched = jax.device_get(pending_metrics)
    for i, m in enumerate(fetched):
      if float(m["nonfinite"][0]) > 0:
        bad = {k: float(v[0]) for k, v in m.items() if not np.isfinite(float(v[0]))}
        kept = mngr.latest_step()
        kept = "none saved yet" if kept is None else f"step {kept} in {workdir}"
        raise NonFiniteLossError(
          f"non-finite loss at step {step - len(fetched) + i + 1} ({bad}); stopped. Last good "
          f"checkpoint: {kept} (lower the learning rate or check the data)"
        )
    return {k: float(np.mean([m[k][0] for m in fetched])) for k in fetched[-1]}

  try:
    step = start
    for step in range(start + 1, total + 1):
      try:
        batch = next(batches)
      except background.Interrupted:  # SIGTERM while waiting for input
        step -= 1
        if step > (start if last_saved is None else last_saved):
          check(pending, step)
          pending = []
          last_saved = save(step, force=True)
        logging.warning("SIGTERM while waiting for input: saved step %d, exiting", step)
        break
      save_failures.check_saves(mngr, workdir, last_saved)  # a failed async save stops the run here
      counter.active = True
      pstate, step_metrics = p_step(pstate, batch, step_rng)
      counter.active = False
      pending.append(step_metrics)
      if t0 is None:
        jax.block_until_ready(step_metrics)
        t0, t0_step = time.perf_counter(), step
        log_from[:] = [step, t0]  # rates exclude the compile
        console.first_step_done(step, t0 - run_start)
        grid_batch = jax.tree.map(lambda x: np.asarray(x[0][:GRID_EXAMPLES]), batch)
      report(step)
      stop = bool(preempted)  # read once: the signal may arrive at any point of this iteration
      last = step == total or stop
      if step % config.log_every_steps == 0 or last:
        scalars = check(pending, step)
        now = time.perf_counter()
        if t0 is not None and step > log_from[0]:
          scalars["images_per_s"] = (step - log_from[0]) * config.batch_size / (now - log_from[1])
        log_from[:] = [step, now]
        pending = []
        writer.write_scalars(step, scalars)
        console.report(step, scalars)
      if step % config.image_every_steps == 0 or (last and not stop):
        grid = _grid(generate, unreplicate(pstate), grid_batch, config.model.z_dim)
        writer.write_images(step, {"samples": grid[None]})
      if step % config.checkpoint_every_steps == 0 or last:
        check(pending, step)
        pending = []
        last_saved = save(step, force=last)
      if not stop and evaluator.due(step, time.perf_counter() - run_start):
        before = evaluator.seconds
        variables = _sampling_variables(unreplicate(pstate))
        scores = evaluator(variables, time.perf_counter() - run_start, should_stop=lambda: bool(preempted))
        if scores is not None:
          writer.write_scalars(step, {f"eval/{k}": v for k, v in scores.items()})
          console.scores(step, "eval", scores)
          warning = periodic_eval.empty_mask_warning(step, scores["mask_iou"], config)
          if warning:
            logging.warning(warning)
        log_from[1] += evaluator.seconds - before  # images/s counts training time only
      if stop:
        logging.warning("SIGTERM: saved step %d, exiting", step)
        break
  except jax.errors.JaxRuntimeError as e:
    oom = out_of_memory_error(e, config, step)
    if oom is None:
      raise
    raise oom from None
  except BaseException:
    with contextlib.suppress(Exception):  # the error in flight is the one to report
      mngr.wait_until_finished()
    raise
  finally:
    signal.signal(signal.SIGTERM, previous)
    inputs.close()
    writer.flush()
  save_failures.check_saves(mngr, workdir, last_saved, wait=True)

  wall = time.perf_counter() - run_start
  elapsed = time.perf_counter() - t0 - evaluator.seconds if t0 is not None else 0.0  # training only
  timed = step - t0_step if t0 is not None else 0
  if preempted:  # leave within the preemption grace period
    iou = {"mask_iou": float("nan"), "mask_iou_blind": float("nan")}
  else:
    iou = mask_iou_of_test_split(generate, unreplicate(pstate), meta, config)
  summary = {
    "step": step,
    "last_saved": last_saved,
    "preempted": bool(preempted),
    "steps_per_s": timed / elapsed if elapsed > 0 else float("nan"),
    "images_per_s": timed * config.batch_size / elapsed if elapsed > 0 else float("nan"),
    "traces": counter.traces,
    "compiles": counter.compiles,
    "compile_s": counter.seconds,
    "eval_s": evaluator.seconds,
    "eval_share": evaluator.seconds / wall if wall > 0 else 0.0,
    **iou,
  }
  writer.write_scalars(step, {f"final/{k}": v for k, v in iou.items()})
  writer.flush()
  logging.info("Done: %s", summary)
  if jax.process_index() == 0 and not preempted:
    speed = f", {summary['steps_per_s']:.2f} steps/s, {summary['images_per_s']:.1f} images/s" if timed else ""
    evals = (
      f"; evaluations {summary['eval_s']:.1f} s = {summary['eval_share']:.1%} of the run" if evaluator.seconds else ""
    )
    if meta.num_test == 0:  # not a silent NaN: say why there is no score
      score = (
        f"no test mask IoU: the test split of {config.data_dir} is empty (--test-count 0, or every image held out "
        "for it was rejected: preprocess again with a larger --test-count)"
      )
    else:
      score = (
        f"test mask IoU {iou['mask_iou']:.3f} (patch-blind baseline, the train split's mean mask: "
        f"{iou['mask_iou_blind']:.3f})"
      )
    print(f"step {step}: {score}{speed}{evals}", flush=True)
    warning = periodic_eval.empty_mask_warning(step, iou["mask_iou"], config)
    if warning:
      logging.warning(warning)
  return summary


def _sampling_variables(state: TrainState) -> dict[str, Any]:
  """The generator's variables for sampling: EMA parameters, running BatchNorm averages."""
  return {"params": state.ema_params, "batch_stats": state.g.batch_stats}


def _grid(generate, state: TrainState, batch: dict[str, np.ndarray], z_dim: int) -> np.ndarray:
  """patches | mask | generated | real for a few fixed training examples."""
  z = models.sample_z(jax.random.key(0), z_dim, batch["image"].shape[0])
  mask, image = generate(_sampling_variables(state), batch["patches"], z)
  return visualize.make_grid(
    batch["patches"], None if mask is None else np.asarray(mask), np.asarray(image), batch["image"]
  )


def mask_iou_of_test_split(generate, state: TrainState, meta: dataset_meta.DatasetMeta, config) -> dict[str, float]:
  """Mean predicted-mask IoU on (up to `config.eval_batches` batches of) the test split.

  Returns:
    {"mask_iou", "mask_iou_blind"}: the generator's, and that of the
    patch-blind baseline a model must beat, the train split's mean box-union
    mask (`baselines.py`); NaN on an empty split.
  """
  nan = {"mask_iou": float("nan"), "mask_iou_blind": float("nan")}
  if meta.num_test == 0 or meta.num_train == 0:  # preprocessed with --test-count 0: nothing to evaluate on
    return nan
  variables = _sampling_variables(state)
  blind = baselines.train_means(meta).mask[None]
  ious, blind_ious = [], []
  limit = config.eval_batches * config.batch_size
  for i, batch in enumerate(input_pipeline.eval_batches(meta, "test", config.batch_size, limit=limit)):
    z = models.sample_z(jax.random.key(i), config.model.z_dim, batch["image"].shape[0])
    scores, _ = inference.evaluate_batch(generate, variables, batch["patches"], z, batch["boxes"], batch["image"])
    true = losses.mask_from_boxes(batch["boxes"], config.image_size)
    ious.append(scores["mask_iou"])
    blind_ious.append(np.asarray(metrics.mask_iou(jnp.broadcast_to(blind, true.shape), true)))
  if not ious:
    return nan
  return {"mask_iou": float(np.concatenate(ious).mean()), "mask_iou_blind": float(np.concatenate(blind_ious).mean())}
