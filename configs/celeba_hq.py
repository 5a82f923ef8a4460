"""CelebA-HQ: 256x256, 100 epochs; detection at min side 256 (paper §4.1).

30,000 images at 1024x1024; resized to min side 256 before EdgeBoxes.

  python -m preprocessing --source folder:/data/celeba_hq --min-side 256 --image-size 256 \
      --output data/celeba_hq
  python -m keypatch_jax.main --config configs/celeba_hq.py --workdir work/celeba_hq \
      --config.data_dir=data/celeba_hq
  python -m keypatch_jax.sample --workdir work/celeba_hq --data data/celeba_hq \
      --output work/celeba_hq/samples.png
  python -m keypatch_jax.evaluate --workdir work/celeba_hq --data data/celeba_hq \
      --output work/celeba_hq/metrics.json
"""

from configs import default


def get_config():
  """celeba_hq config."""
  config = default.get_config()
  config.data_dir = "data/celeba_hq"  # Output of the preprocessing command above.
  config.image_size = 256
  config.num_epochs = 100
  return config
