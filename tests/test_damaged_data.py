"""Damaged datasets on disk: missing, truncated and empty shards; an input that yields nothing or stalls.

Every dataset is made here (a small synthetic one in several shards). What
could hang runs on a daemon thread or in a subprocess, with a timeout.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import timeout, tiny_config

from keypatch_jax import checkpoint, dataset_meta, features, input_pipeline, train, validation
from preprocessing import __main__ as cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sharded_data(tmp_path_factory) -> str:
  """A 16x16 synthetic dataset in 4 train shards of 20 source images and one test shard."""
  out = str(tmp_path_factory.mktemp("sharded"))
  argv = ["--source", "synthetic", "--num-images", "96", "--image-size", "16", "--test-count", "16"]
  assert cli.main([*argv, "--shard-size", "20", "--workers", "1", "--quiet", "--output", out]) == 0
  return out


def _copy(data: str, dest: Path) -> tuple[str, dict, list[str]]:
  out = str(dest / "copy")
  shutil.copytree(data, out)
  info = json.loads(Path(out, features.INFO_FILE).read_text())
  return out, info, [os.path.join(out, n) for n in info["shards"]["train"]]


def _within(seconds: float, fn):
  """fn() on a daemon thread: its result or exception, or a failure if it does not end in time (a hang)."""
  box = {}

  def target():
    try:
      box["result"] = fn()
    except BaseException as e:  # noqa: BLE001 - handed back to the test
      box["error"] = e

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"still running after {seconds} s (a hang)"
  if "error" in box:
    raise box["error"]
  return box["result"]


def test_missing_and_truncated_shards_are_one_line_errors_naming_them(sharded_data, tmp_path):
  data, info, shards = _copy(sharded_data, tmp_path)
  assert len(shards) == 4
  originals = {p: Path(p).read_bytes() for p in shards}
  os.remove(shards[1])
  open(shards[2], "wb").close()  # truncated to 0 bytes
  config = tiny_config(data)
  workdir = tmp_path / "work"
  with pytest.raises(features.DatasetFormatError) as e:
    train.train_and_evaluate(config, str(workdir))
  message = str(e.value)
  assert "\n" not in message and message.startswith(shards[1]) and "missing" in message
  assert "python -m preprocessing" in message and shlex.quote(data) in message
  assert not workdir.exists()  # checked before anything is written
  shutil.copy(os.path.join(sharded_data, os.path.basename(shards[1])), shards[1])
  with pytest.raises(features.DatasetFormatError, match="0 bytes where") as e:
    train.train_and_evaluate(config, str(workdir))
  assert str(e.value).startswith(shards[2])
  # The quoted command rewrites what is missing or damaged, and only that.
  os.remove(shards[1])
  command = shlex.split(message[message.index("`") + 1 : message.rindex("`")])
  assert command[:3] == ["python", "-m", "preprocessing"] and cli.main(command[3:]) == 0
  assert {p: Path(p).read_bytes() for p in shards} == originals
  meta = dataset_meta.load_meta(data)
  dataset_meta.check_shards(meta, ("train", "test"))


@pytest.mark.slow
def test_every_train_shard_empty_is_a_one_line_error_not_a_hang(sharded_data, tmp_path):
  data, _, shards = _copy(sharded_data, tmp_path)
  for path in shards:
    open(path, "wb").close()
  proc = subprocess.run(
    [sys.executable, "-m", "keypatch_jax.main", "--config", str(REPO / "configs" / "tiny.py")]
    + ["--workdir", str(tmp_path / "work"), f"--config.data_dir={data}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout(240),
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
  )
  errors = [line for line in proc.stderr.splitlines() if line.startswith("keypatch_jax.main: error:")]
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
  assert shards[0] in errors[0] and "Traceback" not in proc.stderr


def test_input_that_yields_nothing_ends_with_an_error(sharded_data, tmp_path):
  """A dataset whose info does not record shard sizes (older writers) and whose shards are all empty."""
  data, info, shards = _copy(sharded_data, tmp_path)
  for path in shards:
    open(path, "wb").close()
  del info["shard_files"]
  Path(data, features.INFO_FILE).write_text(json.dumps(info))
  config = tiny_config(data)
  meta = dataset_meta.load_meta(data)
  with pytest.raises(features.DatasetFormatError, match=r"yielded 0 of the \d+ batches of epoch 0") as e:
    _within(120, lambda: next(input_pipeline.train_iterator(meta, config)))
  assert "python -m preprocessing" in str(e.value) and "\n" not in str(e.value)
  # Half the shards empty: the first epoch ends short and says so, instead of training on half the data.
  data2, _, shards2 = _copy(sharded_data, tmp_path / "half")
  for path in shards2[:2]:
    open(path, "wb").close()
  Path(data2, features.INFO_FILE).write_text(json.dumps(info))
  meta2 = dataset_meta.load_meta(data2)
  with pytest.raises(features.DatasetFormatError, match="batches of epoch 0"):
    _within(120, lambda: list(input_pipeline.train_iterator(meta2, tiny_config(data2))))


_STALLED = """
import sys, threading
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from keypatch_jax import input_pipeline, train

real = input_pipeline.train_iterator

def stalled(meta, config, start_step=0, **kwargs):
  it = real(meta, config, start_step, **kwargs)
  for _ in range(3):
    yield next(it)
  threading.Event().wait()  # the input never delivers again

real_parallelize = train.parallelize

def counting(fn, *args, **kwargs):
  step = real_parallelize(fn, *args, **kwargs)
  done = [0]

  def counted(*a):
    out = step(*a)
    done[0] += 1
    print("STEP", done[0], flush=True)
    return out

  return counted

input_pipeline.train_iterator = stalled
train.parallelize = counting
config = tiny_config({data!r}, num_train_steps=1000, checkpoint_every_steps=1000, log_every_steps=1)
summary = train.train_and_evaluate(config, {workdir!r})
print("SUMMARY", summary["step"], summary["last_saved"], summary["preempted"], flush=True)
"""


@pytest.mark.slow
def test_sigterm_while_waiting_for_input_saves_and_exits(sharded_data, tmp_path):
  workdir = str(tmp_path / "work")
  script = tmp_path / "stalled.py"
  script.write_text(_STALLED.format(tests=str(REPO / "tests"), data=sharded_data, workdir=workdir))
  proc = subprocess.Popen(
    [sys.executable, str(script)],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO)),
  )
  try:
    while proc.stdout.readline().strip() != "STEP 3":  # the input delivers 3 batches, then stalls
      assert proc.poll() is None, proc.stderr.read()[-2000:]
    time.sleep(5)  # the loop finishes step 3, then waits for the next batch
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout(120))
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, err[-2000:]
  step, saved, preempted = out.split("SUMMARY")[1].split()
  assert preempted == "True" and step == saved and int(step) >= 1
  assert checkpoint.manager(workdir, read_only=True).all_steps() == [int(step)]
  assert "SIGTERM while waiting for input" in err


@pytest.mark.slow
def test_unclosed_train_iterator_exits_quietly(sharded_data, tmp_path):
  """An iterator left open is closed at interpreter exit without touching module globals."""
  script = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {str(REPO / "tests")!r})
    from conftest import tiny_config
    from keypatch_jax import dataset_meta, input_pipeline
    config = tiny_config({sharded_data!r})
    it = input_pipeline.train_iterator(dataset_meta.load_meta(config.data_dir), config)
    next(it)
    print("OK")
  """)
  proc = subprocess.run(
    [sys.executable, "-c", script],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout(180),
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO)),
  )
  assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-2000:]
  assert "Exception ignored" not in proc.stderr and "Error" not in proc.stderr, proc.stderr[-2000:]


def test_no_test_split_skips_the_final_evaluation(tmp_path):
  """A dataset preprocessed with --test-count 0 passes the shard checks; the final IoU is NaN, not an error
  raised after the whole training run."""
  out = str(tmp_path / "data")
  argv = ["--source", "synthetic", "--num-images", "40", "--image-size", "16", "--test-count", "0"]
  assert cli.main([*argv, "--workers", "1", "--quiet", "--output", out]) == 0
  meta = dataset_meta.load_meta(out)
  dataset_meta.check_shards(meta, ("train", "test"))
  iou = train.mask_iou_of_test_split(None, None, meta, tiny_config(out))
  assert all(v != v for v in iou.values())  # NaN


# ---------------------------------------------------------------- other user files: patches, labels, config.json


def test_patch_folder_takes_any_decodable_file_and_names_a_bad_one(tmp_path):
  from PIL import Image

  from keypatch_jax import patches

  folder = tmp_path / "mine"
  folder.mkdir()
  rgb = np.zeros((12, 9, 3), np.uint8)
  rgb[..., 0] = 255  # red
  Image.fromarray(rgb).save(folder / "a.gif")
  Image.fromarray(rgb).save(folder / "b.tga")
  with open(os.path.join(os.fsencode(folder), b"caf\xe9.tif"), "wb") as f:
    Image.fromarray(rgb).save(f, format="TIFF")
  (folder / "sub").mkdir()  # not a patch: not read
  sets = patches.load_patch_folder(str(folder), 8)
  assert sets.shape == (1, 3, 8, 8, 3)
  np.testing.assert_allclose(sets[..., 0], 1.0, atol=1e-6)  # decoded as RGB, red stays red
  np.testing.assert_allclose(sets[..., 1:], -1.0, atol=1e-6)
  os.mkfifo(folder / "pipe.png")  # named, not waited on
  with pytest.raises(patches.PatchError, match=r"pipe\.png.*not_a_file"):
    _within(60, lambda: patches.load_patch_folder(str(folder), 8))


def test_labels_file_is_read_as_bytes_with_header_bom_and_crlf(tmp_path):
  from keypatch_jax import probe

  path = tmp_path / "labels.csv"
  path.write_bytes(b'\xef\xbb\xbfid,label\r\ncaf\xe9.png,1\r\n"a,b.png",2\r\n\r\nplain.png,0\r\n')
  assert probe.read_labels(str(path)) == {b"caf\xe9.png": 1, b"a,b.png": 2, b"plain.png": 0}
  path.write_bytes(b"a.png,1\na.png,2\n")
  with pytest.raises(dataset_meta.DataConfigError, match=r"labels.csv:2: id b'a.png' has two labels"):
    probe.read_labels(str(path))
  path.write_bytes(b"a.png,1\nb.png,cat\n")
  with pytest.raises(dataset_meta.DataConfigError, match=r"labels.csv:2: expected `id,label`"):
    probe.read_labels(str(path))


def test_config_json_is_written_atomically_and_a_damaged_one_is_one_line(tmp_path):
  from configs import tiny

  workdir = str(tmp_path / "work")
  checkpoint.write_config(workdir, tiny.get_config())
  assert os.listdir(workdir) == [checkpoint.CONFIG_FILE]  # no temp file left behind
  assert checkpoint.read_config(workdir).image_size == 16
  path = Path(workdir, checkpoint.CONFIG_FILE)
  path.write_text(path.read_text()[:50])  # cut short, as a crash mid-write of a non-atomic writer would
  with pytest.raises(checkpoint.CheckpointError, match="is not a training config") as e:
    checkpoint.read_config(workdir)
  assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize(
  "name, text, expected",
  [
    ("missing.py", None, "no such file"),
    ("syntax.py", "def get_config():\n  return (\n", "SyntaxError: '(' was never closed"),
    ("raises.py", "def get_config():\n  raise KeyError('data_dir')\n", "KeyError: 'data_dir'"),
  ],
)
def test_config_file_that_does_not_load_is_one_line(tmp_path, name, text, expected):
  path = tmp_path / name
  if text is not None:
    path.write_text(text)
  proc = subprocess.run(
    [sys.executable, "-m", "keypatch_jax.main", "--config", str(path), "--workdir", str(tmp_path / "work")],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout(180),
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
  )
  errors = [line for line in proc.stderr.splitlines() if line.startswith("keypatch_jax.main: error:")]
  assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert f"--config {path}" in errors[0] and expected in errors[0], errors[0]
  assert not (tmp_path / "work").exists()


def test_config_without_the_default_fields_is_one_line(tmp_path):
  import ml_collections

  config = ml_collections.ConfigDict({"data_dir": "x", "model": {"conv_dim": 8}})
  with pytest.raises(validation.ConfigError, match=r"it has no b1, b2, batch_size.*configs/default") as e:
    train.train_and_evaluate(config, str(tmp_path / "work"))
  assert "\n" not in str(e.value) and not (tmp_path / "work").exists()
