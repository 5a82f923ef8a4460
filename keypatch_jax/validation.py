"""Checks of a training config, before anything slow starts (docs/design.md §8)."""

from __future__ import annotations

from typing import Any

import ml_collections

from keypatch_jax import conv_forms, errors, losses, models


class ConfigError(errors.UserError):
  """A config value that cannot work (one-line message naming the field)."""


DTYPES = ("float32", "bfloat16", "float16")


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{"model.conv_dim": 64, ...}: dotted leaf paths of a config (lists from JSON become tuples)."""
  out: dict[str, Any] = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = tuple(value) if isinstance(value, list) else value
  return out


def enumerated_fields() -> dict[str, tuple[str, ...]]:
  """Every config field that takes one of a fixed set of values, with that set."""
  return {
    "flip": ("per_example", "per_batch", "none"),
    "parallel": ("pmap", "shard_map"),
    "loss.reduction": tuple(losses.REDUCTIONS),
    "model.dtype": DTYPES,
    "model.param_dtype": DTYPES,
    "model.upsample": ("auto", *conv_forms.UPSAMPLE),
    "model.downsample": ("auto", *conv_forms.DOWNSAMPLE),
  }


def validate_config(config) -> None:
  """Checks the fields a run depends on, before anything is written.

  Every field of `configs/default.py` must be present; every enumerated field
  (`enumerated_fields`) must hold one of its values.

  Raises:
    ConfigError: "bad config: <field> ...", one line naming the field.
  """
  from configs import default

  missing = sorted(set(flatten(default.get_config())) - set(flatten(config)))
  if missing:
    more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
    raise ConfigError(
      f"bad config: it has no {', '.join(missing[:6])}{more}; start config files from configs/default.get_config()"
    )
  for path, allowed in enumerated_fields().items():
    node = config
    for key in path.split("."):
      node = node.get(key) if hasattr(node, "get") else None
    if node is not None and node not in allowed:
      raise ConfigError(f"bad config: {path}={node!r} is not one of {', '.join(allowed)}")
  checks = [
    (config.batch_size > 0, "batch_size must be > 0"),
    (config.num_patches >= 1, "num_patches must be >= 1"),
    (config.g_steps >= 1 and config.d_steps >= 0, "need g_steps >= 1 and d_steps >= 0"),
    (config.num_epochs >= 1 or config.num_train_steps > 0, "num_epochs must be >= 1 (or set num_train_steps > 0)"),
    (
      set(config.loss.fakes) <= set(losses.ALL_FAKES) and "G" in config.loss.fakes,
      f"loss.fakes must include 'G' and be a subset of {losses.ALL_FAKES}",
    ),
    (0.0 <= config.ema_decay < 1.0, "ema_decay must be in [0, 1)"),
    (
      config.log_every_steps > 0 and config.checkpoint_every_steps > 0,
      "log_every_steps and checkpoint_every_steps must be > 0",
    ),
    (config.eval_every_steps >= 0, "eval_every_steps must be >= 0 (0: no evaluation during training)"),
    (0.0 < config.eval_max_share <= 1.0, "eval_max_share must be in (0, 1]"),
    (config.kid_subsets >= 1, "kid_subsets must be >= 1"),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(f"bad config: {message}")
  try:
    models.num_levels(config.image_size)
  except ValueError as e:
    raise ConfigError(f"bad config: {e}") from None


def num_train_steps(config, segment) -> int:
  """`num_train_steps` when > 0, else the step at which epoch `num_epochs` begins (`resume.Segment`)."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return segment.end_step(config.num_epochs)
