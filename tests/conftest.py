"""Shared fixtures: a tiny dataset written by the real preprocessing, and a
tiny trained workdir (both built once per test session, shared by the xdist workers)."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# TensorFlow (the input pipeline) and triton in one process segfault when triton loads, and the
# CUDA build of torch that the FID/KID reference tests use imports triton through torchvision
# (torch._dynamo). Those tests run torch on the CPU and need no triton: keep it from loading.
sys.modules.setdefault("triton", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests check values, shapes and behaviour of small models, where XLA's compile time is most of the
# run time: compile with most optimisations off, as the Flax examples' tests do
# (`jax_disable_most_optimizations`). KEYPATCH_TEST_OPTIMIZE=1 tests the optimised programs.
if os.environ.get("KEYPATCH_TEST_OPTIMIZE") != "1":
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


def pytest_configure(config):
  """One persistent XLA compilation cache per test session, shared by the xdist workers and the CLI subprocesses.

  The same tiny programs are compiled by several processes (each worker, every command run as a
  subprocess); a cache hit skips the compile. It starts empty each session, so no test depends on an
  earlier run. The workers and subprocesses inherit the controller's environment.
  """
  import tempfile

  if "JAX_COMPILATION_CACHE_DIR" not in os.environ and not hasattr(config, "workerinput"):
    config._keypatch_cache = tempfile.mkdtemp(prefix="keypatch-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config._keypatch_cache
  if not hasattr(config, "workerinput"):
    # HED edges (the default key patches) from a small weights file the tests make, and a user cache of
    # this session's own: no test downloads the real weights or sees a cached copy.
    from hed_files import write_gradient_hed

    config._keypatch_home = tempfile.mkdtemp(prefix="keypatch-jax-home-")
    os.environ["XDG_CACHE_HOME"] = os.path.join(config._keypatch_home, "cache")
    os.environ["KEYPATCH_HED_WEIGHTS"] = write_gradient_hed(os.path.join(config._keypatch_home, "hed.weights.h5"))


def pytest_unconfigure(config):
  for folder in (getattr(config, "_keypatch_cache", None), getattr(config, "_keypatch_home", None)):
    if folder:
      shutil.rmtree(folder, ignore_errors=True)


def timeout(seconds: float) -> float:
  """A subprocess timeout for `seconds` of work on an idle 2-core machine, stretched by the current load.

  CI runs on shared machines whose load can multiply every duration; a timeout here only guards against a
  hang, so it must not fail a slow but working run. `KEYPATCH_TEST_TIMEOUT_SCALE` multiplies it further.
  """
  load = max(os.getloadavg()) / (os.cpu_count() or 1)
  return seconds * max(1.0, load) * float(os.environ.get("KEYPATCH_TEST_TIMEOUT_SCALE", "1"))


def _built_once(request, tmp_path_factory, name: str, build) -> str:
  """`build(path)` run once per test session, also under pytest-xdist: the first worker builds, a file lock
  makes the others wait, and all read the same folder (the fixtures' users only read or copy it)."""
  if not hasattr(request.config, "workerinput"):  # a single process
    path = str(tmp_path_factory.mktemp(name))
    build(path)
    return path
  from filelock import FileLock

  root = tmp_path_factory.getbasetemp().parent  # this session's folder, shared by its workers
  path, done = root / name, root / f"{name}.done"
  with FileLock(str(root / f"{name}.lock")):
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      build(str(path))
      done.touch()
  return str(path)


TINY_IMAGES = 96
TINY_TEST = 16


@pytest.fixture(scope="session")
def tiny_data(request, tmp_path_factory) -> str:
  """A 16x16, N=3 synthetic dataset (80 train / 16 test) from `python -m preprocessing`."""

  def build(out: str) -> None:
    from preprocessing.__main__ import main

    argv = ["--source", "synthetic", "--num-images", str(TINY_IMAGES), "--image-size", "16"]
    argv += ["--test-count", str(TINY_TEST), "--workers", "1", "--output", out, "--quiet"]
    assert main(argv) == 0

  return _built_once(request, tmp_path_factory, "tiny_data", build)


def corrupt_copy(data_dir: str, dest, split: str) -> tuple[str, str]:
  """A copy of `data_dir` whose first `split` shard has one byte flipped mid-file: (copy, that shard)."""
  import glob

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
def trained_workdir(request, tiny_data, tmp_path_factory) -> str:
  """A workdir with checkpoints from a real 4-step tiny training run."""

  def build(workdir: str) -> None:
    from keypatch_jax import train

    train.train_and_evaluate(tiny_config(tiny_data), workdir)

  return _built_once(request, tmp_path_factory, "tiny_work", build)


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
