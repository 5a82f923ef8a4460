"""CompCars high quality: 256x256, 300 epochs on 30k images (paper §4.1).

The paper trains the 256 px model on a 30,000-image subset.

  python -m preprocessing --source folder:/data/compcars_30k --min-side 256 --image-size 256 \
      --output data/compcars_256
  python -m keypatch_jax.main --config configs/compcars_256.py --workdir work/compcars_256 \
      --config.data_dir=data/compcars_256
  python -m keypatch_jax.sample --workdir work/compcars_256 --data data/compcars_256 \
      --output work/compcars_256/samples.png
  python -m keypatch_jax.evaluate --workdir work/compcars_256 --data data/compcars_256 \
      --output work/compcars_256/metrics.json
"""

from configs import default


def get_config():
  """compcars_256 config."""
  config = default.get_config()
  config.data_dir = "data/compcars_256"  # Output of the preprocessing command above.
  config.image_size = 256
  config.num_epochs = 300
  return config
