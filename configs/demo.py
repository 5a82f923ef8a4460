"""Demo: the built-in synthetic faces at 32x32, trained on 2 CPU cores in minutes (configs/small.py).

`python -m keypatch_jax.demo --workdir WORKDIR` runs exactly these steps:

  python -m preprocessing --source synthetic:aligned --num-images 2000 --image-size 32 \
      --edges gradient --preview 8 --output WORKDIR/data
  python -m keypatch_jax.main --config configs/demo.py --workdir WORKDIR/train \
      --config.data_dir=WORKDIR/data
  python -m keypatch_jax.sample --workdir WORKDIR/train --data WORKDIR/data --output WORKDIR/samples.png
  python -m keypatch_jax.evaluate --workdir WORKDIR/train --data WORKDIR/data --output WORKDIR/metrics.json
"""

from configs import small


def get_config():
  """The `demo` column of configs/small.py."""
  return small.get_config("demo")
