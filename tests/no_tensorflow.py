"""Runs keypatch-jax with TensorFlow absent, as on a machine without it (run by test_no_tensorflow.py).

`None` in `sys.modules` is what Python itself reads as "not installed here":
`import tensorflow` raises ModuleNotFoundError and `importlib.util.find_spec`
returns None (so etils.epath, Orbax's path layer, picks its TensorFlow-free
backend). TensorBoard and TFDS are blocked with it.

  python tests/no_tensorflow.py -m MODULE ARGS...   runs a command (sample, serve)
  python tests/no_tensorflow.py step WORKDIR        restores WORKDIR's newest full state, runs one
                                                    parallel train step on it, prints its losses
"""

import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tensorboard")
sys.modules.update(dict.fromkeys(BLOCKED))

import os  # noqa: E402
import runpy  # noqa: E402


def loaded_blocked() -> list[str]:
  """Names of modules of the blocked packages that did load (must stay empty)."""
  return sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in BLOCKED)


def train_step_check(workdir: str) -> None:
  """Models, losses, state, the parallel step and a full checkpoint restore, with no TensorFlow."""
  import flax
  import jax
  import numpy as np

  from keypatch_jax import checkpoint, losses, models, step  # noqa: F401 (each must import)
  from keypatch_jax.state import create_train_state

  config = checkpoint.read_config(workdir)
  template = jax.jit(lambda r: create_train_state(config, r))(jax.random.key(0))
  mngr = checkpoint.manager(workdir, read_only=True)
  state, meta = checkpoint.restore(mngr, template)
  mngr.close()
  devices = jax.local_device_count()
  s, n, b = config.image_size, config.num_patches, config.batch_size // devices
  rng = np.random.default_rng(0)
  host = {
    "image": rng.uniform(-1, 1, (devices, b, s, s, 3)),
    "other": rng.uniform(-1, 1, (devices, b, s, s, 3)),
    "patches": rng.uniform(-1, 1, (devices, b, n, s, s, 3)),
    "boxes": np.broadcast_to(np.array([1.0, 2.0, s / 2, s / 3]), (devices, b, n, 4)),
  }
  host = {k: v.astype(np.float32) for k, v in host.items()}
  batch = next(flax.jax_utils.prefetch_to_device(iter([host]), 1, axis_name=step.AXIS))
  p_step = step.parallelize(step.step_fn(config, 1000), config.parallel)
  new_state, metrics = p_step(step.replicate(state), batch, jax.random.key(1))
  metrics = jax.device_get(step.unreplicate(metrics))
  assert np.isfinite(float(metrics["g_loss"])) and np.isfinite(float(metrics["d_loss"])), metrics
  after = int(step.unreplicate(new_state).step)
  print(f"RESULT restored={meta['step']} after={after} g_loss={float(metrics['g_loss']):.4f} devices={devices}")


def main() -> None:
  if sys.argv[1] == "-m":
    module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
    sys.path.insert(0, os.getcwd())
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
      print(f"BLOCKED_LOADED {loaded_blocked()}", file=sys.stderr, flush=True)
  elif sys.argv[1] == "step":
    train_step_check(sys.argv[2])
    print(f"BLOCKED_LOADED {loaded_blocked()}")
  else:
    sys.exit(f"unknown mode {sys.argv[1]!r}")


if __name__ == "__main__":
  main()
