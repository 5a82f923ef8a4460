"""Demo: the built-in synthetic faces at 32x32, trained on 2 CPU cores in minutes (configs/small.py).

Run it with `python -m keypatch_jax.demo --workdir WORKDIR`; keypatch_jax/demo.py's
docstring lists the four commands it runs (preprocess, train with this config
on WORKDIR/train, sample, evaluate).
"""

from configs import small


def get_config():
  """The `demo` column of configs/small.py."""
  return small.get_config("demo")
