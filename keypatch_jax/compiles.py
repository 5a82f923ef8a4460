"""Counting JAX traces and XLA compilations (a "compiled once" check for training and the benchmarks).

No TensorFlow or clu here: the benchmarks and the accelerator script import it
on machines without them (docs/design.md §5.2).
"""

from __future__ import annotations

import weakref
from typing import ClassVar

import jax


class CompileCounter:
  """Counts traces and XLA compilations while `active` (jax.monitoring events).

  One `jax.monitoring` listener, registered with the first counter, serves
  every counter alive. A persistent compilation cache can turn a compile into
  a cache hit, so the trace count is the robust "compiled once" signal.
  """

  _TRACE = "/jax/core/compile/jaxpr_trace_duration"
  _COMPILE = "/jax/core/compile/backend_compile_duration"
  _counters: ClassVar[weakref.WeakSet] = weakref.WeakSet()
  _registered: ClassVar[bool] = False

  def __init__(self):
    self.traces = 0
    self.compiles = 0
    self.seconds = 0.0
    self.active = False
    CompileCounter._counters.add(self)
    if not CompileCounter._registered:
      jax.monitoring.register_event_duration_secs_listener(CompileCounter._dispatch)
      CompileCounter._registered = True

  @classmethod
  def _dispatch(cls, event: str, duration: float, **_) -> None:
    for counter in list(cls._counters):
      if counter.active:
        counter._count(event, duration)

  def _count(self, event: str, duration: float) -> None:
    if event == self._TRACE:
      self.traces += 1
    elif event == self._COMPILE:
      self.compiles += 1
      self.seconds += duration
