"""An iterator advanced on a background thread, so waiting for it can be interrupted.

The train loop reads its batches through `BackgroundIterator`: a stalled input
(a slow or hung file system, a reader blocked in TensorFlow's C++ code) then
never blocks the main thread, which keeps handling signals and gives up
waiting as soon as `should_stop()` says so (SIGTERM: save and exit).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Interrupted(Exception):
  """`should_stop()` became true while waiting for the next item."""


_END = object()


class BackgroundIterator:
  """Iterates `source` on a daemon thread, at most `size` items ahead.

  Items and the source's exception (re-raised in the caller) arrive in order.
  `__next__` waits in slices of `poll_s` seconds and raises `Interrupted` when
  `should_stop()` is true between them. `close()` stops the thread after its
  current item; a thread stuck inside the source is left behind (it is a
  daemon, so it does not keep the process alive).
  """

  def __init__(self, source: Iterator[Any], size: int, should_stop: Callable[[], bool], poll_s: float = 0.1):
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._should_stop = should_stop
    self._poll_s = poll_s
    self._closed = threading.Event()
    self._done = False
    self._thread = threading.Thread(target=self._fill, args=(source,), name="input", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._closed.is_set():
      try:
        self._queue.put(item, timeout=self._poll_s)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self, source: Iterator[Any]) -> None:
    try:
      for item in source:
        if not self._put((item, None)):
          break
      else:
        self._put((_END, None))
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
      self._put((_END, e))
    finally:
      close = getattr(source, "close", None)
      if close is not None:
        close()

  def __iter__(self) -> BackgroundIterator:
    return self

  def __next__(self) -> Any:
    if self._done:
      raise StopIteration
    while True:
      if self._should_stop():
        raise Interrupted
      try:
        item, error = self._queue.get(timeout=self._poll_s)
        break
      except queue.Empty:
        continue
    if item is _END:
      self._done = True
      if error is not None:
        raise error
      raise StopIteration
    return item

  def close(self) -> None:
    """Asks the thread to stop and waits briefly for it (it closes the source)."""
    self._closed.set()
    self._done = True
    self._thread.join(timeout=1.0)
