"""Evaluate a trained KeyPatchGAN on the test split (docs/design.md §6), as flat JSON and a table.

  python -m keypatch_jax.evaluate --workdir WORK --data DATA --output metrics.json \
      [--step S] [--limit K] [--noise SIGMA] [--seed 0] [--raw] [--batch-stats]

Metrics (means over the test images unless noted):
  mask_iou, mask_l1           predicted mask (> 0.5 for IoU) vs the true box union
  masked_l1, masked_psnr      generated vs real image inside the true mask
  image_l1, image_psnr        the whole image
  order_consistency           max |difference| of the generated images over all
                              patch orders (max over images; 0 = invariant)
  random_*, noisy_*           the same from random boxes / noisy key patches
  d_real_score, d_fake_score  mean sigmoid of the discriminator on real / generated
  num_images, step
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from keypatch_jax import checkpoint, cli, inference, input_pipeline, patches

PROG = "keypatch_jax.evaluate"
PREFIXES = {"key": "", "random": "random_", "noisy": "noisy_"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = inference.argument_parser(
    PROG, __doc__, data_help="preprocessed dataset; its test split is evaluated", generation=True, data_required=True
  )
  p.add_argument("--output", default=None, help="JSON file to write (default: print only)")
  p.add_argument("--limit", type=int, default=None, help="evaluate at most this many test images")
  p.add_argument("--batch-size", type=int, default=64, help="images per jitted call")
  return p.parse_args(argv)


def discriminator_fn(workdir: str, step: int):
  """Jitted `(real, generated) -> (sigmoid scores [B], [B])` of the checkpoint's discriminator, or None.

  Eval mode; each kind uses its own running statistics (real: row 0, the
  generated image: the row of "G"), as in training.
  """
  try:
    discriminator, variables, config, _ = checkpoint.restore_discriminator(workdir, step)
  except checkpoint.CheckpointError as e:
    print(f"{PROG}: warning: no d_*_score: {e}", file=sys.stderr)
    return None
  g_row = 1 + list(config.loss.fakes).index("G")

  def score(images, row):
    stats = jax.tree.map(lambda x: x[row : row + 1], variables["batch_stats"])
    logits = discriminator.apply({"params": variables["params"], "batch_stats": stats}, images[None], train=False)
    return jax.nn.sigmoid(logits[0])

  return jax.jit(lambda real, fake: (score(real, 0), score(fake, g_row)))


def evaluate(run: inference.Run, args: argparse.Namespace) -> dict[str, float]:
  """All metrics of the module docstring on (up to `args.limit` images of) the test split."""
  generate = inference.generate_fn(run.generator, batch_stats=args.batch_stats)
  score = discriminator_fn(args.workdir, run.step) if run.config.loss.adversarial else None
  z_dim = run.config.model.z_dim
  per_image: dict[str, list[np.ndarray]] = {}
  consistency = [0.0]

  def add(name, values):
    per_image.setdefault(name, []).append(np.asarray(values))

  batches = input_pipeline.eval_batches(run.meta, "test", batch_size=args.batch_size, limit=args.limit)
  for i, batch in enumerate(batches):
    z = inference.noise(args.seed, i, batch["image"].shape[0], z_dim)
    for mode, prefix in PREFIXES.items():
      sets, boxes, real = patches.make_patch_sets(
        mode, batch["image"], batch["patches"], batch["boxes"], run.meta.info, seed=(args.seed, i), noise=args.noise
      )
      scores, image = inference.evaluate_batch(generate, run.variables, sets, z, boxes, real)
      for name, values in scores.items():
        add(prefix + name, values)
      if mode != "key":
        continue
      for order in patches.permutations(sets.shape[1])[1:]:
        _, permuted = generate(run.variables, sets[:, list(order)], z)
        consistency.append(float(jnp.abs(permuted - image).max()))
      if score is not None:
        d_real, d_fake = score(real, image)
        add("d_real_score", d_real)
        add("d_fake_score", d_fake)
  if not per_image:
    raise input_pipeline.DataConfigError(f"{run.meta.data_dir}: the test split is empty")
  out = {name: float(np.concatenate(v).mean()) for name, v in per_image.items()}
  out["order_consistency"] = max(consistency)
  out["num_images"] = int(np.concatenate(per_image["mask_iou"]).size)
  out["step"] = int(run.step)
  return out


def format_table(result: dict[str, float]) -> str:
  """Rows `metric | key | random | noisy`, then the remaining scalars."""
  names = metrics_names(result)
  lines = [f"{'metric':<14}{'key':>10}{'random':>10}{'noisy':>10}"]
  for name in names:
    row = [result.get(p + name) for p in PREFIXES.values()]
    lines.append(f"{name:<14}" + "".join(f"{v:>10.4f}" if v is not None else f"{'-':>10}" for v in row))
  prefixed = {p + n for p in PREFIXES.values() for n in names}
  lines += [f"{k:<24}{v:>10.4g}" for k, v in result.items() if k not in prefixed]
  return "\n".join(lines)


def metrics_names(result: dict[str, float]) -> list[str]:
  """The un-prefixed names of the per-mode metrics present in `result`."""
  return [k for k in result if f"random_{k}" in result or f"noisy_{k}" in result]


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  run = inference.load_run(args.workdir, args.data, step=args.step, ema=not args.raw)
  result = evaluate(run, args)
  print(format_table(result))
  cli.report_json(result, args.output)
  return 0


main, run = cli.command(PROG, _main)

if __name__ == "__main__":
  run()
