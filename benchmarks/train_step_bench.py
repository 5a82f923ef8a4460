"""Full train-step throughput (d_steps D + g_steps G updates) on all local devices.

Prints images/s (median of timed steps after warm-up), compile time and count,
the step's FLOPs from XLA's cost analysis (of the step with the native
convolutions: the model's work, not the CPU forms' extra adds), the achieved
GFLOP/s, and that as a fraction of this machine's dense float32 matmul rate
measured in the same run.
With `--data DIR` it also times the tf.data input pipeline on that dataset.

  python benchmarks/train_step_bench.py                      # S=64, batch 64
  python benchmarks/train_step_bench.py --image-size 128 --batch 32
  python benchmarks/train_step_bench.py --upsample transpose --downsample native  # TPU/GPU forms
  python benchmarks/train_step_bench.py --json                # last line: JSON
"""

from __future__ import annotations

import json
import time

import common
import flax
import jax
import numpy as np

from configs import default
from keypatch_jax import compiles, conv_forms, step
from keypatch_jax.state import create_train_state


def bench_config(
  image_size: int,
  batch_size: int,
  num_patches: int,
  *,
  upsample: str = "auto",
  downsample: str = "auto",
  dtype: str = "float32",
):
  """The default (paper) config at the given S, global batch and N."""
  config = default.get_config()
  config.image_size, config.batch_size, config.num_patches = image_size, batch_size, num_patches
  config.model.upsample, config.model.downsample, config.model.dtype = upsample, downsample, dtype
  return config


def random_batch(config, devices: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A device-sharded batch of random images/patches and plausible boxes."""
  rng = np.random.default_rng(seed)
  s, n, b = config.image_size, config.num_patches, config.batch_size // devices
  xy = rng.uniform(0, s / 2, (devices, b, n, 2))
  wh = rng.uniform(s / 5, s / 2.5, (devices, b, n, 2))
  return {
    "image": rng.uniform(-1, 1, (devices, b, s, s, 3)).astype(np.float32),
    "other": rng.uniform(-1, 1, (devices, b, s, s, 3)).astype(np.float32),
    "patches": rng.uniform(-1, 1, (devices, b, n, s, s, 3)).astype(np.float32),
    "boxes": np.concatenate([xy, wh], axis=-1).astype(np.float32),
  }


def measure_jax(config, repeats: int, warmup: int) -> dict:
  """Times the pmapped train step of `config` (see `bench_config`); returns images/s, compile and FLOP figures."""
  devices = jax.local_device_count()
  state = jax.jit(lambda r: create_train_state(config, r))(jax.random.key(0))
  pstate = step.replicate(state)
  # placed exactly as the training loop places batches (same sharding: one compile)
  batch = next(flax.jax_utils.prefetch_to_device(iter([random_batch(config, devices)]), 1, axis_name=step.AXIS))
  p_step = step.parallelize(step.step_fn(config, 1000), config.parallel)
  rng = jax.random.key(1)
  t = time.perf_counter()
  compiled = p_step.lower(pstate, batch, rng).compile()  # the run's one compile, timed on its own
  compile_s = time.perf_counter() - t
  xla_flops = common.xla_flops(compiled) * devices
  # The model's work: the same step with the native strided/transposed convolutions
  # (XLA counts their taps exactly, no zeros). The CPU forms add adds of their own
  # (im2col patch gradients, shift sums) that are not model work and not credited.
  native = config.copy_and_resolve_references()
  native.model.upsample, native.model.downsample = "transpose", "native"
  native_step = step.parallelize(step.step_fn(native, 1000), native.parallel)
  flops = common.xla_flops(native_step.lower(pstate, batch, rng)) * devices
  counter = compiles.CompileCounter()  # any further compile during the run is a bug

  def one_step():
    nonlocal pstate
    pstate, metrics = p_step(pstate, batch, rng)  # the state is donated: thread it through
    return metrics

  counter.active = True
  median = common.time_calls(one_step, repeats=repeats, warmup=warmup)
  counter.active = False
  return {
    "image_size": config.image_size,
    "batch_size": config.batch_size,
    "devices": devices,
    "backend": jax.default_backend(),
    "upsample": config.model.upsample,
    "downsample": config.model.downsample,
    "dtype": config.model.dtype,
    "step_s": median,
    "images_per_s": config.batch_size / median,
    "compile_s": compile_s,
    "compiles": 1 + counter.compiles,
    "step_gflops": flops / 1e9,
    "xla_step_gflops": xla_flops / 1e9,
    "gflops_per_s": flops / median / 1e9,
  }


def measure_input(data_dir: str, batch_size: int, steps: int = 30) -> float:
  """Images/s of `input_pipeline.train_iterator` on a preprocessed dataset."""
  from keypatch_jax import dataset_meta, input_pipeline  # the tf.data reader: only with --data

  meta = dataset_meta.load_meta(data_dir)
  config = default.get_config()
  config.image_size, config.num_patches, config.batch_size = meta.image_size, meta.num_patches, batch_size
  it = input_pipeline.train_iterator(meta, config)
  next(it)  # pipeline start-up
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
  return steps * batch_size / (time.perf_counter() - t)


def main() -> None:
  parser = common.parser(__doc__.splitlines()[0], repeats=5, warmup=2)
  parser.add_argument("--upsample", default="auto", choices=["auto", *conv_forms.UPSAMPLE])
  parser.add_argument("--downsample", default="auto", choices=["auto", *conv_forms.DOWNSAMPLE])
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--data", default=None, help="preprocessed dataset to time the input pipeline on")
  args = parser.parse_args()

  config = bench_config(
    args.image_size, args.batch, args.num_patches, upsample=args.upsample, downsample=args.downsample, dtype=args.dtype
  )
  result = measure_jax(config, args.repeats, args.warmup)
  result["matmul_gflops_per_s"] = common.matmul_gflops()
  result["roofline_fraction"] = result["gflops_per_s"] / result["matmul_gflops_per_s"]
  print(
    f"train step S={args.image_size} batch={args.batch} on {result['devices']} {result['backend']} device(s), "
    f"upsample={args.upsample}, downsample={args.downsample}, {args.dtype}: "
    f"{result['step_s']:.3f} s/step, {result['images_per_s']:.1f} images/s"
  )
  print(f"compile: {result['compile_s']:.1f} s, compiles during the run: {result['compiles']}")
  print(
    f"step FLOPs {result['step_gflops']:.1f} GFLOP (native form; the run's form: {result['xla_step_gflops']:.1f}) "
    f"-> {result['gflops_per_s']:.1f} GFLOP/s; "
    f"matmul {result['matmul_gflops_per_s']:.1f} GFLOP/s; fraction {result['roofline_fraction']:.2f}"
  )
  if args.data:
    result["input_images_per_s"] = measure_input(args.data, args.batch)
    result["input_to_step_ratio"] = result["input_images_per_s"] / result["images_per_s"]
    print(
      f"input pipeline: {result['input_images_per_s']:.0f} images/s ({result['input_to_step_ratio']:.1f}x the step's)"
    )
  if args.json:
    print(json.dumps(result))


if __name__ == "__main__":
  main()
