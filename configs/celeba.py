"""CelebA (aligned): 64x64, 25 epochs (paper §4.1).

O center-crops 108x108 from the 178x218 aligned image before resizing (SPEC §1).

  python -m preprocessing --source folder:/data/celeba/img_align_celeba --center-crop 108 \
      --min-side 128 --image-size 64 --output data/celeba
  # or, with the manual TFDS download in place: --source tfds:celeb_a:train
  python -m keypatch_jax.main --config configs/celeba.py --workdir work/celeba \
      --config.data_dir=data/celeba
  python -m keypatch_jax.sample --workdir work/celeba --data data/celeba \
      --output work/celeba/samples.png
  python -m keypatch_jax.evaluate --workdir work/celeba --data data/celeba \
      --output work/celeba/metrics.json
"""

from configs import default


def get_config():
  """celeba config."""
  config = default.get_config()
  config.data_dir = "data/celeba"  # Output of the preprocessing command above.
  config.image_size = 64
  config.num_epochs = 25
  return config
