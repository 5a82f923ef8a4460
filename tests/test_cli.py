"""The one error path of every command (docs/design.md §8): user errors are one line, bugs keep their traceback."""

from __future__ import annotations

import configparser
import importlib
import json
import os
import subprocess
import sys

import pytest
from conftest import timeout

from keypatch_jax import checkpoint, cli, config_args, dataset_meta, errors, features, patches, train, validation
from preprocessing import sources, writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("jax", "tensorflow", "flax", "orbax")


def _raise(error):
  def body(argv):
    raise error

  return body


@pytest.mark.parametrize(
  "error, status",
  [
    (errors.UserError("bad  input\n  here"), 1),
    (validation.ConfigError("bad config: batch_size must be > 0"), 1),
    (features.DatasetFormatError("no dataset_info.json"), 1),
    (dataset_meta.DataConfigError("image_size differs"), 1),
    (checkpoint.CheckpointError("no checkpoint"), 1),
    (patches.PatchError("no image files"), 1),
    (train.NonFiniteLossError("non-finite loss at step 2"), 1),
    (errors.UsageError("--num 0: must be >= 1"), 2),
    (sources.SourceError("--source x: no such directory"), 2),
    (writer.OutputError("--output y: made with other options"), 2),
  ],
)
def test_user_errors_are_one_line_with_their_status(capsys, error, status):
  if status == 2:  # a bad option ends the command as argparse's own errors do
    with pytest.raises(SystemExit) as e:
      cli.run_command("prog", _raise(error), [])
    assert e.value.code == status
  else:
    assert cli.run_command("prog", _raise(error), []) == status
  err = capsys.readouterr().err.splitlines()
  assert err == [f"prog: error: {' '.join(str(error).split())}"]


@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("a bug"), FloatingPointError("a bug")])
def test_other_exceptions_keep_their_traceback(capsys, error):
  """A ValueError is not a user error: it propagates (the demo used to print any ValueError as one line)."""
  with pytest.raises(type(error)):
    cli.run_command("prog", _raise(error), [])
  assert capsys.readouterr().err == ""


def test_user_error_is_not_a_value_error():
  assert not issubclass(errors.UserError, ValueError)


def test_command_entry_points(capsys):
  main, run = cli.command("prog", lambda argv: len(argv))
  assert main(["a", "b"]) == 2
  with pytest.raises(SystemExit) as e:
    cli.ArgumentParser(prog="prog").parse_args(["--nope"])
  assert e.value.code == 2
  assert capsys.readouterr().err.splitlines() == ["prog: error: unrecognized arguments: --nope"]


# Runs a command's entry point in a fresh interpreter, then reports its exit code and which heavy
# libraries it imported on the last stdout line.
_PROBE = f"""
import json, sys
module, function, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
import importlib
entry = getattr(importlib.import_module(module), function)
try:
  code = entry(argv) if function == "main" else entry([module, *argv])
except SystemExit as e:
  code = e.code
heavy = sorted(m for m in {HEAVY} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


def _run(module: str, function: str, *argv: str) -> tuple[dict, list[str], list[str]]:
  """(exit code and heavy imports, stdout lines before the report, stderr lines) of one command."""
  proc = subprocess.run(
    [sys.executable, "-c", _PROBE, module, function, *argv],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout(60),
    env=dict(os.environ, PYTHONPATH=REPO),
  )
  out = proc.stdout.strip().splitlines()
  return json.loads(out[-1]), out[:-1], proc.stderr.strip().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize(
  "args, expected",
  [
    (
      ["--config", "configs/celba.py"],
      "--config configs/celba.py: no such file (did you mean configs/paper.py:celeba?)",
    ),
    (
      ["--config=configs/paper.py:celba"],
      "--config configs/paper.py:celba: configs/paper.py has no config 'celba' (did you mean configs/paper.py:celeba?)",
    ),
    (
      ["--config", "configs/tiny.py", "--config.batch_sise=16"],
      "--config.batch_sise: the config of configs/tiny.py has no field 'batch_sise' "
      "(did you mean --config.batch_size?)",
    ),
    (
      ["--config=configs/tiny.py", "--config.model.conv_dm", "4"],
      "--config.model.conv_dm: config.model has no field 'conv_dm' (did you mean --config.model.conv_dim?)",
    ),
  ],
)
def test_config_typos_are_one_line_before_any_heavy_import(tmp_path, args, expected):
  report, out, err = _run("keypatch_jax.main", "run", *args, "--workdir", str(tmp_path / "w"))
  assert report == {"code": 2, "heavy": []}, (report, err)
  assert err == [f"keypatch_jax.main: error: {expected}"]
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_train_help_lists_flags_and_configs_and_exits_0():
  report, out, err = _run("keypatch_jax.main", "run", "--help")
  assert report == {"code": 0, "heavy": []}, (report, err)
  text = "\n".join(out)
  for needle in ("--config PATH", "--workdir DIR", "--config.FIELD=VALUE", "--verbosity", "configs/paper.py:celeba"):
    assert needle in text, needle


@pytest.mark.slow
@pytest.mark.parametrize(
  "module",
  [
    "keypatch_jax.sample",
    "keypatch_jax.evaluate",
    "keypatch_jax.probe",
    "keypatch_jax.demo",
    "keypatch_jax.serve",
    "preprocessing.__main__",
  ],
)
def test_help_answers_without_importing_jax_or_tensorflow(module):
  report, out, err = _run(module, "main", "--help")
  assert report == {"code": 0, "heavy": []}, (report, err)
  assert "--verbosity" in "\n".join(out) and "(default: " in "\n".join(out)


def test_config_args_lists_every_shipped_config():
  listed = config_args.available_configs()
  assert "configs/paper.py:celeba" in listed and "configs/small.py:tiny" in listed and "configs/tiny.py" in listed
  for spec in listed:  # each builds, as absl's config_flags would
    assert config_args.problem(["--config", spec]) is None, spec


def test_every_command_has_a_console_script():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO, "setup.cfg"))
  scripts = dict(line.split(" = ") for line in parser["options.entry_points"]["console_scripts"].strip().splitlines())
  for name in ("preprocess", "train", "sample", "evaluate", "probe", "demo"):
    module, function = scripts[f"keypatch-{name}"].split(":")
    assert callable(getattr(importlib.import_module(module), function)), name
