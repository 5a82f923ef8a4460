"""Forward+backward time of the generator and the discriminator (docs/design.md §3).

Times `jax.value_and_grad` w.r.t. the parameters, train-mode BatchNorm, jitted,
median of `--repeats` runs after one warm-up, for three settings of the
stride-2 layers (conv_forms.DOWNSAMPLE / UPSAMPLE; same parameters and outputs):
"native" (`lax.conv_transpose` and strided convolutions, the TPU/GPU default),
"decomposed" (sub-pixel UpConv and polyphase DownConv everywhere) and "auto"
(the per-layer CPU choice), and prints the speed-ups over native.

With `--layers` it times every form of each stride-2 layer of the S=64 step
(input and kernel gradients included), the table "auto" was chosen from.

  python benchmarks/model_bench.py --image-size 64 --batch 64 --repeats 5 --json
  python benchmarks/model_bench.py --layers
"""

from __future__ import annotations

import functools
import json

import common
import jax
import jax.numpy as jnp

from configs import default
from keypatch_jax import conv_forms, models

NUM_KINDS = 6  # real + the five fakes of eq. 4


def _loss_of_outputs(tree) -> jax.Array:
  """A scalar that depends on every output (sum of squares)."""
  return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


SETTINGS = {  # name -> (upsample, downsample)
  "native": ("transpose", "native"),
  "decomposed": ("subpixel", "polyphase"),
  "auto": ("auto", "auto"),
}


def _train_models(image_size: int, batch: int, upsample: str, downsample: str):
  """(Generator, KindsDiscriminator) of the default config as the train step builds them."""
  config = default.get_config()
  config.image_size, config.model.upsample, config.model.downsample = image_size, upsample, downsample
  return models.build_models(config, train=True, batch_size=batch)


def time_generator(image_size: int, batch: int, num_patches: int, upsample: str, downsample: str, repeats: int):
  """Seconds per generator forward+backward."""
  gen, _ = _train_models(image_size, batch, upsample, downsample)
  key_p, key_z, key_i = jax.random.split(jax.random.key(0), 3)
  patches = jax.random.uniform(key_p, (batch, num_patches, image_size, image_size, 3), minval=-1)
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

  return common.time_calls(step, variables["params"], variables["batch_stats"], patches, z, repeats=repeats)


def time_discriminator(image_size: int, batch: int, downsample: str, repeats: int) -> float:
  """Seconds per KindsDiscriminator forward+backward on real + 5 fakes."""
  _, disc = _train_models(image_size, batch, "auto", downsample)
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

  return common.time_calls(step, variables["params"], variables["batch_stats"], images, repeats=repeats)


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
    backend = jax.default_backend()
    if kind == "down":
      # the step vmaps D over the kinds: the module sees one kind's patch matrix
      patch_bytes = x.size // NUM_KINDS // 4 * 25 * 4
      forms, auto = conv_forms.DOWNSAMPLE, conv_forms.resolve_downsample("auto", patch_bytes, backend=backend)
      modules = [conv_forms.DownConv(cout, downsample=form) for form in forms]
    else:
      tap_bytes = batch * size * size * 9 * cout * 4
      forms, auto = conv_forms.UPSAMPLE, conv_forms.resolve_upsample("auto", tap_bytes, backend=backend)
      modules = [conv_forms.UpConv(cout, upsample=form) for form in forms]
    variables = modules[0].init(jax.random.key(1), x)
    row = {"layer": f"{kind} {size}x{size} {cin}->{cout} batch {batch}", "auto": auto}
    for form, module in zip(forms, modules, strict=True):
      grad = jax.jit(jax.grad(lambda v, x, m=module: jnp.sum(jnp.square(m.apply(v, x))), argnums=(0, 1)))
      row[form] = common.time_calls(grad, variables, x, repeats=repeats)
    print("  ".join([f"{row['layer']:32s}"] + [f"{f} {row[f] * 1e3:7.0f} ms" for f in forms] + [f"auto={auto}"]))
    rows.append(row)
  return rows


def main() -> None:
  parser = common.parser(__doc__.splitlines()[0], repeats=5)
  parser.add_argument("--layers", action="store_true", help="time each stride-2 layer of the S=64 step in every form")
  args = parser.parse_args()

  print(
    f"backend={jax.default_backend()} devices={jax.device_count()} S={args.image_size} "
    f"batch={args.batch} N={args.num_patches} repeats={args.repeats}",
    flush=True,
  )
  if args.layers:
    rows = time_layers(args.repeats)
    if args.json:
      print(json.dumps({"layers": rows}))
    return
  result = {"image_size": args.image_size, "batch": args.batch, "num_patches": args.num_patches}
  for name, (upsample, downsample) in SETTINGS.items():
    seconds = time_generator(args.image_size, args.batch, args.num_patches, upsample, downsample, args.repeats)
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
