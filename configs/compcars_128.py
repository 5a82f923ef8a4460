"""CompCars: 128x128, 50 epochs (paper §4.1).

Web-nature + surveillance-nature images.

  python -m preprocessing --source folder:/data/compcars/image --min-side 128 --image-size 128 \
      --output data/compcars_128
  python -m keypatch_jax.main --config configs/compcars_128.py --workdir work/compcars_128 \
      --config.data_dir=data/compcars_128
  python -m keypatch_jax.sample --workdir work/compcars_128 --data data/compcars_128 \
      --output work/compcars_128/samples.png
  python -m keypatch_jax.evaluate --workdir work/compcars_128 --data data/compcars_128 \
      --output work/compcars_128/metrics.json
"""

from configs import default


def get_config():
  """compcars_128 config."""
  config = default.get_config()
  config.data_dir = "data/compcars_128"  # Output of the preprocessing command above.
  config.image_size = 128
  config.num_epochs = 50
  return config
