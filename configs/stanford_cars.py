"""Stanford Cars: 64x64, 400 epochs (paper §4.1).

16,185 images of 196 classes; labels are kept for the linear probe.

  python -m preprocessing --source tfds:cars196:train --min-side 128 --image-size 64 \
      --output data/stanford_cars
  python -m keypatch_jax.main --config configs/stanford_cars.py --workdir work/stanford_cars \
      --config.data_dir=data/stanford_cars
  python -m keypatch_jax.sample --workdir work/stanford_cars --data data/stanford_cars \
      --output work/stanford_cars/samples.png
  python -m keypatch_jax.evaluate --workdir work/stanford_cars --data data/stanford_cars \
      --output work/stanford_cars/metrics.json
"""

from configs import default


def get_config():
  """stanford_cars config."""
  config = default.get_config()
  config.data_dir = "data/stanford_cars"  # Output of the preprocessing command above.
  config.image_size = 64
  config.num_epochs = 400
  return config
