"""One training run per workdir (docs/design.md §7.4); numeric config values checked before anything is written."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest
from conftest import timeout, tiny_config

from keypatch_jax import train, validation, workdir_lock

HOLDER = """
import sys
from keypatch_jax import workdir_lock
lock = workdir_lock.WorkdirLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


@pytest.fixture
def held(tmp_path):
  """A workdir whose lock a live subprocess holds: (workdir, that process)."""
  workdir = str(tmp_path / "work")
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  proc = subprocess.Popen(
    [sys.executable, "-c", HOLDER, workdir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
  )
  assert proc.stdout.readline().strip() == "locked"
  yield workdir, proc
  proc.communicate("", timeout=timeout(60))


def _ended_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_second_run_refuses_naming_the_first_before_writing(held, tiny_data):
  workdir, proc = held
  before = sorted(os.listdir(workdir))
  with pytest.raises(workdir_lock.WorkdirBusyError) as e:
    train.train_and_evaluate(tiny_config(tiny_data), workdir)
  message = str(e.value)
  assert "\n" not in message and workdir in message
  assert f"pid {proc.pid} on host {socket.gethostname()} since 20" in message
  assert sorted(os.listdir(workdir)) == before == [workdir_lock.LOCK_FILE]


def test_the_lock_is_free_again_once_its_holder_ends(held):
  workdir, proc = held
  proc.communicate("", timeout=timeout(60))  # the holder releases and exits
  with workdir_lock.WorkdirLock(workdir) as lock:
    holder = json.loads(open(lock.path).read())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  assert open(lock.path).read() == ""  # released: empty, so nothing is "taken over" next time


def test_a_lock_left_by_an_ended_process_is_taken_over_with_a_warning(tmp_path, caplog):
  workdir = str(tmp_path / "work")
  os.makedirs(workdir)
  pid = _ended_pid()  # a process that died holding the lock: its file still names it, nobody holds the flock
  left = {**workdir_lock.this_process(), "pid": pid, "start_ticks": None}
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), "w") as f:
    json.dump(left, f)
  caplog.set_level(logging.WARNING)
  with workdir_lock.WorkdirLock(workdir):
    pass
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and f"pid {pid} on host {socket.gethostname()}" in warnings[0], warnings


def test_object_store_lock_refuses_a_live_holder_and_takes_over_an_ended_one(monkeypatch, caplog):
  """gs:// workdirs: the JSON file alone (TensorFlow's ram:// file system stands in for the object store)."""
  import tensorflow as tf

  monkeypatch.setattr(workdir_lock, "SETTLE_S", 0.0)
  workdir = f"ram://lock-test-{os.getpid()}/work"
  first = workdir_lock.WorkdirLock(workdir)
  first.acquire()
  with pytest.raises(workdir_lock.WorkdirBusyError, match=rf"pid {os.getpid()} .*delete {workdir}/training.lock"):
    workdir_lock.WorkdirLock(workdir).acquire()
  first.release()
  assert not tf.io.gfile.exists(first.path)
  for host, pid, taken in ((socket.gethostname(), _ended_pid(), True), ("another-host", 1, False)):
    with tf.io.gfile.GFile(first.path, "w") as f:
      f.write(json.dumps({"host": host, "pid": pid, "since": "2026-01-01T00:00:00Z"}))
    caplog.clear()
    caplog.set_level(logging.WARNING)
    lock = workdir_lock.WorkdirLock(workdir)
    if taken:
      lock.acquire()
      assert any(f"pid {pid}" in r.getMessage() for r in caplog.records)
      lock.release()
    else:  # another host's process cannot be checked: refused, with how to clear it
      with pytest.raises(workdir_lock.WorkdirBusyError, match="another-host.*delete"):
        lock.acquire()


@pytest.mark.slow
def test_cli_second_run_is_one_line_naming_the_first(held, tiny_data):
  workdir, proc = held
  cmd = [sys.executable, "-m", "keypatch_jax.main", "--config", "configs/tiny.py", "--workdir", workdir]
  out = subprocess.run(
    [*cmd, f"--config.data_dir={tiny_data}"], capture_output=True, text=True, timeout=timeout(300), check=False
  )
  assert out.returncode == 1 and "Traceback" not in out.stderr
  lines = [line for line in out.stderr.splitlines() if line.startswith("keypatch_jax.main: error:")]
  assert len(lines) == 1 and f"pid {proc.pid}" in lines[0] and "in use by another training run" in lines[0]


# ---------------------------------------------------------------- numeric config ranges


@pytest.mark.parametrize(
  "field, value",
  [
    ("max_to_keep", 0),
    ("learning_rate", -1.0),
    ("learning_rate", float("nan")),
    ("batch_size", 0),
    ("num_epochs", -1),
    ("num_train_steps", 0),
    ("loss.lambda_scale", 0.0),
    ("loss.lambda_start", float("inf")),
    ("ema_decay", 1.0),
    ("b2", 1.5),
    ("checkpoint_every_steps", 0),
    ("model.z_dim", 0),
  ],
)
def test_numeric_field_out_of_range_is_one_line_before_anything_is_written(tiny_data, tmp_path, field, value):
  workdir = tmp_path / "work"
  with pytest.raises(validation.ConfigError) as e:
    train.train_and_evaluate(tiny_config(tiny_data, **{field: value}), str(workdir))
  assert f"{field}={value!r} must be" in str(e.value) and "\n" not in str(e.value)
  assert not workdir.exists()


def test_every_numeric_field_has_a_range():
  from configs import default

  numeric = {k for k, v in validation.flatten(default.get_config()).items() if type(v) in (int, float)}
  assert numeric == {field for field, _, _ in validation.RANGES}
  for path, ok, _ in validation.RANGES:  # the defaults pass their own checks
    assert ok(validation.flatten(default.get_config())[path]), path
