"""Demo: the built-in synthetic faces at 32x32, trained on 2 CPU cores in minutes (configs/small.py).

  python -m preprocessing --source synthetic --num-images 2000 --image-size 32 --output demo_data
  python -m keypatch_jax.main --config configs/demo.py --workdir demo_work --config.data_dir=demo_data
  python -m keypatch_jax.sample --workdir demo_work --data demo_data --output demo_work/samples.png

`python -m keypatch_jax.demo` runs these (and the evaluation) in one go.
"""

from configs import small


def get_config():
  """The `demo` column of configs/small.py."""
  return small.get_config("demo")
