"""The train step without data or TensorFlow: every config's and every ablation's step traces.

Also run on an accelerator by benchmarks/accelerator.py (no TensorFlow, clu or dataset there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import tiny_config

from configs import default, paper, small
from keypatch_jax.state import create_train_state
from keypatch_jax.step import step_fn
from keypatch_jax.validation import validate_config

CONFIGS = {
  "default": default.get_config,
  **{f"paper:{name}": lambda name=name: paper.get_config(name) for name in paper.DATASETS},
  **{f"small:{name}": lambda name=name: small.get_config(name) for name in small.CONFIGS},
}


@pytest.mark.parametrize(
  "name", [n if n == "small:tiny" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(CONFIGS)]
)
def test_every_config_builds_and_its_step_traces(name):
  """Each config's model and step trace (shapes only) at its own S on a tiny batch."""
  config = CONFIGS[name]()
  validate_config(config)
  state = jax.eval_shape(lambda r: create_train_state(config, r), jax.random.key(0))
  s, n, b = config.image_size, config.num_patches, 2
  batch = {
    "image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
    "other": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
    "patches": jax.ShapeDtypeStruct((b, n, s, s, 3), jnp.float32),
    "boxes": jax.ShapeDtypeStruct((b, n, 4), jnp.float32),
  }
  new_state, metrics = jax.eval_shape(step_fn(config, 10, axis_name=None), state, batch, jax.random.key(1))
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert "g_loss" in metrics and "nonfinite" in metrics


ABLATIONS = {
  "naive_gan": {"loss.fakes": ("G",)},
  "official_fakes": {"loss.fakes": ("G", "SR", "RS")},
  "no_mask_net": {"model.use_mask_net": False},
  "autoencoder": {"loss.adversarial": False},
  "g_first": {"g_first": True},
  "official_order": {"d_steps": 2, "g_steps": 1},
  "no_bn_sync": {"model.sync_batchnorm": False},
  "transpose_conv": {"model.upsample": "transpose"},
  "bfloat16": {"model.dtype": "bfloat16"},
  "sum_reduction": {"loss.reduction": "sum", "loss.lambda_scale": 1.0},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablations_trace(name):
  config = tiny_config("", **ABLATIONS[name])  # tracing reads no data
  state = jax.eval_shape(lambda r: create_train_state(config, r), jax.random.key(0))
  batch = {
    "image": jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32),
    "other": jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32),
    "patches": jax.ShapeDtypeStruct((2, 3, 16, 16, 3), jnp.float32),
    "boxes": jax.ShapeDtypeStruct((2, 3, 4), jnp.float32),
  }
  _, metrics = jax.eval_shape(step_fn(config, 10, axis_name=None), state, batch, jax.random.key(1))
  assert metrics["g_loss"].dtype == jnp.float32
