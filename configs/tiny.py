"""Tiny config for tests and smoke runs: 16x16 images, narrow networks, 4 steps (configs/small.py).

python -m preprocessing --source synthetic --num-images 96 --image-size 16 --test-count 16 --output tiny_data
python -m keypatch_jax.main --config configs/tiny.py --workdir tiny_work --config.data_dir=tiny_data
python -m keypatch_jax.sample --workdir tiny_work --data tiny_data --output tiny.png
"""

from configs import small


def get_config():
  """The `tiny` column of configs/small.py."""
  return small.get_config("tiny")
