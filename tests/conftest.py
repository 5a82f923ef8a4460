"""Shared fixtures: a tiny dataset written by the real preprocessing, and a
tiny trained workdir (both built once per test process)."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# TensorFlow (the input pipeline) and triton in one process segfault when triton loads, and the
# CUDA build of torch that the FID/KID reference tests use imports triton through torchvision
# (torch._dynamo). Those tests run torch on the CPU and need no triton: keep it from loading.
sys.modules.setdefault("triton", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY_IMAGES = 96
TINY_TEST = 16


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
  """A 16x16, N=3 synthetic dataset (80 train / 16 test) from `python -m preprocessing`."""
  from preprocessing.__main__ import main

  out = str(tmp_path_factory.mktemp("tiny_data"))
  argv = [
    "--source",
    "synthetic",
    "--num-images",
    str(TINY_IMAGES),
    "--image-size",
    "16",
    "--test-count",
    str(TINY_TEST),
    "--workers",
    "1",
    "--output",
    out,
    "--quiet",
  ]
  assert main(argv) == 0
  return out


def corrupt_copy(data_dir: str, dest, split: str) -> tuple[str, str]:
  """A copy of `data_dir` whose first `split` shard has one byte flipped mid-file: (copy, that shard)."""
  import glob
  import shutil

  out = str(dest / "corrupt_data")
  shutil.copytree(data_dir, out)
  shard = sorted(glob.glob(os.path.join(out, f"{split}-*.tfrecord")))[0]
  with open(shard, "r+b") as f:
    f.seek(os.path.getsize(shard) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  return out, shard


def tiny_config(data_dir: str, **overrides):
  """configs/tiny.py pointed at `data_dir`, with dotted-key overrides."""
  from configs import tiny

  config = tiny.get_config()
  config.data_dir = data_dir
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="session")
def trained_workdir(tiny_data, tmp_path_factory) -> str:
  """A workdir with checkpoints from a real 4-step tiny training run."""
  from keypatch_jax import train

  workdir = str(tmp_path_factory.mktemp("tiny_work"))
  train.train_and_evaluate(tiny_config(tiny_data), workdir)
  return workdir


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> str:
  """An .npz of random FID Inception weights with pytorch-fid's state_dict keys (nothing downloaded).

  Kernels ~ N(0, 2 / fan_in), BatchNorm identity: activations stay O(1).
  """
  import jax
  import numpy as np

  from keypatch_jax import inception

  rng = np.random.default_rng(0)
  shapes = inception.variable_shapes()

  def leaf(path, x):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0.0, np.sqrt(2.0 / np.prod(x.shape[:-1])), x.shape).astype(np.float32)
    return np.full(x.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  path = tmp_path_factory.mktemp("inception") / "random_inception.npz"
  np.savez(path, **inception.to_state_dict(jax.tree_util.tree_map_with_path(leaf, shapes)))
  return str(path)
