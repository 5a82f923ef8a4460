"""Checks of a training config, before anything slow starts (docs/design.md §8)."""

from __future__ import annotations

from keypatch_jax import conv_forms, errors, losses, models


class ConfigError(errors.UserError):
  """A config value that cannot work (one-line message naming the field)."""


def validate_config(config) -> None:
  """Checks the fields a run depends on.

  Raises:
    ConfigError: "bad config: <field> ...", one line naming the field.
  """
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
    (config.eval_every_steps >= 0, "eval_every_steps must be >= 0 (0: no evaluation during training)"),
    (0.0 < config.eval_max_share <= 1.0, "eval_max_share must be in (0, 1]"),
    (config.kid_subsets >= 1, "kid_subsets must be >= 1"),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(f"bad config: {message}")
  try:
    models.num_levels(config.image_size)
    conv_forms.check_forms(config.model.upsample, config.model.downsample)
  except ValueError as e:
    raise ConfigError(f"bad config: {e}") from None


def num_train_steps(config, steps_per_epoch: int) -> int:
  """`num_train_steps` when > 0, else `num_epochs * steps_per_epoch`."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * steps_per_epoch)
