"""Oxford Flowers-102: 64x64, 800 epochs (paper §4.1).

8,189 images of 102 classes; labels are kept for the linear probe.

  python -m preprocessing --source tfds:oxford_flowers102:train --min-side 128 --image-size 64 \
      --output data/flowers
  python -m keypatch_jax.main --config configs/flowers.py --workdir work/flowers \
      --config.data_dir=data/flowers
  python -m keypatch_jax.sample --workdir work/flowers --data data/flowers \
      --output work/flowers/samples.png
  python -m keypatch_jax.evaluate --workdir work/flowers --data data/flowers \
      --output work/flowers/metrics.json
"""

from configs import default


def get_config():
  """flowers config."""
  config = default.get_config()
  config.data_dir = "data/flowers"  # Output of the preprocessing command above.
  config.image_size = 64
  config.num_epochs = 800
  return config
