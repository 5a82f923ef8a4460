"""Forward+backward time of the generator and the discriminator (SPEC §2).

Times `jax.value_and_grad` w.r.t. the parameters, train-mode BatchNorm, jitted,
median of `--repeats` runs after one warm-up, for three settings of the
stride-2 layers (models.DOWNSAMPLE / UPSAMPLE; same parameters and outputs):
"native" (`lax.conv_transpose` and strided convolutions, the TPU/GPU default),
"decomposed" (sub-pixel UpConv and polyphase DownConv everywhere) and "auto"
(the per-layer CPU choice), and prints the speed-ups over native.

With `--layers` it times every form of each stride-2 layer of the S=64 step
(input and kernel gradients included), the table "auto" was chosen from.

  python benchmarks/model_bench.py --image-size 64 --batch 64 --repeats 5 --json
  python benchmarks/model_bench.py --layers
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


SETTINGS = {  # name -> (upsample, downsample)
  "native": ("transpose", "native"),
  "decomposed": ("subpixel", "polyphase"),
  "auto": ("auto", "auto"),
}


def time_generator(image_size: int, batch: int, upsample: str, downsample: str, repeats: int) -> float:
  """Seconds per generator forward+backward."""
  gen = models.Generator(image_size=image_size, upsample=upsample, downsample=downsample)
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


def time_discriminator(image_size: int, batch: int, downsample: str, repeats: int) -> float:
  """Seconds per KindsDiscriminator forward+backward on real + 5 fakes."""
  disc = models.KindsDiscriminator(image_size=image_size, downsample=downsample)
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


# The stride-2 layers of one S=64, batch-64 train step: (module, batch, H, Cin, Cout).
# DownConv batches: D sees 6 kinds x 64 images; UpConv: the decoders see 64.
STEP_LAYERS = [
  ("down", NUM_KINDS * 64, 64, 3, 64),
  ("down", NUM_KINDS * 64, 32, 64, 128),
  ("down", NUM_KINDS * 64, 16, 128, 256),
  ("down", NUM_KINDS * 64, 8, 256, 512),
  ("up", 64, 4, 1024, 256),
  ("up", 64, 8, 512, 128),
  ("up", 64, 16, 256, 64),
  ("up", 64, 32, 128, 3),
]


def time_layers(repeats: int) -> list[dict]:
  """Forward+backward seconds of each STEP_LAYERS layer in every form."""
  rows = []
  for kind, batch, size, cin, cout in STEP_LAYERS:
    x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
    if kind == "down":
      # the step vmaps D over the kinds: the module sees one kind's patch matrix
      forms, auto = models.DOWNSAMPLE, models.resolve_downsample("auto", x.size // NUM_KINDS // 4 * 25 * 4)
      modules = [models.DownConv(cout, downsample=form) for form in forms]
    else:
      forms, auto = models.UPSAMPLE, models.resolve_upsample("auto", batch * size * size * 9 * cout * 4)
      modules = [models.UpConv(cout, upsample=form) for form in forms]
    variables = modules[0].init(jax.random.key(1), x)
    row = {"layer": f"{kind} {size}x{size} {cin}->{cout} batch {batch}", "auto": auto}
    for form, module in zip(forms, modules, strict=True):
      grad = jax.jit(jax.grad(lambda v, x, m=module: jnp.sum(jnp.square(m.apply(v, x))), argnums=(0, 1)))
      row[form] = _median_seconds(grad, (variables, x), repeats)
    print("  ".join([f"{row['layer']:32s}"] + [f"{f} {row[f] * 1e3:7.0f} ms" for f in forms] + [f"auto={auto}"]))
    rows.append(row)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--layers", action="store_true", help="time each stride-2 layer of the S=64 step in every form")
  parser.add_argument("--json", action="store_true", help="last line: a JSON object")
  args = parser.parse_args()

  print(
    f"backend={jax.default_backend()} devices={jax.device_count()} S={args.image_size} "
    f"batch={args.batch} N={NUM_PATCHES} repeats={args.repeats}",
    flush=True,
  )
  if args.layers:
    rows = time_layers(args.repeats)
    if args.json:
      print(json.dumps({"layers": rows}))
    return
  result = {"image_size": args.image_size, "batch": args.batch, "num_patches": NUM_PATCHES}
  for name, (upsample, downsample) in SETTINGS.items():
    seconds = time_generator(args.image_size, args.batch, upsample, downsample, args.repeats)
    result[f"generator_{name}_s"] = seconds
    print(f"generator fwd+bwd ({name}): {seconds * 1e3:.1f} ms", flush=True)
  for name, (_, downsample) in SETTINGS.items():
    seconds = time_discriminator(args.image_size, args.batch, downsample, args.repeats)
    result[f"discriminator_{name}_s"] = seconds
    print(f"discriminator fwd+bwd ({name}, {NUM_KINDS} kinds x batch {args.batch}): {seconds * 1e3:.1f} ms", flush=True)
  for net in ("generator", "discriminator"):
    for name in ("decomposed", "auto"):
      result[f"{net}_{name}_speedup"] = result[f"{net}_native_s"] / result[f"{net}_{name}_s"]
      print(f"{net} speed-up of {name} over native: {result[f'{net}_{name}_speedup']:.2f}x")
  if args.json:
    print(json.dumps(result))


if __name__ == "__main__":
  main()
