"""What every command shares: one-line user errors, helpful `--help`, quiet console logs (docs/design.md §8).

Every command (`main`, `sample`, `evaluate`, `probe`, `demo`,
`preprocessing`) runs its body through `run_command`: a `errors.UserError`
becomes `prog: error: message` on stderr and exit status 1, or 2 for a bad
option (as argparse's own errors); anything else raises with its traceback.

This module imports nothing heavy, so a command that parses its arguments
with `ArgumentParser` before importing JAX or TensorFlow answers `--help` and
argument mistakes at once. Every parser shows its defaults and takes
`--verbosity` (absl's levels): by default (-1) the console shows the
command's own lines and warnings, and from the libraries under it (Orbax,
JAX, TensorFlow, XLA) only errors; 0 lets their INFO logs through.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from keypatch_jax import errors

DEFAULT_VERBOSITY = -1  # absl's WARNING
# Libraries whose log records below ERROR stay off the console at the default verbosity.
QUIET_LIBRARIES = ("orbax", "jax", "jaxlib", "flax", "clu", "tensorflow", "tensorflow_datasets", "etils")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
  """Shows each option's default (unless None or False) and keeps the description's and epilog's layout."""

  def _get_help_string(self, action: argparse.Action) -> str:
    if action.default in (None, False) or "%(default)" in (action.help or ""):
      return action.help or ""
    return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with one-line errors (`prog: error: message`, exit status 2, no usage block), defaults shown
  in `--help`, and `--verbosity`."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", HelpFormatter)
    super().__init__(*args, **kwargs)
    self.add_argument(
      "--verbosity",
      type=int,
      default=DEFAULT_VERBOSITY,
      help="log level as absl counts it: -1 this command's lines and warnings (the libraries' only when errors), "
      "0 also the libraries' INFO logs, 1 debug",
    )

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {message}\n")


def run_parser(prog: str, doc: str, *, data_help: str, data_required: bool, generation: bool) -> ArgumentParser:
  """A parser with the options of a command on a trained run: --workdir, --data, --step, --raw.

  With `generation` also --seed, --noise (its help names `--mode noisy` / the
  noisy_* metrics) and --batch-stats. `data_required` False: the command has
  another source (sample's --patches). The module docstring `doc` is the
  description.
  """
  p = ArgumentParser(prog=prog, description=doc)
  p.add_argument("--workdir", required=True, help="training workdir (config.json + checkpoints/)")
  p.add_argument("--data", required=data_required, default=None, help=data_help)
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--raw", action="store_true", help="raw generator params instead of the EMA")
  if generation:
    p.add_argument("--seed", type=int, default=0, help="seed of z, random boxes and noise")
    p.add_argument("--noise", type=float, default=0.2, help="Gaussian noise sigma of the noisy patches")
    p.add_argument("--batch-stats", action="store_true", help="normalise with batch statistics (official code)")
  return p


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
    `quiet_logs()` at the command line's `--verbosity` (unless `quiet` is
    False), then `sys.exit(main())`.
  """

  def main(argv: Sequence[str] | None = None) -> int:
    return run_command(prog, body, argv)

  def run() -> NoReturn:
    if quiet:
      quiet_logs(verbosity_of(sys.argv[1:]))
    sys.exit(main())

  main.__doc__ = f"`{prog}` on `argv`; returns the exit status (a user error: one line on stderr; see run_command)."
  run.__doc__ = f"Console-script entry point of `{prog}`."
  return main, run


def verbosity_of(argv: Sequence[str]) -> int | None:
  """The value of `--verbosity N` / `--verbosity=N` / `-v N` in `argv`, or None (absent or not an integer)."""
  args = list(argv)
  for i, arg in enumerate(args):
    value = None
    if arg.startswith("--verbosity="):
      value = arg.split("=", 1)[1]
    elif arg in ("--verbosity", "-v") and i + 1 < len(args):
      value = args[i + 1]
    if value is not None:
      try:
        return int(value)
      except ValueError:
        return None  # the parser reports it
  return None


class _LibraryFilter(logging.Filter):
  """Drops records below ERROR logged from a file of one of `QUIET_LIBRARIES` (they share absl's logger)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    parts = record.pathname.replace("\\", "/").split("/")
    return not any(lib in parts for lib in QUIET_LIBRARIES)


_FILTER = _LibraryFilter()


def quiet_logs(verbosity: int | None = None) -> None:
  """Applies the console policy of this module's docstring at `verbosity` (None: the default, -1).

  Call before TensorFlow or JAX load: TensorFlow reads its C++ log level from
  the environment then. oneDNN is off for TensorFlow only (it just crops and
  resizes patches on the host here); JAX is unaffected. XLA's "Very slow
  compile?" alarm cannot be turned off (jax-ml/jax#26098).
  """
  from absl import logging as absl_logging

  verbosity = DEFAULT_VERBOSITY if verbosity is None else verbosity
  loud = verbosity >= 0
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if loud else "3")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  absl_logging.set_verbosity(verbosity)
  for lib in QUIET_LIBRARIES:  # libraries that log through their own Python loggers
    logging.getLogger(lib).setLevel(logging.NOTSET if loud else logging.ERROR)
  absl = logging.getLogger("absl")  # libraries that log through absl (Orbax) share this logger
  if loud:
    absl.removeFilter(_FILTER)
  elif _FILTER not in absl.filters:
    absl.addFilter(_FILTER)


def report_json(result: dict[str, Any], output: str | None, descriptions: dict[str, str] | None = None) -> None:
  """Writes `result` to `output` (when given) and prints it as the last stdout line.

  With `descriptions` the file ends with a "descriptions" block (metric name
  -> what it means); the printed line stays the flat numbers.
  """
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    written = dict(sorted(result.items()))
    if descriptions is not None:
      written["descriptions"] = {k: descriptions[k] for k in sorted(descriptions)}
    with open(output, "w") as f:
      json.dump(written, f, indent=2)
    print(f"wrote {output}")
  print(json.dumps(result, sort_keys=True))
