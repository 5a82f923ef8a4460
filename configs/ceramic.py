"""Ceramic: 64x64, 800 epochs (paper §4.1).

9,311 side-view images of pottery.

  python -m preprocessing --source folder:/data/ceramic --min-side 128 --image-size 64 \
      --output data/ceramic
  python -m keypatch_jax.main --config configs/ceramic.py --workdir work/ceramic \
      --config.data_dir=data/ceramic
  python -m keypatch_jax.sample --workdir work/ceramic --data data/ceramic \
      --output work/ceramic/samples.png
  python -m keypatch_jax.evaluate --workdir work/ceramic --data data/ceramic \
      --output work/ceramic/metrics.json
"""

from configs import default


def get_config():
  """ceramic config."""
  config = default.get_config()
  config.data_dir = "data/ceramic"  # Output of the preprocessing command above.
  config.image_size = 64
  config.num_epochs = 800
  return config
