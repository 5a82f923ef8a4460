"""Failed checkpoint writes (docs/design.md §7.3): one line naming the step, path and cause, and the run stops.

A save runs in the background (Orbax's async checkpointing); its write error
surfaces on the next `check_saves`. `save_error` turns any error whose chain
holds a write failure into a `CheckpointSaveError` that also names the last
good step, which stays on disk; `WriteErrorLogFilter` keeps Orbax's own
traceback of the same failure off the console.
"""

from __future__ import annotations

import contextlib
import errno
import logging as logging_lib
import os

import orbax.checkpoint as ocp

from keypatch_jax import errors
from keypatch_jax.checkpoint import CHECKPOINT_DIR, newest_complete_step


class CheckpointSaveError(errors.UserError):
  """A checkpoint could not be written (disk full, no permission); the run stopped (one line)."""


# What a failed write says, and what to do about it (`save_error`).
_SAVE_CAUSES = (
  ((errno.ENOSPC, errno.EDQUOT), "No space left on device", "the disk is full", "free space"),
  ((errno.EACCES, errno.EPERM), "Permission denied", "permission denied", "fix the permissions"),
  ((errno.EROFS,), "Read-only file system", "the file system is read-only", "use a writable --workdir"),
  ((errno.EFBIG,), "File too large", "a file exceeds the allowed size", "raise the file size limit"),
)


def write_cause(error: BaseException) -> tuple[str, str, str | None] | None:
  """(cause, what to do, the path when known) of a write error, or None when `error` is none.

  A write error is an `OSError` in the exception's chain, or an error whose
  text carries the OS's message (TensorStore reports its writes so).
  """
  chain, e = [], error
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  os_error = next((e for e in chain if isinstance(e, OSError) and e.errno), None)
  path = getattr(os_error, "filename", None)
  text = " ".join(str(e) for e in chain)
  for codes, marker, cause, advice in _SAVE_CAUSES:
    if (os_error is not None and os_error.errno in codes) or marker in text:
      return cause, advice, path
  if os_error is None:
    return None
  return os_error.strerror or str(os_error), "fix it", path


def save_error(error: BaseException, step: int | None, workdir: str) -> CheckpointSaveError | None:
  """The one-line error for a checkpoint save of `step` that raised `error`, or None when it is no write error.

  It names the path, the cause, the last good step (still on disk: Orbax
  removes old steps only after a save has finished) and what to do.
  """
  found = write_cause(error)
  if found is None:
    return None
  cause, advice, path = found
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  path = path or (os.path.join(directory, str(step)) if step is not None else directory)
  last, _ = newest_complete_step(directory)
  kept = "none was saved" if last is None else f"the last good checkpoint is step {last}"
  return CheckpointSaveError(
    f"saving checkpoint step {step} failed: {cause} ({path!r}); the run stopped and {kept} "
    f"({advice}, then rerun the same command to resume)"
  )


@contextlib.contextmanager
def stop_on_write_error(workdir: str, step: int | None):
  """Turns a write error raised inside (a save of `step`, or waiting for one) into `save_error`'s one line."""
  try:
    yield
  except CheckpointSaveError:
    raise
  except Exception as e:
    failure = save_error(e, step, workdir)
    if failure is None:
      raise
    raise failure from None


def check_saves(mngr: ocp.CheckpointManager, workdir: str, step: int | None, *, wait: bool = False) -> None:
  """Surfaces a failed asynchronous save without waiting for one in progress (`wait`: wait for it).

  Orbax raises a background save's error from `wait_until_finished` (its
  `check_for_errors` is consumed by the save's own finalize thread), so this
  calls that once no save is in progress.

  Raises:
    CheckpointSaveError: the save of `step` (the last one started) failed to write.
  """
  with stop_on_write_error(workdir, step):
    if wait or not mngr.is_saving_in_progress():
      mngr.wait_until_finished()


class WriteErrorLogFilter(logging_lib.Filter):
  """Drops Orbax's (and asyncio's "Task exception was never retrieved") records with a traceback of a failed
  write: `save_error` reports it in one line. Set on the absl logger and the root logger's handlers."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    from_io = "orbax" in record.pathname or "asyncio" in record.pathname
    if not from_io or not record.exc_info or record.exc_info[1] is None:
      return True
    return write_cause(record.exc_info[1]) is None


_ORPHANED_TASKS = WriteErrorLogFilter()


def quiet_orphaned_write_tasks() -> None:
  """Keeps asyncio's "Task exception was never retrieved" for a failed write off the console for good.

  Orbax's write tasks that failed are garbage-collected whenever Python gets
  to them, often after the run has returned and its one-line error is out,
  so this filter on the "asyncio" logger stays for the rest of the process.
  It drops only records whose exception is a write failure (`write_cause`).
  """
  asyncio_logger = logging_lib.getLogger("asyncio")
  if _ORPHANED_TASKS not in asyncio_logger.filters:
    asyncio_logger.addFilter(_ORPHANED_TASKS)
