"""Forward+backward time of the generator and the discriminator (SPEC §2).

Times `jax.value_and_grad` w.r.t. the parameters, train-mode BatchNorm, jitted,
median of `--repeats` runs after one warm-up, for both implementations of the
stride-2 layers: native (`lax.conv_transpose` and strided convolutions, the
TPU/GPU default) and decomposed (sub-pixel UpConv and polyphase DownConv, the
CPU default), and prints the speed-up of the decomposed forms.

  python benchmarks/model_bench.py --image-size 64 --batch 64 --repeats 5 --json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp

from keypatch_jax import models

NUM_PATCHES = 3
NUM_KINDS = 6  # real + the five fakes of eq. 4


def _median_seconds(fn, args, repeats: int) -> float:
  """Median wall time of `fn(*args)` over `repeats` runs, after one warm-up."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _loss_of_outputs(tree) -> jax.Array:
  """A scalar that depends on every output (sum of squares)."""
  return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def time_generator(image_size: int, batch: int, subpixel: bool, polyphase: bool, repeats: int) -> float:
  """Seconds per generator forward+backward."""
  gen = models.Generator(image_size=image_size, subpixel=subpixel, polyphase=polyphase)
  key_p, key_z, key_i = jax.random.split(jax.random.key(0), 3)
  patches = jax.random.uniform(key_p, (batch, NUM_PATCHES, image_size, image_size, 3), minval=-1)
  z = jax.random.uniform(key_z, (batch, gen.z_dim), minval=-1)
  variables = jax.jit(functools.partial(gen.init, train=False))(key_i, patches, z)

  @jax.jit
  def step(params, batch_stats, patches, z):
    def loss(params):
      out, state = gen.apply(
        {"params": params, "batch_stats": batch_stats},
        patches,
        z,
        train=True,
        mutable=["batch_stats"],
      )
      return _loss_of_outputs(out), state

    return jax.value_and_grad(loss, has_aux=True)(params)

  return _median_seconds(step, (variables["params"], variables["batch_stats"], patches, z), repeats)


def time_discriminator(image_size: int, batch: int, polyphase: bool, repeats: int) -> float:
  """Seconds per KindsDiscriminator forward+backward on real + 5 fakes."""
  disc = models.KindsDiscriminator(image_size=image_size, polyphase=polyphase)
  images = jax.random.uniform(jax.random.key(1), (NUM_KINDS, batch, image_size, image_size, 3), minval=-1)
  variables = jax.jit(functools.partial(disc.init, train=False))(jax.random.key(2), images)

  @jax.jit
  def step(params, batch_stats, images):
    def loss(params):
      logits, state = disc.apply(
        {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
      )
      return _loss_of_outputs(logits), state

    return jax.value_and_grad(loss, has_aux=True)(params)

  return _median_seconds(step, (variables["params"], variables["batch_stats"], images), repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", action="store_true", help="last line: a JSON object")
  args = parser.parse_args()

  print(
    f"backend={jax.default_backend()} devices={jax.device_count()} S={args.image_size} "
    f"batch={args.batch} N={NUM_PATCHES} repeats={args.repeats}",
    flush=True,
  )
  result = {"image_size": args.image_size, "batch": args.batch, "num_patches": NUM_PATCHES}
  # "native": lax.conv_transpose / strided conv (TPU/GPU); "decomposed": sub-pixel
  # UpConv and polyphase DownConv (the CPU default). Same parameters, same outputs.
  for name, decomposed in (("native", False), ("decomposed", True)):
    seconds = time_generator(args.image_size, args.batch, decomposed, decomposed, args.repeats)
    result[f"generator_{name}_s"] = seconds
    print(f"generator fwd+bwd ({name}): {seconds * 1e3:.1f} ms", flush=True)
  for name, decomposed in (("native", False), ("decomposed", True)):
    seconds = time_discriminator(args.image_size, args.batch, decomposed, args.repeats)
    result[f"discriminator_{name}_s"] = seconds
    print(f"discriminator fwd+bwd ({name}, {NUM_KINDS} kinds x batch {args.batch}): {seconds * 1e3:.1f} ms", flush=True)
  for net in ("generator", "discriminator"):
    result[f"{net}_speedup"] = result[f"{net}_native_s"] / result[f"{net}_decomposed_s"]
    print(f"{net} speed-up of the decomposed forms: {result[f'{net}_speedup']:.2f}x")
  if args.json:
    print(json.dumps(result))


if __name__ == "__main__":
  main()
