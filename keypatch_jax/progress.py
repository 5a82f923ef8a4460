"""One console line per logging step of a training run: step, losses, rate and ETA.

TensorBoard gets every scalar (`clu.metric_writers`); the console gets this
short line, from process 0 only, so that a run, the demo included, shows
where it is and when it will end.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping


def duration(seconds: float) -> str:
  """A short human duration: '45s', '3m05s', '2h01m'."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
  """One console line per logging step of a training run: step, losses, rate and ETA.

  The rate counts only the steps after the first (whose time is the compile),
  so the ETA is right from the first line on. Prints nothing when disabled
  (processes other than 0).
  """

  KEYS = ("g_loss", "d_loss")

  def __init__(self, total: int, start: int, *, enabled: bool = True, stream=None, clock=time.perf_counter):
    self.total, self.start = total, start
    self.enabled = enabled
    self.stream = stream
    self.clock = clock
    self.first: tuple[int, float] | None = None  # (step, time) once the first step has run

  def _print(self, line: str) -> None:
    if self.enabled:
      print(line, file=self.stream or sys.stdout, flush=True)

  def begin(self, what: str) -> None:
    """The run's first line: what is trained, from where to where."""
    if self.start >= self.total:
      self._print(f"{what}: already at step {self.start} of {self.total}; nothing to train")
    elif self.start:
      self._print(f"{what}: resuming at step {self.start} of {self.total}")
    else:
      self._print(f"{what}: {self.total} steps")

  def first_step_done(self, step: int, seconds: float) -> None:
    """Call once the first step of this process has finished (it includes the compile)."""
    self.first = (step, self.clock())
    self._print(f"step {step}/{self.total}: compiled and ran the first step in {duration(seconds)}")

  def rate(self, step: int) -> float:
    """Steps per second since the first step (nan before two steps)."""
    if self.first is None or step <= self.first[0]:
      return float("nan")
    return (step - self.first[0]) / max(self.clock() - self.first[1], 1e-9)

  def report(self, step: int, scalars: Mapping[str, float]) -> None:
    """A line `step k/T (p%)  g_loss ..  d_loss ..  r steps/s  ETA ..`."""
    rate = self.rate(step)
    losses = "".join(f"  {k} {scalars[k]:.4g}" for k in self.KEYS if k in scalars)
    speed = f"  {rate:.2f} steps/s  ETA {duration((self.total - step) / rate)}" if rate == rate else ""
    self._print(f"step {step}/{self.total} ({100 * step / self.total:.0f}%){losses}{speed}")

  def scores(self, step: int, what: str, values: Mapping[str, float]) -> None:
    """A line `step k: what name value, ...` (e.g. the periodic evaluation's scores)."""
    self._print(f"step {step}: {what} " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
