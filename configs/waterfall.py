"""Waterfall: 64x64, 100 epochs, tall boxes up to 70% of the height (paper §4.1).

15,323 scene images; the 0.7 box-height preset catches long water streams.

  python -m preprocessing --source folder:/data/waterfall --min-side 128 --image-size 64 \
      --max-box-height 0.7 --output data/waterfall
  python -m keypatch_jax.main --config configs/waterfall.py --workdir work/waterfall \
      --config.data_dir=data/waterfall
  python -m keypatch_jax.sample --workdir work/waterfall --data data/waterfall \
      --output work/waterfall/samples.png
  python -m keypatch_jax.evaluate --workdir work/waterfall --data data/waterfall \
      --output work/waterfall/metrics.json
"""

from configs import default


def get_config():
  """waterfall config."""
  config = default.get_config()
  config.data_dir = "data/waterfall"  # Output of the preprocessing command above.
  config.image_size = 64
  config.num_epochs = 100
  return config
