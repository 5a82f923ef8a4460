"""The two small configs, one table: `demo` (the README's demo) and `tiny` (tests).

Both are the paper's networks, losses, schedule and update order
(configs/default.py) at reduced width and resolution: `demo` learns to place
the parts visibly in a few minutes on 2 CPU cores; `tiny` compiles and runs in
seconds. `demo` departs from the paper in two values chosen for its run of a
few hundred steps, each one flag from the paper's (docs/demo_quality.md has
the measurements): λ stays at the paper's starting value 1e-2 (8 short epochs
would otherwise decay it 100x before the appearance loss is learned;
`--config.loss.lambda_end=-4` restores the decay), and Adam's learning rate is
1e-3 (`--config.learning_rate=2e-4` is the paper's). Select one as `--config=configs/small.py:demo` (configs/demo.py and
configs/tiny.py are the same, by their own file names).
"""

from __future__ import annotations

import ml_collections

from configs import default

# The fields the small configs change, and one row of values per config.
FIELDS = (
  "image_size", "model.conv_dim", "model.embed_dim", "model.z_dim", "batch_size", "num_epochs", "num_train_steps",
  "shuffle_buffer", "prefetch", "log_every_steps", "image_every_steps", "checkpoint_every_steps", "eval_batches",
  "eval_every_steps", "ema_decay", "loss.lambda_end", "learning_rate",
)  # fmt: skip
# fmt: off
CONFIGS = {
  #        S   conv embed  z  batch epochs steps shuffle prefetch log image ckpt eval every  ema  log10 λ end  lr
  "demo": (32,  16,  64,  32,  32,    8,    -1,   512,     2,    20, 200,  200,  4,  200,  0.99, -2.0,       1e-3),
  "tiny": (16,   8,  16,   8,   8,    2,     4,    64,     1,     2,   4,    2,  1,    2,  0.9,  -4.0,       2e-4),
}
# fmt: on


def get_config(name: str) -> ml_collections.ConfigDict:
  """configs/default.py with the FIELDS set to the `name` row of CONFIGS ("demo" or "tiny").

  Raises:
    ValueError: an unknown name.
  """
  if name not in CONFIGS:
    raise ValueError(f"configs/small.py:{name!r} is not a config; use one of {', '.join(CONFIGS)}")
  config = default.get_config()
  config.update_from_flattened_dict(dict(zip(FIELDS, CONFIGS[name], strict=True)))
  return config
