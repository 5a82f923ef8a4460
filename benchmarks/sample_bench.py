"""Sampling throughput of the generator at 64x64 against the machine's matmul rate.

  python benchmarks/sample_bench.py [--batch 64] [--iters 5] [--json] [--batch-stats]

Default config widths, random init (no checkpoint). Prints images/s of the
jitted eval-mode forward pass (`inference.generate_fn`, the one `sample`
uses), its GFLOP/s from XLA's cost analysis (of the forward pass with the
native convolutions: the model's work, as in train_step_bench), the GFLOP/s of a float32
2048x2048 matmul measured in the same run, and their ratio (roofline
fraction; target >= 0.5). With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from keypatch_jax import inference, models


def best_seconds(fn, *args, iters: int) -> float:
  """Fastest of `iters` timed calls (after one warm-up), blocking on the result."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def flops(fn, *args) -> float:
  """XLA's FLOP count of one call of the jitted `fn` (as lowered)."""
  cost = fn.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost["flops"])


def matmul_gflops(size: int, iters: int) -> float:
  """Measured float32 GFLOP/s of a [size, size] @ [size, size] matmul."""
  a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  return 2.0 * size**3 / best_seconds(matmul, a, a, iters=iters) / 1e9


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--num-patches", type=int, default=3)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--matmul-size", type=int, default=2048)
  p.add_argument("--batch-stats", action="store_true", help="train-mode BatchNorm as the official sampler")
  p.add_argument("--upsample", default="auto", choices=["auto", *models.UPSAMPLE])
  p.add_argument("--downsample", default="auto", choices=["auto", *models.DOWNSAMPLE])
  p.add_argument("--json", action="store_true")
  args = p.parse_args()

  config = default.get_config()
  config.image_size = args.image_size
  config.model.upsample, config.model.downsample = args.upsample, args.downsample
  generator, _ = models.build_models(config)
  s, n, b = args.image_size, args.num_patches, args.batch
  patch_sets = jax.random.uniform(jax.random.key(0), (b, n, s, s, 3), minval=-1.0, maxval=1.0)
  z = jnp.asarray(inference.noise(0, 0, b, config.model.z_dim))
  variables = jax.jit(lambda: generator.init(jax.random.key(0), patch_sets[:1], z[:1], train=False))()
  generate = jax.jit(inference.generate_fn(generator, batch_stats=args.batch_stats))

  seconds = best_seconds(generate, variables, patch_sets, z, iters=args.iters)
  config.model.upsample, config.model.downsample = "transpose", "native"
  native = jax.jit(inference.generate_fn(models.build_models(config)[0], batch_stats=args.batch_stats))
  gflops = flops(native, variables, patch_sets, z) / seconds / 1e9
  peak = matmul_gflops(args.matmul_size, args.iters)
  result = {
    "images_per_s": b / seconds,
    "gflops_per_s": gflops,
    "matmul_gflops_per_s": peak,
    "roofline_fraction": gflops / peak,
    "batch": b,
    "image_size": s,
    "num_patches": n,
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
  }
  print(
    f"{jax.default_backend()} x{jax.device_count()}, batch {b}, {s}x{s}, N={n}, "
    f"upsample={args.upsample}, downsample={args.downsample}"
  )
  print(f"sampling: {result['images_per_s']:.1f} images/s, {gflops:.1f} GFLOP/s")
  print(f"matmul {args.matmul_size}: {peak:.1f} GFLOP/s -> roofline fraction {result['roofline_fraction']:.2f}")
  if args.json:
    print(json.dumps({k: float(v) if isinstance(v, float | np.floating) else v for k, v in result.items()}))


if __name__ == "__main__":
  main()
