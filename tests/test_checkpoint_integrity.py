"""Checkpoints that prove themselves (docs/design.md §7.3): damaged or vanishing steps are named and passed over;
a save that cannot be written stops the run in one line."""

from __future__ import annotations

import errno
import glob
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import timeout, tiny_config

from keypatch_jax import checkpoint, digests, sample, save_failures, train

FLIPPED = 64


def _copy(workdir: str, tmp_path) -> str:
  out = str(tmp_path / "work")
  shutil.copytree(workdir, out)
  return out


def _flip(workdir: str, step: int, item: str, every: int | None = None, at: float = 0.5) -> None:
  """Flips FLIPPED bytes at fraction `at` (the middle) of the largest file of `item` of checkpoint `step` (its
  array data), or with `every`, at every `every` bytes of each of its files."""
  files = glob.glob(os.path.join(workdir, "checkpoints", str(step), item, "**"), recursive=True)
  files = [f for f in files if os.path.isfile(f)]
  for target in files if every else [max(files, key=os.path.getsize)]:
    size = os.path.getsize(target)
    with open(target, "r+b") as f:
      for offset in range(0, size, every) if every else [int(size * at)]:
        f.seek(offset)
        data = f.read(FLIPPED)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_orbax_alone_restores_flipped_bytes_silently(trained_workdir, tmp_path):
  """Why the digests exist: Orbax restores a damaged step without an error, with other values.

  Where the flipped bytes fall in a compressed chunk, its decompressor notices; elsewhere nothing does. Which
  happens at a given offset depends on the trained values, so a few offsets are tried.
  """
  silent = 0
  for i, at in enumerate((0.5, 0.3, 0.7, 0.15, 0.85)):
    workdir = _copy(trained_workdir, tmp_path / str(i))
    _flip(workdir, 4, "generator", at=at)
    mngr = checkpoint.manager(workdir, read_only=True)
    args = ocp.args.Composite(generator=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
    try:
      out = mngr.restore(4, args=args)
    except ValueError:  # a compressed chunk's decompressor noticed
      continue
    assert digests.mismatches(out["generator"], out["meta"]["digests"]["generator"])
    silent += 1
  assert silent >= 1


def test_flipped_generator_bytes_are_named_and_the_previous_step_is_used(trained_workdir, tiny_data, tmp_path, caplog):
  workdir = _copy(trained_workdir, tmp_path)
  _, intact, _, _ = checkpoint.restore_generator(workdir, 2)
  _flip(workdir, 4, "generator")
  caplog.set_level(logging.WARNING)
  _, variables, _, step = checkpoint.restore_generator(workdir)
  assert step == 2
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(intact), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  [warning] = [w for w in _warnings(caplog) if "step 4" in w]
  assert "is damaged" in warning and "generator/" in warning and warning.endswith("using step 2")
  with pytest.raises(checkpoint.CheckpointError, match=r"--step 4: checkpoint step 4 .* damaged") as e:
    checkpoint.restore_generator(workdir, 4)
  assert "\n" not in str(e.value)


def test_sample_names_the_damaged_step_and_uses_the_previous_one(trained_workdir, tiny_data, tmp_path, caplog):
  workdir = _copy(trained_workdir, tmp_path)
  _flip(workdir, 4, "generator")
  caplog.set_level(logging.WARNING)
  argv = ["--workdir", workdir, "--data", tiny_data, "--num", "2"]
  assert sample.main([*argv, "--output", str(tmp_path / "newest.png")]) == 0
  named = [w for w in _warnings(caplog) if "step 4" in w]
  assert len(named) == 1 and "damaged" in named[0] and named[0].endswith("using step 2"), named
  assert sample.main([*argv, "--output", str(tmp_path / "step2.png"), "--step", "2"]) == 0
  assert (tmp_path / "newest.png").read_bytes() == (tmp_path / "step2.png").read_bytes()


def test_evaluate_restores_the_newest_intact_discriminator(trained_workdir, tmp_path, caplog):
  workdir = _copy(trained_workdir, tmp_path)
  _flip(workdir, 4, "rest", every=1024)  # D's arrays are a small part of rest/ (the Adam states are most of it)
  caplog.set_level(logging.WARNING)
  _, _, _, step = checkpoint.restore_discriminator(workdir)
  assert step == 2 and any("checkpoint step 4" in w and w.endswith("using step 2") for w in _warnings(caplog))


def test_a_step_deleted_while_it_is_read_falls_back_to_the_next_newest(trained_workdir, tmp_path, monkeypatch, caplog):
  """A training run rotating its checkpoints (max_to_keep) deletes the step a reader chose, during the restore."""
  workdir = _copy(trained_workdir, tmp_path)
  original = ocp.CheckpointManager.restore

  def deleted_under_us(self, step, *args, **kwargs):
    path = os.path.join(workdir, "checkpoints", str(step))
    if step == 4 and os.path.isdir(path):
      shutil.rmtree(path)
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", deleted_under_us)
  caplog.set_level(logging.WARNING)
  _, _, _, step = checkpoint.restore_generator(workdir)
  assert step == 2
  assert any("step 4" in w and "deleted while it was read" in w for w in _warnings(caplog))


@pytest.mark.slow
def test_resume_passes_over_a_damaged_step_and_sets_it_aside(trained_workdir, tiny_data, tmp_path, caplog):
  workdir = _copy(trained_workdir, tmp_path)
  _flip(workdir, 4, "generator")
  caplog.set_level(logging.WARNING)
  summary = train.train_and_evaluate(tiny_config(tiny_data, eval_every_steps=0), workdir)
  assert summary["step"] == 4 and summary["last_saved"] == 4
  assert any("step 4" in w and "damaged" in w and "using step 2" in w for w in _warnings(caplog))
  assert os.path.isdir(os.path.join(workdir, checkpoint.DAMAGED_DIR, "4"))
  caplog.clear()
  _, _, _, step = checkpoint.restore_generator(workdir)  # the new step 4, written from the intact step 2
  assert step == 4 and not _warnings(caplog)


@pytest.mark.slow
def test_a_failed_async_save_stops_the_run_in_one_line_and_keeps_the_last_good_step(tiny_data, tmp_path, monkeypatch):
  """Disk full while step 2 is written in the background (a monkeypatched failure of Orbax's commit)."""
  from orbax.checkpoint._src.path import atomicity

  workdir = str(tmp_path / "work")
  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def disk_full(self, *args, **kwargs):
    if "/2.orbax-checkpoint-tmp" in str(self._tmp_path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._tmp_path))
    return await original(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
  config = tiny_config(tiny_data, checkpoint_every_steps=1, eval_every_steps=0, num_train_steps=4)
  with pytest.raises(save_failures.CheckpointSaveError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert "\n" not in message and "saving checkpoint step 2 failed: the disk is full" in message
  assert os.path.join(workdir, "checkpoints", "2") in message and "last good checkpoint is step 1" in message
  assert checkpoint.saved_steps(os.path.join(workdir, "checkpoints")) == [1]  # stopped: no step 3 or 4
  monkeypatch.undo()  # space again: the same command resumes from step 1
  assert train.train_and_evaluate(config, workdir)["step"] == 4


@pytest.mark.slow
def test_cli_real_write_failure_is_one_line(tiny_data, tmp_path):
  """A real failing write: the file size limit (RLIMIT_FSIZE, EFBIG) below the size of a checkpoint file."""
  import resource

  def limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

  workdir = str(tmp_path / "work")
  cmd = [sys.executable, "-m", "keypatch_jax.main", "--config", "configs/tiny.py", "--workdir", workdir]
  cmd += [f"--config.data_dir={tiny_data}", "--config.checkpoint_every_steps=1", "--config.eval_every_steps=0"]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR="")  # no cache files to hit the limit first
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout(300), preexec_fn=limit, env=env)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
    f"keypatch_jax.main: error: saving checkpoint step 1 failed: a file exceeds the allowed size "
    f"('{workdir}/checkpoints/1'); the run stopped and none was saved (raise the file size limit, then rerun the "
    "same command to resume)"
  ], out.stderr[-3000:]


def test_orphaned_failed_write_task_stays_off_the_console_after_the_run(caplog):
  """asyncio logs a failed write's never-retrieved task when it is collected, which can be after `train` returned
  (CI saw it once): that record is dropped for the rest of the process, any other task error is still logged."""
  import asyncio
  import gc

  save_failures.quiet_orphaned_write_tasks()

  async def fail(error):
    raise error

  def orphan(error):
    loop = asyncio.new_event_loop()
    try:
      task = loop.create_task(fail(error))
      loop.run_until_complete(asyncio.sleep(0.01))
      assert task.done()
    finally:
      loop.close()
    del task
    gc.collect()

  with caplog.at_level(logging.ERROR, logger="asyncio"):
    orphan(OSError(errno.EFBIG, "File too large", "/w/checkpoints/1/d/x"))
    assert not [r for r in caplog.records if r.name == "asyncio"]
    orphan(RuntimeError("some other bug"))
  logged = [r for r in caplog.records if r.name == "asyncio"]
  assert len(logged) == 1 and "some other bug" in str(logged[0].exc_info[1])


def test_out_of_device_memory_names_the_batch_size(tiny_data, tmp_path, monkeypatch):
  """XLA's RESOURCE_EXHAUSTED from the step (raised by a stand-in for the compiled step, not a real OOM)."""

  def exhausted(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 34359738368 bytes.\nBufferAssignment OOM Debugging."
    )

  monkeypatch.setattr(train, "parallelize", lambda fn, parallel: exhausted)
  with pytest.raises(train.OutOfMemoryError) as e:
    train.train_and_evaluate(tiny_config(tiny_data, eval_every_steps=0), str(tmp_path / "work"))
  message = str(e.value)
  assert "\n" not in message and "at step 1" in message
  assert f"--config.batch_size=8 is {8 // jax.device_count()} images per device on {jax.device_count()}" in message
  assert "allocate 34359738368 bytes" in message and "lower --config.batch_size (e.g. 4)" in message
