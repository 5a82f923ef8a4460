"""Checks of a training config, before anything slow starts (docs/design.md §8)."""

from __future__ import annotations

import math
from collections.abc import Callable
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


def _get(config, path: str) -> Any:
  node = config
  for key in path.split("."):
    node = node.get(key) if hasattr(node, "get") else None
  return node


def _number(value: Any) -> bool:
  """A finite int or float (not a bool, NaN or inf)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
  return float(value).is_integer()


# The rule most fields share: (test, what it must be).
POSITIVE_INTEGER: tuple[Callable[[Any], bool], str] = (lambda v: _integer(v) and v >= 1, "an integer >= 1")

# Every numeric field of configs/default.py: (field, test, what it must be), checked before anything is written.
RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
  ("image_size", *POSITIVE_INTEGER),
  ("num_patches", *POSITIVE_INTEGER),
  ("shuffle_buffer", *POSITIVE_INTEGER),
  ("prefetch", *POSITIVE_INTEGER),
  ("model.conv_dim", *POSITIVE_INTEGER),
  ("model.embed_dim", *POSITIVE_INTEGER),
  ("model.z_dim", *POSITIVE_INTEGER),
  ("loss.lambda_start", lambda v: -30 <= v <= 30, "a finite log10 of λ in [-30, 30]"),
  ("loss.lambda_end", lambda v: -30 <= v <= 30, "a finite log10 of λ in [-30, 30]"),
  ("loss.lambda_scale", lambda v: v > 0, "a finite number > 0"),
  ("loss.spatial_weight", lambda v: v > 0, "a finite number > 0"),
  ("learning_rate", lambda v: v > 0, "a finite number > 0 (a negative one ascends the loss)"),
  ("b1", lambda v: 0 <= v < 1, "in [0, 1)"),
  ("b2", lambda v: 0 <= v < 1, "in [0, 1)"),
  ("d_steps", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
  ("g_steps", *POSITIVE_INTEGER),
  ("ema_decay", lambda v: 0 <= v < 1, "in [0, 1) (0: no EMA)"),
  ("batch_size", *POSITIVE_INTEGER),
  ("num_epochs", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
  ("num_train_steps", lambda v: _integer(v) and (v == -1 or v >= 1), "-1 (use num_epochs) or an integer >= 1"),
  ("seed", lambda v: _integer(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
  ("log_every_steps", *POSITIVE_INTEGER),
  ("image_every_steps", *POSITIVE_INTEGER),
  ("checkpoint_every_steps", *POSITIVE_INTEGER),
  ("max_to_keep", lambda v: _integer(v) and v >= 1, "an integer >= 1 (checkpoints kept)"),
  ("eval_batches", *POSITIVE_INTEGER),
  ("eval_every_steps", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0: no evaluation during training)"),
  ("eval_max_share", lambda v: 0 < v <= 1, "in (0, 1]"),
  ("kid_subsets", *POSITIVE_INTEGER),
)


def validate_config(config) -> None:
  """Checks the fields a run depends on, before anything is written.

  Every field of `configs/default.py` must be present; every enumerated field
  (`enumerated_fields`) must hold one of its values; every numeric field must
  be finite and in its range (`RANGES`).

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
    node = _get(config, path)
    if node is not None and node not in allowed:
      raise ConfigError(f"bad config: {path}={node!r} is not one of {', '.join(allowed)}")
  for path, ok, requirement in RANGES:
    value = _get(config, path)
    if not _number(value) or not ok(value):
      raise ConfigError(f"bad config: {path}={value!r} must be {requirement}")
  checks = [
    (config.num_epochs >= 1 or config.num_train_steps > 0, "num_epochs must be >= 1 (or set num_train_steps > 0)"),
    (
      set(config.loss.fakes) <= set(losses.ALL_FAKES) and "G" in config.loss.fakes,
      f"loss.fakes must include 'G' and be a subset of {losses.ALL_FAKES}",
    ),
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
