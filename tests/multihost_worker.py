"""One process of the 2-process multi-host test (run by test_multihost.py).

argv: coordinator address, process id, data dir, workdir. Trains the tiny
config through the real loop with `jax.distributed` and prints a checksum of
the final parameters, which must be identical on every process.
"""

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_config  # noqa: E402

from keypatch_jax import checkpoint, train  # noqa: E402


def main() -> None:
  address, process_id, data_dir, workdir = sys.argv[1:5]
  jax.distributed.initialize(address, num_processes=2, process_id=int(process_id))
  assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
  summary = train.train_and_evaluate(tiny_config(data_dir), workdir)
  _, variables, _, step = checkpoint.restore_generator(workdir, ema=False)
  params = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(variables["params"])])
  print(f"RESULT process={jax.process_index()} step={summary['step']} restored={step} checksum={params.sum():.10e}")


if __name__ == "__main__":
  main()
