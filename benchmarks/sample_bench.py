"""Sampling throughput of the generator at 64x64 against the machine's matmul rate.

  python benchmarks/sample_bench.py [--batch 64] [--repeats 5] [--json] [--batch-stats]

Default config widths, random init (no checkpoint). Prints images/s of the
jitted eval-mode forward pass (`inference.generate_fn`, the one `sample`
uses), its GFLOP/s from XLA's cost analysis (of the forward pass with the
native convolutions: the model's work, as in train_step_bench), the GFLOP/s of a float32
2048x2048 matmul measured in the same run, and their ratio (roofline
fraction; target >= 0.5). With --json the last line is one JSON object.
"""

from __future__ import annotations

import json

import common
import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from keypatch_jax import conv_forms, inference, models


def measure_sampling(config, batch: int, repeats: int, *, batch_stats: bool = False) -> dict:
  """Images/s of the jitted eval-mode forward pass of `config`'s generator (random init), and its GFLOP/s.

  The FLOPs are XLA's count of the same pass with the native convolutions (the model's work).
  """
  s, n, b = config.image_size, config.num_patches, batch
  generator, _ = models.build_models(config, batch_size=b)
  patch_sets = jax.random.uniform(jax.random.key(0), (b, n, s, s, 3), minval=-1.0, maxval=1.0)
  z = jnp.asarray(inference.noise(0, 0, b, config.model.z_dim))
  variables = jax.jit(lambda: generator.init(jax.random.key(0), patch_sets[:1], z[:1], train=False))()
  generate = jax.jit(inference.generate_fn(generator, batch_stats=batch_stats))
  seconds = common.time_calls(generate, variables, patch_sets, z, repeats=repeats, reduce=min)
  native = config.copy_and_resolve_references()
  native.model.upsample, native.model.downsample = "transpose", "native"
  native_fn = jax.jit(inference.generate_fn(models.build_models(native, batch_size=b)[0], batch_stats=batch_stats))
  flops = common.xla_flops(native_fn.lower(variables, patch_sets, z))
  return {"images_per_s": b / seconds, "seconds": seconds, "gflop": flops / 1e9, "gflops_per_s": flops / seconds / 1e9}


def main() -> None:
  p = common.parser(__doc__.split("\n")[0], repeats=5)
  p.add_argument("--matmul-size", type=int, default=2048)
  p.add_argument("--batch-stats", action="store_true", help="train-mode BatchNorm as the official sampler")
  p.add_argument("--upsample", default="auto", choices=["auto", *conv_forms.UPSAMPLE])
  p.add_argument("--downsample", default="auto", choices=["auto", *conv_forms.DOWNSAMPLE])
  args = p.parse_args()

  config = default.get_config()
  config.image_size = args.image_size
  config.model.upsample, config.model.downsample = args.upsample, args.downsample
  config.num_patches = args.num_patches
  s, n, b = args.image_size, args.num_patches, args.batch
  sampling = measure_sampling(config, b, args.repeats, batch_stats=args.batch_stats)
  gflops = sampling["gflops_per_s"]
  peak = common.matmul_gflops(args.matmul_size, args.repeats, reduce=min)
  result = {
    "images_per_s": sampling["images_per_s"],
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
