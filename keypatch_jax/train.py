"""Training: the state, the pure per-device train step, the data-parallel wrapper.

The step (SPEC §3) does `d_steps` discriminator updates then `g_steps`
generator updates (paper: 1 then 2; `g_first` swaps the order). The
generator's forward pass is computed once with `jax.vjp` and shared by the D
updates and the first G update that follow it (a D update does not change
G). The discriminator sees the real image and every kind of fake in one
`nn.vmap`-ed call with per-kind BatchNorm statistics. Gradients and BatchNorm
statistics are averaged over the device axis with `lax.pmean`; the wrapper
(`parallelize`) is the one place that applies `jax.pmap` (or `shard_map`).

`train_and_evaluate` (the loop: input, checkpoints, logging, NaN guard,
preemption) is at the end of the module; everything above it is pure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from keypatch_jax import losses, models

AXIS = "batch"  # the device axis name of the data-parallel step


class NetState(train_state.TrainState):
  """One network: params, BatchNorm statistics, its own Adam state."""

  batch_stats: Any = None


@struct.dataclass
class TrainState:
  """Everything a run needs to continue: both networks, the EMA, the step."""

  step: jax.Array
  g: NetState
  d: NetState
  ema_params: Any


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam(lr, b1, b2), one instance per network (SPEC §3)."""
  return optax.adam(config.learning_rate, b1=config.b1, b2=config.b2)


def discriminator_kinds(config) -> tuple[str, ...]:
  """Fake kinds D is trained on; "G" must be among them (the G loss reads its row)."""
  kinds = tuple(config.loss.fakes)
  if "G" not in kinds:
    raise ValueError(f"config.loss.fakes must include 'G', got {kinds}")
  return kinds


def create_train_state(config, rng: jax.Array) -> TrainState:
  """Initialises both networks (unreplicated, on the default device)."""
  generator, discriminator = models.build_models(config)
  s, n = config.image_size, config.num_patches
  g_rng, d_rng = jax.random.split(rng)
  g_vars = generator.init(g_rng, jnp.zeros((1, n, s, s, 3)), jnp.zeros((1, config.model.z_dim)), train=False)
  k = 1 + len(discriminator_kinds(config))
  d_vars = discriminator.init(d_rng, jnp.zeros((k, 1, s, s, 3)), train=False)
  tx = make_optimizer(config)
  g = NetState.create(apply_fn=None, params=g_vars["params"], tx=tx, batch_stats=g_vars["batch_stats"])
  d = NetState.create(
    apply_fn=None, params=d_vars["params"], tx=make_optimizer(config), batch_stats=d_vars["batch_stats"]
  )
  return TrainState(step=jnp.zeros((), jnp.int32), g=g, d=d, ema_params=jax.tree.map(jnp.copy, g_vars["params"]))


def _pmean(tree, axis_name: str | None):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _norm(tree) -> jax.Array:
  return optax.global_norm(tree).astype(jnp.float32)


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  generator: models.Generator,
  discriminator: models.KindsDiscriminator,
  kinds: Sequence[str],
  reduction: str,
  d_steps: int,
  g_steps: int,
  g_first: bool,
  adversarial: bool,
  steps_per_epoch: int,
  num_epochs: int,
  lambda_start: float,
  lambda_end: float,
  lambda_scale: float,
  ema_decay: float,
  axis_name: str | None = AXIS,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One KeyPatchGAN iteration on one device's share of the batch.

  Args:
    state: the current state (identical on every device).
    batch: image, other [b, S, S, 3]; patches [b, N, S, S, 3]; boxes [b, N, 4].
    rng: a base key; the step's randomness is fold_in(rng, step, device).
    generator, discriminator, kinds, ...: statics (bound with functools.partial).
    axis_name: the device axis to average over (None: single device, no pmean).

  Returns:
    (new state, metrics). If any loss is not finite the state is returned
    unchanged and metrics["nonfinite"] is 1 (the loop stops on it).
  """
  rng = jax.random.fold_in(rng, state.step)
  real, other, patches = batch["image"], batch["other"], batch["patches"]
  b = real.shape[0]
  # One z per example, keyed by its index in the global batch: the same draws
  # whatever the number of devices (and the same z for the D and G passes).
  first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(first + jnp.arange(b))
  z = jax.vmap(lambda k: jax.random.uniform(k, (generator.z_dim,), minval=-1.0, maxval=1.0))(keys)
  mask_true = losses.mask_from_boxes(batch["boxes"], real.shape[1])
  epoch = state.step // steps_per_epoch
  lam = losses.lambda_schedule(epoch, num_epochs, lambda_start, lambda_end, lambda_scale)
  g_row = 1 + list(kinds).index("G")
  metrics: dict[str, jax.Array] = {"lambda": lam, "epoch": epoch.astype(jnp.float32)}

  def g_forward(g: NetState):
    """G's train-mode forward pass, with its VJP and updated BatchNorm statistics."""

    def fwd(params):
      (mask, image), upd = generator.apply(
        {"params": params, "batch_stats": g.batch_stats}, patches, z, train=True, mutable=["batch_stats"]
      )
      mask = mask_true if mask is None else mask  # "no mask network" ablation
      return (mask, image), upd["batch_stats"]

    outs, vjp, stats = jax.vjp(fwd, g.params, has_aux=True)
    return outs, vjp, _pmean(stats, axis_name)

  def d_update(d: NetState, image: jax.Array) -> tuple[NetState, dict]:
    def loss_fn(params):
      inputs = losses.discriminator_inputs(real, image, other, mask_true, kinds)
      logits, upd = discriminator.apply(
        {"params": params, "batch_stats": d.batch_stats}, inputs, train=True, mutable=["batch_stats"]
      )
      loss, terms = losses.discriminator_loss(logits, kinds)
      return loss, (terms, upd["batch_stats"])

    (loss, (terms, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d.params)
    grads = _pmean(grads, axis_name)
    d = d.apply_gradients(grads=grads, batch_stats=_pmean(stats, axis_name))
    return d, {"d_loss": loss, **terms, "d_grad_norm": _norm(grads)}

  def g_update(g: NetState, d: NetState, outs, vjp, stats) -> tuple[NetState, dict]:
    mask, image = outs

    def loss_fn(mask, image):
      fake_logits = None
      if adversarial:
        row = jax.tree.map(lambda x: x[g_row : g_row + 1], d.batch_stats)
        fake_logits, _ = discriminator.apply(
          {"params": d.params, "batch_stats": row}, image[None], train=True, mutable=["batch_stats"]
        )
        fake_logits = fake_logits[0]
      return losses.generator_loss(fake_logits, mask, mask_true, image, real, lam, lam, reduction)

    (loss, terms), cotangents = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(mask, image)
    (grads,) = vjp(cotangents)
    grads = _pmean(grads, axis_name)
    g = g.apply_gradients(grads=grads, batch_stats=stats)
    return g, {"g_loss": loss, **terms, "g_grad_norm": _norm(grads)}

  order = ["d"] * (d_steps if adversarial else 0) + ["g"] * g_steps
  if g_first:
    order = order[::-1]
  g, d, cached = state.g, state.d, None
  for kind in order:
    if cached is None:
      cached = g_forward(g)
    if kind == "d":
      d, m = d_update(d, cached[0][1])
    else:
      g, m = g_update(g, d, *cached)
      cached = None  # G changed: the next user needs a fresh forward pass
    metrics.update(m)

  decay = ema_decay
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, g.params)
  new_state = state.replace(step=state.step + 1, g=g, d=d, ema_params=ema)
  metrics = _pmean(metrics, axis_name)
  metrics["g_param_norm"] = _norm(g.params)
  metrics["d_param_norm"] = _norm(d.params)
  loss_keys = [k for k in metrics if k.startswith(("d_", "g_")) and "norm" not in k]
  finite = jnp.all(jnp.stack([jnp.isfinite(metrics[k]) for k in loss_keys]))
  metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  return new_state, metrics


def step_fn(config, steps_per_epoch: int, *, axis_name: str | None = AXIS) -> Callable:
  """The per-device `train_step` with every static bound from `config`."""
  generator, discriminator = models.build_models(config, axis_name=axis_name)
  loss = config.loss
  return functools.partial(
    train_step,
    generator=generator,
    discriminator=discriminator,
    kinds=discriminator_kinds(config),
    reduction=loss.reduction,
    d_steps=config.d_steps,
    g_steps=config.g_steps,
    g_first=config.g_first,
    adversarial=loss.adversarial,
    steps_per_epoch=steps_per_epoch,
    num_epochs=config.num_epochs,
    lambda_start=loss.lambda_start,
    lambda_end=loss.lambda_end,
    lambda_scale=loss.lambda_scale,
    ema_decay=config.ema_decay,
    axis_name=axis_name,
  )


def parallelize(fn: Callable, parallel: str = "pmap", devices: Sequence[Any] | None = None) -> Callable:
  """The one place the per-device step is made data-parallel.

  Both forms take and return trees whose leaves have a leading local-device
  axis (state replicated with `flax.jax_utils.replicate`, batches from
  `input_pipeline.shard_batch`) and donate the state.

  Args:
    fn: (state, batch, rng) -> (state, metrics), using `lax.pmean(.., AXIS)`.
    parallel: "pmap", or "shard_map" (the same function over a 1-D device Mesh).
    devices: the devices to run on (default: all devices of all processes).
  """
  if parallel == "pmap":
    # devices=None spans every process's devices: the pmean is global on multi-host.
    return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,), devices=devices)
  if parallel != "shard_map":
    raise ValueError(f"config.parallel must be 'pmap' or 'shard_map', got {parallel!r}")
  if jax.process_count() > 1:
    raise ValueError("config.parallel='shard_map' runs on one process; use 'pmap' on multi-host")
  devices = list(jax.local_devices() if devices is None else devices)
  from jax.sharding import Mesh, PartitionSpec

  mesh = Mesh(np.array(devices), (AXIS,))
  spec = PartitionSpec(AXIS)

  def per_device(state, batch, rng):
    squeeze = functools.partial(jax.tree.map, lambda x: x[0])
    new_state, metrics = fn(squeeze(state), squeeze(batch), rng)
    return jax.tree.map(lambda x: x[None], (new_state, metrics))

  # check_vma=False: the BatchNorm pmean also names the nn.vmap patch axis, which the
  # varying-axes checker does not track.
  mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec, PartitionSpec()), out_specs=spec, check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,))


def replicate(state: TrainState) -> TrainState:
  """Copies the state onto every local device (leading device axis).

  The sharding's axis name is the step's, so the first call of the step sees
  the same input sharding as every later one (one compile per run).
  """
  return flax.jax_utils.replicate(state, axis_name=AXIS)


def unreplicate(state: TrainState) -> TrainState:
  """The first device's copy of a replicated state."""

  def first(x):
    shard = x.addressable_data(0) if isinstance(x, jax.Array) else x
    return shard[0] if shard.ndim == x.ndim else shard  # a 1-device "shard" keeps its axis

  return jax.tree.map(first, state)


# --------------------------------------------------------------------------
# The loop.


class ConfigError(ValueError):
  """A config value that cannot work (one-line message naming the field)."""


class NonFiniteLossError(FloatingPointError):
  """A loss became NaN/inf; the last good checkpoint is left intact."""


def validate_config(config) -> None:
  """Checks the fields a run depends on, with one-line messages naming them."""
  checks = [
    (config.batch_size > 0, "batch_size must be > 0"),
    (config.num_patches >= 1, "num_patches must be >= 1"),
    (config.g_steps >= 1 and config.d_steps >= 0, "need g_steps >= 1 and d_steps >= 0"),
    (config.num_epochs >= 1 or config.num_train_steps > 0, "num_epochs must be >= 1 (or set num_train_steps > 0)"),
    (config.loss.reduction in losses.REDUCTIONS, f"loss.reduction must be one of {losses.REDUCTIONS}"),
    (
      set(config.loss.fakes) <= set(losses.ALL_FAKES) and "G" in config.loss.fakes,
      f"loss.fakes must include 'G' and be a subset of {losses.ALL_FAKES}",
    ),
    (config.flip in ("per_example", "per_batch", "none"), "flip must be per_example, per_batch or none"),
    (config.parallel in ("pmap", "shard_map"), "parallel must be pmap or shard_map"),
    (0.0 <= config.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
    (
      config.log_every_steps > 0 and config.checkpoint_every_steps > 0,
      "log_every_steps and checkpoint_every_steps must be > 0",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(f"bad config: {message}")
  try:
    models.num_levels(config.image_size)
    models.check_forms(config.model.upsample, config.model.downsample)
  except ValueError as e:
    raise ConfigError(f"bad config: {e}") from None


def num_train_steps(config, steps_per_epoch: int) -> int:
  """`num_train_steps` when > 0, else `num_epochs * steps_per_epoch`."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * steps_per_epoch)


class CompileCounter:
  """Counts traces and XLA compilations while `active` (jax.monitoring events).

  A persistent compilation cache can turn a compile into a cache hit, so the
  trace count is the robust "compiled once" signal.
  """

  _TRACE = "/jax/core/compile/jaxpr_trace_duration"
  _COMPILE = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.traces = 0
    self.compiles = 0
    self.seconds = 0.0
    self.active = False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **_) -> None:
    if not self.active:
      return
    if event == self._TRACE:
      self.traces += 1
    elif event == self._COMPILE:
      self.compiles += 1
      self.seconds += duration


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains from `config.data_dir` into `workdir`, resuming from its latest checkpoint.

  Returns:
    a summary: final step, steps/s, images/s, compiles, final test mask IoU.
  """
  import signal
  import time

  from absl import logging
  from clu import metric_writers, periodic_actions

  from keypatch_jax import checkpoint, inference, input_pipeline, metrics, visualize

  validate_config(config)
  meta = input_pipeline.load_meta(config.data_dir, config.image_size, config.num_patches)
  input_pipeline.host_batch_size(config.batch_size)
  spe = input_pipeline.steps_per_epoch(meta, config.batch_size)
  total = num_train_steps(config, spe)
  if jax.process_index() == 0:
    checkpoint.write_config(workdir, config)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)

  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state = jax.jit(functools.partial(create_train_state, config))(init_rng)
  mngr = checkpoint.manager(workdir, max_to_keep=config.max_to_keep, save_every=config.checkpoint_every_steps)
  if mngr.latest_step() is not None:  # resume: state, then the data position, then go on
    state, _ = checkpoint.restore(mngr, state)
    logging.info("Resumed from step %d in %s", int(state.step), workdir)
  start = int(state.step)
  batches = flax.jax_utils.prefetch_to_device(
    input_pipeline.train_iterator(meta, config, start), config.prefetch, axis_name=AXIS
  )
  p_step = parallelize(step_fn(config, spe), config.parallel)
  generator, _ = models.build_models(config)
  generate = inference.generate_fn(generator)  # eval mode, running BatchNorm averages

  preempted = []
  previous = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer, every_steps=config.log_every_steps)
  counter = CompileCounter()
  pstate, pending, last_saved, t0 = replicate(state), [], None, None
  grid_batch = None
  log_from = [start, 0.0]  # (step, time) of the previous log line, for images/s

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

  def meta_for(step):
    epoch, offset = divmod(step, spe)
    return {
      "step": step,
      "epoch": epoch,
      "batches_into_epoch": offset,
      "steps_per_epoch": spe,
      "image_size": config.image_size,
      "num_patches": config.num_patches,
      "data_dir": config.data_dir,
    }

  try:
    step = start
    for step in range(start + 1, total + 1):
      batch = next(batches)
      counter.active = True
      pstate, step_metrics = p_step(pstate, batch, step_rng)
      counter.active = False
      pending.append(step_metrics)
      if t0 is None:
        jax.block_until_ready(step_metrics)
        t0, t0_step = time.perf_counter(), step
        log_from[:] = [step, t0]  # rates exclude the compile
        grid_batch = jax.tree.map(lambda x: np.asarray(x[0][:8]), batch)
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
      if step % config.image_every_steps == 0 or (last and not stop):
        state_now = unreplicate(pstate)
        grid = _grid(generate, state_now, grid_batch, config, visualize)
        writer.write_images(step, {"samples": grid[None]})
      if step % config.checkpoint_every_steps == 0 or last:
        check(pending, step)
        pending = []
        checkpoint.save(mngr, unreplicate(pstate), meta_for(step), force=last)
        last_saved = step
      if stop:
        logging.warning("SIGTERM: saved step %d, exiting", step)
        break
  finally:
    signal.signal(signal.SIGTERM, previous)
    mngr.wait_until_finished()
    writer.flush()

  elapsed = time.perf_counter() - t0 if t0 is not None else 0.0
  timed = step - t0_step if t0 is not None else 0
  final = unreplicate(pstate)
  if preempted:  # leave within the preemption grace period
    iou = {"mask_iou": float("nan"), "mask_iou_all_ones": float("nan")}
  else:
    iou = evaluate_mask_iou(generate, final, meta, config, metrics, input_pipeline)
  summary = {
    "step": step,
    "last_saved": last_saved,
    "preempted": bool(preempted),
    "steps_per_s": timed / elapsed if elapsed > 0 else float("nan"),
    "images_per_s": timed * config.batch_size / elapsed if elapsed > 0 else float("nan"),
    "traces": counter.traces,
    "compiles": counter.compiles,
    "compile_s": counter.seconds,
    **iou,
  }
  writer.write_scalars(step, {f"final/{k}": v for k, v in iou.items()})
  writer.flush()
  logging.info("Done: %s", summary)
  print(
    f"final test mask IoU {iou['mask_iou']:.3f} (all-ones mask: {iou['mask_iou_all_ones']:.3f})"
    f", {summary['steps_per_s']:.2f} steps/s, {summary['images_per_s']:.1f} images/s",
    flush=True,
  )
  return summary


def _grid(generate, state: TrainState, batch, config, visualize) -> np.ndarray:
  """patches | mask | generated | real for a few fixed training examples."""
  variables = {"params": state.ema_params, "batch_stats": state.g.batch_stats}
  z = jax.random.uniform(jax.random.key(0), (batch["image"].shape[0], config.model.z_dim), minval=-1.0, maxval=1.0)
  mask, image = generate(variables, batch["patches"], z)
  return visualize.make_grid(
    batch["patches"], None if mask is None else np.asarray(mask), np.asarray(image), batch["image"]
  )


def evaluate_mask_iou(generate, state: TrainState, meta, config, metrics, input_pipeline) -> dict[str, float]:
  """Mean predicted-mask IoU on (up to `eval_batches` of) the test split."""
  variables = {"params": state.ema_params, "batch_stats": state.g.batch_stats}
  ious, ones = [], []
  for i, batch in enumerate(input_pipeline.eval_batches(meta, "test", config.batch_size)):
    if i >= config.eval_batches:
      break
    z = jax.random.uniform(jax.random.key(i), (batch["image"].shape[0], config.model.z_dim), minval=-1.0, maxval=1.0)
    mask, _ = generate(variables, batch["patches"], z)
    true = losses.mask_from_boxes(batch["boxes"], config.image_size)
    if mask is None:
      mask = true
    ious.append(np.asarray(metrics.mask_iou(mask, true)))
    ones.append(np.asarray(metrics.mask_iou(jnp.ones_like(true), true)))
  if not ious:
    return {"mask_iou": float("nan"), "mask_iou_all_ones": float("nan")}
  return {"mask_iou": float(np.concatenate(ious).mean()), "mask_iou_all_ones": float(np.concatenate(ones).mean())}
