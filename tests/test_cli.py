"""The one error path of every command (docs/design.md §8): user errors are one line, bugs keep their traceback."""

from __future__ import annotations

import pytest

from keypatch_jax import checkpoint, cli, errors, features, input_pipeline, patches, train, validation
from preprocessing import sources, writer


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
    (input_pipeline.DataConfigError("image_size differs"), 1),
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
