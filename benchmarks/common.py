"""What every benchmark shares: one timer, one matmul-rate measurement, XLA's FLOP count.

Each benchmark prints its figures and, with --json, one JSON object as its last
line. Measure a ratio (e.g. a step's GFLOP/s over the matmul rate) within one
run: a shared machine's speed drifts between runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def parser(description: str, *, repeats: int, warmup: int | None = None) -> argparse.ArgumentParser:
  """An ArgumentParser with the options every benchmark takes.

  --image-size (S, 64), --batch (global, 64), --num-patches (N, 3),
  --repeats (timed calls), --warmup (untimed calls, when `warmup` is given)
  and --json (last line: one JSON object).
  """
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--image-size", type=int, default=64, help="S")
  p.add_argument("--batch", type=int, default=64, help="global batch")
  p.add_argument("--num-patches", type=int, default=3, help="N")
  p.add_argument("--repeats", type=int, default=repeats, help="timed calls")
  if warmup is not None:
    p.add_argument("--warmup", type=int, default=warmup, help="untimed calls before the timed ones")
  p.add_argument("--json", action="store_true", help="last line: one JSON object")
  return p


def time_calls(
  fn: Callable[..., Any],
  *args: Any,
  repeats: int,
  warmup: int = 1,
  reduce: Callable[[list[float]], float] = statistics.median,
) -> float:
  """Seconds per call of `fn(*args)`, blocking on its result (`jax.block_until_ready`).

  Runs `warmup` untimed calls (compilation, caches), then `repeats` timed
  ones, and returns `reduce` of their times (median by default; `min` for a
  best-of figure).
  """
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return reduce(times)


def matmul_gflops(size: int = 2048, repeats: int = 5, reduce: Callable[[list[float]], float] = statistics.median):
  """The measured float32 GFLOP/s of a [size, size] @ [size, size] matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  return 2.0 * size**3 / time_calls(jax.jit(jnp.matmul), a, b, repeats=repeats, reduce=reduce) / 1e9


def xla_flops(stage) -> float:
  """XLA's cost-analysis FLOPs of a jax `Lowered` or `Compiled` computation (NaN when it has none)."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) if cost else float("nan")
