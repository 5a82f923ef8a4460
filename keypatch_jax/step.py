"""The pure train step and the one place it is made data-parallel (docs/design.md §5).

`train_step` does `d_steps` discriminator updates then `g_steps` generator
updates (paper §4: 1 then 2; `g_first` swaps the order). The generator's
forward pass is computed once with `jax.vjp` and shared by the D updates and
the first G update that follow it (a D update does not change G). The
discriminator sees the real image and every kind of fake in one `nn.vmap`-ed
call with per-kind BatchNorm statistics. Gradients and BatchNorm statistics
are averaged over the device axis with `lax.pmean`; `parallelize` is the one
place that applies `jax.pmap` (or `shard_map`).
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
from jax.sharding import Mesh, PartitionSpec

from keypatch_jax import losses, models
from keypatch_jax.state import NetState, TrainState, discriminator_kinds

AXIS = "batch"  # the device axis name of the data-parallel step


def _pmean(tree, axis_name: str | None):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _norm(tree) -> jax.Array:
  return optax.tree.norm(tree).astype(jnp.float32)


# The `config.loss` fields `train_step` takes as keywords.
LOSS_FIELDS = ("reduction", "adversarial", "lambda_start", "lambda_end", "lambda_scale", "spatial_weight")


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
  step_offset: int = 0,
  num_epochs: int,
  lambda_start: float,
  lambda_end: float,
  lambda_scale: float,
  spatial_weight: float,
  ema_decay: float,
  axis_name: str | None = AXIS,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One KeyPatchGAN iteration on one device's share of the batch.

  Args:
    state: the current state (identical on every device).
    batch: image, other [b, S, S, 3]; patches [b, N, S, S, 3]; boxes [b, N, 4].
    rng: a base key; the step's randomness is fold_in(rng, step, device).
    generator, discriminator, kinds, ...: statics (bound with functools.partial).
    spatial_weight: λ1 = spatial_weight·λ and λ2 = λ in eq. 1 (docs/design.md §4.2).
    axis_name: the device axis to average over (None: single device, no pmean).
    step_offset: the epoch of a step is (step + step_offset) // steps_per_epoch
      (`resume.Segment.step_offset`; 0 unless resumed mid-epoch with another batch size).

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
  z = jax.vmap(lambda k: models.sample_z(k, generator.z_dim))(keys)
  mask_true = losses.mask_from_boxes(batch["boxes"], real.shape[1])
  epoch = (state.step + step_offset) // steps_per_epoch  # the data's epoch, whatever batch size came before
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
      return losses.generator_loss(fake_logits, mask, mask_true, image, real, spatial_weight * lam, lam, reduction)

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


def step_fn(config, steps_per_epoch: int, *, step_offset: int = 0, axis_name: str | None = AXIS) -> Callable:
  """The per-device `train_step` with every static bound from `config`.

  `axis_name` None: one device takes the whole batch (no pmean). `step_offset`:
  see `train_step`.
  """
  per_device = config.batch_size // jax.device_count() if axis_name else config.batch_size
  generator, discriminator = models.build_models(config, axis_name=axis_name, train=True, batch_size=per_device)
  return functools.partial(
    train_step,
    generator=generator,
    discriminator=discriminator,
    kinds=discriminator_kinds(config),
    steps_per_epoch=steps_per_epoch,
    step_offset=step_offset,
    axis_name=axis_name,
    **{k: config[k] for k in ("d_steps", "g_steps", "g_first", "num_epochs", "ema_decay")},
    **{k: config.loss[k] for k in LOSS_FIELDS},
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
