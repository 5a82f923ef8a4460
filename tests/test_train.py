"""Training: step, data parallelism, resume, preemption, NaN guard, configs, CLI errors."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import corrupt_copy, timeout, tiny_config

from keypatch_jax import checkpoint, compiles, dataset_meta, features, input_pipeline, train
from keypatch_jax.state import create_train_state
from keypatch_jax.step import parallelize, replicate, step_fn, unreplicate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(state):
  return jax.device_get(
    {
      "g": state.g.params,
      "d": state.d.params,
      "ema": state.ema_params,
      "g_stats": state.g.batch_stats,
      "d_stats": state.d.batch_stats,
    }
  )


def _assert_trees_close(a, b, atol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_train_end_to_end_on_real_tfrecords(tiny_data, tmp_path):
  """4 steps of the real loop on TFRecords from the real preprocessing."""
  workdir = str(tmp_path / "work")
  summary = train.train_and_evaluate(tiny_config(tiny_data), workdir)
  assert summary["step"] == 4
  assert summary["traces"] == 1 and summary["compiles"] <= 1  # one compile per run
  assert 0.0 <= summary["mask_iou"] <= 1.0
  mngr = checkpoint.manager(workdir, read_only=True)
  assert sorted(mngr.all_steps()) == [2, 4]
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  generator, variables, config, step = checkpoint.restore_generator(workdir)
  assert step == 4 and config.image_size == 16


@pytest.mark.slow
def test_pmap_four_devices_equals_one_device(tiny_data, monkeypatch):
  """The same global batch on 4 devices and on 1 gives the same parameters and statistics.

  Plain SGD stands in for Adam here: Adam's first step maps every gradient to
  about ±lr, so the exactly-zero true gradients of the biases before a
  BatchNorm turn round-off noise into ±2e-4 differences; SGD compares the
  gradients themselves, which is what data parallelism must preserve.
  """
  import optax

  cpus = jax.devices("cpu")  # the 4 simulated devices (conftest), on any backend
  assert len(cpus) == 4
  monkeypatch.setattr("keypatch_jax.state.make_optimizer", lambda config: optax.sgd(0.01))
  config = tiny_config(tiny_data)
  meta = dataset_meta.load_meta(tiny_data)
  batch = next(input_pipeline.train_iterator(meta, config))  # [4, 2, ...]
  state = jax.jit(lambda r: create_train_state(config, r))(jax.random.key(0))
  results = {}
  for devices in (cpus, cpus[:1]):
    n = len(devices)
    step = parallelize(step_fn(config, 10), "pmap", devices=devices)
    local = {k: v.reshape(n, -1, *v.shape[2:]) for k, v in batch.items()}
    pstate = jax.tree.map(lambda x, n=n: jnp.stack([x] * n), state)
    pstate, metrics = step(pstate, local, jax.random.key(1))
    results[n] = (_params(unreplicate(pstate)), jax.device_get(metrics))
  _assert_trees_close(results[4][0], results[1][0], atol=1e-4)
  np.testing.assert_allclose(results[4][1]["g_loss"][0], results[1][1]["g_loss"][0], rtol=1e-4)


@pytest.mark.slow
def test_shard_map_matches_pmap(tiny_data):
  """`config.parallel='shard_map'` runs the same per-device step to the same result."""
  config = tiny_config(tiny_data)
  meta = dataset_meta.load_meta(tiny_data)
  batch = next(input_pipeline.train_iterator(meta, config))
  state = jax.jit(lambda r: create_train_state(config, r))(jax.random.key(0))
  out = {}
  for parallel in ("pmap", "shard_map"):
    step = parallelize(step_fn(config, 10), parallel)
    pstate, _ = step(replicate(state), batch, jax.random.key(1))
    out[parallel] = _params(unreplicate(pstate))
  _assert_trees_close(out["pmap"], out["shard_map"], atol=1e-5)


@pytest.mark.slow
def test_exact_resume(tiny_data, tmp_path):
  """4 steps == 2 steps, restart, 2 more steps: bit-equal parameters."""
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train.train_and_evaluate(tiny_config(tiny_data, num_train_steps=4), straight)
  train.train_and_evaluate(tiny_config(tiny_data, num_train_steps=2), resumed)
  summary = train.train_and_evaluate(tiny_config(tiny_data, num_train_steps=4), resumed)
  assert summary["step"] == 4
  template = jax.jit(lambda r: create_train_state(tiny_config(tiny_data), r))(jax.random.key(0))
  states = [checkpoint.restore(checkpoint.manager(d, read_only=True), template)[0] for d in (straight, resumed)]
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_input_pipeline_resumes_at_any_step(tiny_data):
  """The batch stream from step k equals the stream from 0 advanced by k (across epochs)."""
  config = tiny_config(tiny_data)
  meta = dataset_meta.load_meta(tiny_data)
  spe = dataset_meta.steps_per_epoch(meta, config.batch_size)
  full = input_pipeline.train_iterator(meta, config)
  batches = [next(full) for _ in range(spe + 3)]
  for k in (1, spe + 1):
    it = input_pipeline.train_iterator(meta, config, start_step=k)
    for expected in batches[k : k + 2]:
      got = next(it)
      for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=f"step {k} {key}")


def test_flip_keeps_patches_and_boxes_consistent(tiny_data):
  """A flipped example's patches are the flipped original's patches; y' is not in the batch."""
  tf = input_pipeline._tf()
  s = 16
  image = tf.random.uniform([s, s, 3], -1.0, 1.0, seed=1)
  boxes = tf.constant([[1.0, 2.0, 6.0, 5.0], [8.0, 8.0, 7.0, 4.0]])
  patches = input_pipeline.crop_patches(image, boxes, s)
  f_image, f_boxes = input_pipeline.flip_example(image, boxes, s)
  f_patches = input_pipeline.crop_patches(f_image, f_boxes, s)
  np.testing.assert_allclose(f_patches.numpy(), patches.numpy()[:, :, ::-1], atol=1e-5)
  np.testing.assert_allclose(f_boxes.numpy()[:, 0], [s - 1 - 6, s - 8 - 7])


def test_other_real_comes_from_outside_the_batch(tiny_data):
  config = tiny_config(tiny_data, batch_size=16)
  meta = dataset_meta.load_meta(tiny_data)
  it = input_pipeline.train_iterator(meta, config)
  for _ in range(3):
    batch = next(it)
    images = batch["image"].reshape(-1, 16 * 16 * 3)
    others = batch["other"].reshape(-1, 16 * 16 * 3)
    same = (np.abs(images[:, None] - others[None]).max(axis=-1) == 0).any()
    assert not same


def _one_step(config, batch):
  state = jax.jit(lambda r: create_train_state(config, r))(jax.random.key(0))
  step = jax.jit(step_fn(config, 10, axis_name=None))
  return state, step(state, batch, jax.random.key(1))


def _host_batch(tiny_data, config):
  meta = dataset_meta.load_meta(tiny_data)
  batch = next(input_pipeline.train_iterator(meta, config))
  return {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}


@pytest.mark.slow
def test_nan_guard_keeps_state_and_flags(tiny_data):
  config = tiny_config(tiny_data)
  batch = _host_batch(tiny_data, config)
  batch["image"] = batch["image"].copy()
  batch["image"][0, 0, 0, 0] = np.nan
  state, (new_state, metrics) = _one_step(config, batch)
  assert float(metrics["nonfinite"]) == 1.0
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_bfloat16_step_has_finite_losses(tiny_data):
  config = tiny_config(tiny_data, **{"model.dtype": "bfloat16"})
  _, (_, metrics) = _one_step(config, _host_batch(tiny_data, config))
  assert float(metrics["nonfinite"]) == 0.0
  assert np.isfinite(float(metrics["g_loss"])) and np.isfinite(float(metrics["d_loss"]))


@pytest.mark.slow
def test_nan_in_loop_stops_with_message_and_keeps_last_checkpoint(tiny_data, tmp_path):
  workdir = str(tmp_path / "nan")
  # One G update and no D update per step: step 1's losses are finite but its
  # update (lr 1e38) overflows G's parameters, so step 2's losses are not.
  config = tiny_config(tiny_data, learning_rate=1e38, d_steps=0, g_steps=1, checkpoint_every_steps=1, log_every_steps=1)
  with pytest.raises(train.NonFiniteLossError, match="non-finite loss at step 2.*Last good checkpoint: step 1"):
    train.train_and_evaluate(config, workdir)
  assert checkpoint.manager(workdir, read_only=True).all_steps() == [1]
  _, variables, _, step = checkpoint.restore_generator(workdir)  # the last good checkpoint restores
  assert step == 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def test_resume_checks_the_checkpoint_meta(caplog):
  """A checkpoint for another S or N is a one-line CheckpointError; another data_dir only a warning."""
  saved = {"step": 4, "image_size": 16, "num_patches": 3, "steps_per_epoch": 10, "data_dir": "a"}
  checkpoint.check_resumable(saved, dict(saved), "w")
  for key, value in (("image_size", 32), ("num_patches", 4)):
    with pytest.raises(checkpoint.CheckpointError, match=f"{key} {saved[key]} but the config has {value}"):
      checkpoint.check_resumable(saved, {**saved, key: value}, "w")
  with caplog.at_level("WARNING"):
    checkpoint.check_resumable(saved, {**saved, "steps_per_epoch": 5}, "w")  # a new batch size continues the epoch
  assert "steps_per_epoch" not in caplog.text
  with caplog.at_level("WARNING"):
    checkpoint.check_resumable(saved, {**saved, "data_dir": "b"}, "w")
  assert "data_dir" in caplog.text


def test_compile_counter_registers_one_listener(monkeypatch):
  """Every CompileCounter shares one jax.monitoring listener, registered once."""
  listeners = []
  monkeypatch.setattr(jax.monitoring, "register_event_duration_secs_listener", listeners.append)
  monkeypatch.setattr(compiles.CompileCounter, "_registered", False)
  first, second = compiles.CompileCounter(), compiles.CompileCounter()
  assert len(listeners) == 1
  first.active = True
  listeners[0]("/jax/core/compile/jaxpr_trace_duration", 0.5)
  listeners[0]("/jax/core/compile/backend_compile_duration", 2.0)
  assert (first.traces, first.compiles, first.seconds) == (1, 1, 2.0)
  assert (second.traces, second.compiles) == (0, 0)


def _cli(args, **kwargs):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen(
    [sys.executable, "-m", "keypatch_jax.main", "--config", os.path.join(REPO, "configs", "tiny.py"), *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    cwd=REPO,
    **kwargs,
  )


@pytest.mark.slow
def test_sigterm_saves_a_restorable_checkpoint(tiny_data, tmp_path):
  workdir = str(tmp_path / "preempt")
  proc = _cli(
    [
      "--workdir",
      workdir,
      f"--config.data_dir={tiny_data}",
      "--config.num_train_steps=100000",
      "--config.checkpoint_every_steps=100000",
      "--config.log_every_steps=1",
    ]
  )
  deadline = time.time() + timeout(300)
  events = os.path.join(workdir, "events.out.tfevents.*")
  while time.time() < deadline and proc.poll() is None:
    # the loop is running once scalars for a few steps have been written
    files = glob.glob(events)
    if files and os.path.getsize(files[0]) > 2000:
      break
    time.sleep(1)
  assert proc.poll() is None, proc.communicate()[1][-2000:]
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=timeout(180))
  assert proc.returncode == 0, err[-2000:]
  # The console shows progress lines, not library chatter (Orbax INFO, the TPU probe, TensorFlow banners).
  assert re.search(r"^step \d+/100000 \(0%\)  g_loss \S+  d_loss \S+", out, re.M), out[-2000:]
  for chatter in ("orbax", "checkpoint_manager", "libtpu", "oneDNN"):
    assert chatter not in out + err, (chatter, err[-2000:])
  steps = checkpoint.manager(workdir, read_only=True).all_steps()
  assert len(steps) == 1 and 0 < steps[0] < 100000
  _, _, _, step = checkpoint.restore_generator(workdir)
  assert step == steps[0]


@pytest.mark.slow
@pytest.mark.parametrize(
  "args, expected",
  [
    (["--config.data_dir=/nonexistent/data"], "/nonexistent/data"),
    (["--config.loss.reduction=median"], "loss.reduction"),
    (["--config.batch_size=7"], "batch_size=7"),
  ],
)
def test_bad_config_or_data_is_a_one_line_error(tiny_data, tmp_path, args, expected):
  full = [f"--config.data_dir={tiny_data}", *args] if "data_dir" not in args[0] else args
  proc = _cli(["--workdir", str(tmp_path / "w"), *full])
  _, err = proc.communicate(timeout=timeout(300))
  assert proc.returncode == 1
  assert "Traceback" not in err
  lines = [line for line in err.splitlines() if line.startswith("keypatch_jax.main: error:")]
  assert len(lines) == 1 and expected in lines[0], err[-2000:]


def test_corrupt_train_shard_names_the_file(tiny_data, tmp_path):
  """Reading a damaged shard raises DatasetFormatError (a one-line CLI error) naming it."""
  data, shard = corrupt_copy(tiny_data, tmp_path, "train")
  config = tiny_config(data)
  meta = dataset_meta.load_meta(data, config.image_size, config.num_patches)
  assert input_pipeline.find_corrupt_shard(meta, features.split_files(tiny_data, "train")) is None
  with pytest.raises(features.DatasetFormatError, match="rerun") as e:
    for _ in input_pipeline.train_iterator(meta, config):
      pass
  assert shard in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("spatial_weight", [1.0, 3.0])
def test_spatial_weight_scales_lambda_1_only(tiny_data, spatial_weight):
  """G's objective (eq. 1) is g_adv + spatial_weight·λ·LS + λ·LA (docs/design.md §4.3)."""
  config = tiny_config(tiny_data, **{"loss.spatial_weight": spatial_weight})
  _, (_, m) = _one_step(config, _host_batch(tiny_data, config))
  lam = float(m["lambda"])
  expected = float(m["g_adv"]) + spatial_weight * lam * float(m["g_spatial"]) + lam * float(m["g_appearance"])
  assert float(m["g_loss"]) == pytest.approx(expected, rel=1e-5)
  assert float(m["g_spatial"]) > 0
