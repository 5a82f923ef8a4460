"""The one base class of user errors (docs/design.md §8).

A `UserError` is bad input the user can fix: a config value, a flag, a data
or work directory. Its message is one line that names the file, flag or value
and says what to do. `cli.run_command` prints it as `prog: error: message`
and exits with `exit_status`; any other exception is a bug and keeps its
traceback. Each module raises its own subclass (e.g.
`features.DatasetFormatError`), so a caller can still tell them apart.
"""

from __future__ import annotations


class UserError(Exception):
  """Bad input the user can fix; printed as one line, exit status 1."""

  exit_status = 1


class UsageError(UserError):
  """A command-line option that cannot work; `SystemExit(2)`, as argparse's own errors."""

  exit_status = 2
