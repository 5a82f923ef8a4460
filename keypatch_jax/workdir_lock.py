"""One training run per workdir: `WORKDIR/training.lock` (docs/design.md §7.4).

The file holds JSON naming the run that holds it: host, pid, since when (UTC)
and its command line. A second run on the same workdir refuses in one line
naming the first (`WorkdirBusyError`), before it writes anything.

Local and network (NFS) workdirs: the run also holds `fcntl.flock` on the
file. The kernel drops that lock when the process ends, however it ends, so
a file that names a holder while nobody holds the lock was left by a process
that is gone: the next run takes it over with a warning naming it.

Object stores (`gs://...`), and file systems where `flock` fails: the JSON
file alone, through `tf.io.gfile`. A run that finds it refuses, unless it
names this host and a process that is gone (taken over with a warning). After
writing its own, a run waits `SETTLE_S` and reads the file back, so of two
runs starting together the one overwritten refuses. This is advisory: two
runs can both pass only if one stalls for more than `SETTLE_S` between
finding no lock and writing its own, and a lock left by a process on another
host is never taken over (the message says to delete the file).

Several hosts: process 0 alone takes the lock; every process learns the
outcome (`hold`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import time
from typing import Any

from absl import logging

from keypatch_jax import errors

LOCK_FILE = "training.lock"
SETTLE_S = 2.0  # object stores: the wait between writing the lock and reading it back


class WorkdirBusyError(errors.UserError):
  """Another training run holds the workdir (one line naming it)."""


def _boot_id() -> str | None:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _start_ticks(pid: int) -> int | None:
  """The start time of process `pid` in clock ticks since boot (Linux), or None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def this_process() -> dict[str, Any]:
  """The lock's content for this process."""
  now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
  pid = os.getpid()
  return {
    "host": socket.gethostname(),
    "pid": pid,
    "since": now.isoformat().replace("+00:00", "Z"),
    "command": " ".join(sys.argv)[:300],
    "boot_id": _boot_id(),
    "start_ticks": _start_ticks(pid),
  }


def describe(holder: dict[str, Any] | None) -> str:
  """ "pid 123 on host h since 2026-01-02T03:04:05Z (python -m keypatch_jax.main ...)"."""
  if not holder:
    return "a run that is starting"
  command = f" ({holder['command']})" if holder.get("command") else ""
  return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}{command}"


def is_gone(holder: dict[str, Any]) -> bool:
  """Whether `holder` names a process of this host (and this boot) that has ended; False when unknown."""
  if holder.get("host") != socket.gethostname():
    return False
  if holder.get("boot_id") and _boot_id() and holder["boot_id"] != _boot_id():
    return True  # the machine rebooted since
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    pass  # alive, another user's
  started = _start_ticks(pid)
  return holder.get("start_ticks") is not None and started is not None and started != holder["start_ticks"]


def _parse(text: str) -> dict[str, Any] | None:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


class WorkdirLock:
  """The lock of one workdir (created if needed). `acquire()` ... `release()`, or `with WorkdirLock(w):`."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None
    self._mine: dict[str, Any] | None = None

  def _busy(self, holder: dict[str, Any] | None, remote: bool) -> WorkdirBusyError:
    hint = f"; if that run has ended, delete {self.path}" if remote else ""
    return WorkdirBusyError(
      f"--workdir {self.workdir} is in use by another training run: {describe(holder)}; wait for it to end "
      f"or use another --workdir{hint}"
    )

  def _took_over(self, holder: dict[str, Any]) -> None:
    logging.warning("taking over the lock of %s: %s left it and has ended", self.path, describe(holder))

  def acquire(self) -> None:
    """Takes the lock or raises `WorkdirBusyError`; a lock left by a process that has ended is taken over."""
    import tensorflow as tf

    tf.io.gfile.makedirs(self.workdir)
    if "://" in self.workdir or not self._acquire_flock():
      self._acquire_by_content()

  def _acquire_flock(self) -> bool:
    """flock on the file (True), or False where the file system cannot lock."""
    import fcntl

    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise self._busy(holder, remote=False) from None
      return False  # ENOLCK, EOPNOTSUPP, ...: no locking here
    left = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
    if left:
      self._took_over(left)
    self._mine = this_process()
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(self._mine).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return True

  def _read(self) -> dict[str, Any] | None:
    import tensorflow as tf

    try:
      with tf.io.gfile.GFile(self.path, "r") as f:
        return _parse(f.read())
    except tf.errors.NotFoundError:
      return None

  def _acquire_by_content(self) -> None:
    import tensorflow as tf

    holder = self._read()
    if holder:
      if not is_gone(holder):
        raise self._busy(holder, remote=True)
      self._took_over(holder)
      tf.io.gfile.remove(self.path)
    self._mine = this_process()
    with tf.io.gfile.GFile(self.path, "w") as f:
      f.write(json.dumps(self._mine))
    time.sleep(SETTLE_S)
    holder = self._read()
    if holder != self._mine:  # another run wrote after us: it holds the workdir
      self._mine = None
      raise self._busy(holder, remote=True)

  def release(self) -> None:
    """Empties the file (it stays: removing a flock'ed file would let two runs lock two files) and unlocks."""
    if self._fd is not None:
      import fcntl

      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    elif self._mine is not None:
      import tensorflow as tf

      if self._read() == self._mine:
        tf.io.gfile.remove(self.path)
    self._mine = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def hold(workdir: str):
  """Holds `workdir`'s lock for the block; with several processes, process 0 takes it and all learn the outcome.

  Raises:
    WorkdirBusyError: on every process, when process 0 could not take it.
  """
  import jax

  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  failure = None
  if lock is not None:
    try:
      lock.acquire()
    except WorkdirBusyError as e:
      failure = e
  if jax.process_count() > 1:
    import numpy as np
    from jax.experimental import multihost_utils

    if not multihost_utils.broadcast_one_to_all(np.int32(failure is None)) and failure is None:
      failure = WorkdirBusyError(f"--workdir {workdir} is in use by another training run (see process 0's error)")
  if failure is not None:
    raise failure
  try:
    yield
  finally:
    if lock is not None:
      lock.release()
