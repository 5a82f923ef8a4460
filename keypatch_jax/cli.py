"""What every command shares: one-line user errors and quiet console logs (docs/design.md §8).

Every command (`main`, `sample`, `evaluate`, `probe`, `demo`,
`preprocessing`) runs its body through `run_command`: a `errors.UserError`
becomes `prog: error: message` on stderr and exit status 1, or 2 for a bad
option (as argparse's own errors); anything else raises with its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from keypatch_jax import errors


class ArgumentParser(argparse.ArgumentParser):
  """argparse with one-line errors: `prog: error: message`, exit status 2 (no usage block)."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {message}\n")


def run_command(prog: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
  """Runs `body(argv)` and returns its exit status.

  A `errors.UserError` is printed as `prog: error: message` (one line, white
  space folded) on stderr. A `errors.UsageError` (a bad option) then ends the
  command as argparse's own errors do, `SystemExit(2)`; any other user error
  returns 1. Any other exception propagates with its traceback.
  """
  try:
    return body(argv)
  except errors.UserError as e:
    message = " ".join(str(e).split())
    print(f"{prog}: error: {message}", file=sys.stderr)
    if isinstance(e, errors.UsageError):
      raise SystemExit(e.exit_status) from None
    return e.exit_status


def command(prog: str, body: Callable[[Sequence[str] | None], int], *, quiet: bool = True) -> tuple[Callable, Callable]:
  """The two entry points of a command whose work is `body(argv) -> exit status`.

  Returns:
    (main, run): `main(argv=None) -> int` runs `body` through `run_command`
    (tests and other commands call it); `run()` is the console script:
    `quiet_logs()` (unless `quiet` is False), then `sys.exit(main())`.
  """

  def main(argv: Sequence[str] | None = None) -> int:
    return run_command(prog, body, argv)

  def run() -> NoReturn:
    if quiet:
      quiet_logs()
    sys.exit(main())

  main.__doc__ = f"`{prog}` on `argv`; returns the exit status (a user error: one line on stderr; see run_command)."
  run.__doc__ = f"Console-script entry point of `{prog}`."
  return main, run


def quiet_logs() -> None:
  """For console runs: keeps TensorFlow's C++ banner and Orbax's absl warnings off stderr.

  Call before TensorFlow is imported. oneDNN is off for TensorFlow only (it
  just crops and resizes patches on the host here); JAX is unaffected.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  from absl import logging

  logging.set_verbosity(logging.ERROR)


def report_json(result: dict[str, Any], output: str | None) -> None:
  """Writes `result` to `output` (when given) and prints it as the last stdout line."""
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
    print(f"wrote {output}")
  print(json.dumps(result, sort_keys=True))
