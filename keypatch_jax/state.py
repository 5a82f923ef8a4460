"""The training state: both networks, their optimizers, the EMA and the step (docs/design.md §5.1).

`TrainState` is what a run needs to continue and what a checkpoint holds
(`checkpoint.py` splits it into Orbax items). It is built unreplicated, on the
default device, by `create_train_state`; `step.replicate` copies it onto the
devices.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from keypatch_jax import models


class NetState(train_state.TrainState):
  """One network: params, BatchNorm statistics, its own Adam state and update count."""

  batch_stats: Any = None


@struct.dataclass
class TrainState:
  """Everything a run needs to continue: both networks, the generator's EMA, the step."""

  step: jax.Array  # int32 scalar: train steps done
  g: NetState
  d: NetState
  ema_params: Any  # EMA of g.params (decay config.ema_decay), used for sampling


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam(config.learning_rate, b1, b2): one instance per network (paper §4; docs/design.md §4.4)."""
  return optax.adam(config.learning_rate, b1=config.b1, b2=config.b2)


def discriminator_kinds(config) -> tuple[str, ...]:
  """The fake kinds D is trained on (`config.loss.fakes`); "G" must be among them (the G loss reads its row).

  Raises:
    ValueError: "G" is missing (`validation.validate_config` reports it first as a ConfigError).
  """
  kinds = tuple(config.loss.fakes)
  if "G" not in kinds:
    raise ValueError(f"config.loss.fakes must include 'G', got {kinds}")
  return kinds


def create_train_state(config, rng: jax.Array) -> TrainState:
  """Initialises both networks and their optimizers (unreplicated, on the default device).

  D's variables hold one set of BatchNorm statistics per image kind (real +
  each fake of `config.loss.fakes`): `batch_stats` leaves are [K, C].
  """
  generator, discriminator = models.build_models(config)
  s, n = config.image_size, config.num_patches
  g_rng, d_rng = jax.random.split(rng)
  g_vars = generator.init(g_rng, jnp.zeros((1, n, s, s, 3)), jnp.zeros((1, config.model.z_dim)), train=False)
  k = 1 + len(discriminator_kinds(config))
  d_vars = discriminator.init(d_rng, jnp.zeros((k, 1, s, s, 3)), train=False)

  def net(variables) -> NetState:
    return NetState.create(
      apply_fn=None, params=variables["params"], tx=make_optimizer(config), batch_stats=variables["batch_stats"]
    )

  return TrainState(
    step=jnp.zeros((), jnp.int32), g=net(g_vars), d=net(d_vars), ema_params=jax.tree.map(jnp.copy, g_vars["params"])
  )
