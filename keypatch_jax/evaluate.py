"""Evaluate a trained KeyPatchGAN on the test split (docs/design.md §6), as flat JSON and a table.

  python -m keypatch_jax.evaluate --workdir WORK --data DATA --output metrics.json \
      [--step S] [--limit K] [--noise SIGMA] [--seed 0] [--raw] [--batch-stats] \
      [--inception pt_inception-2015-12-05-6726825d.pth [--kid-subsets 100 --kid-subset-size 1000]]

Metrics (means over the test images unless noted):
  mask_iou, mask_l1           predicted mask (> 0.5 for IoU) vs the true box union
  masked_l1, masked_psnr      generated vs real image inside the true mask
  image_l1, image_psnr        the whole image
  order_consistency           max |difference| of the generated images over all
                              patch orders (max over images; 0 = invariant)
  random_*, noisy_*           the same from random boxes / noisy key patches
  d_real_score, d_fake_score  mean sigmoid of the discriminator on real / generated
  num_images, step
With --inception (pytorch-fid's weights file), per patch mode key, random,
combine (each patch from another test image) and noisy, against the same test images:
  fid, kid, kid_std           FID; KID (unbiased) mean and std over subsets (README "FID and KID")
  fid_num_images              generated images per mode (combine skips batches smaller than N)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from keypatch_jax import checkpoint, cli, fid, inception, inference, input_pipeline, patches

PROG = "keypatch_jax.evaluate"
PREFIXES = {"key": "", "random": "random_", "combine": "combine_", "noisy": "noisy_"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = inference.argument_parser(
    PROG, __doc__, data_help="preprocessed dataset; its test split is evaluated", generation=True, data_required=True
  )
  p.add_argument("--output", default=None, help="JSON file to write (default: print only)")
  p.add_argument("--limit", type=int, default=None, help="evaluate at most this many test images")
  p.add_argument("--batch-size", type=int, default=64, help="images per jitted call")
  p.add_argument("--inception", default=None, help=f"pytorch-fid's {inception.WEIGHTS_FILE}: adds FID and KID")
  p.add_argument("--kid-subsets", type=int, default=100, help="KID: number of random subsets")
  p.add_argument("--kid-subset-size", type=int, default=1000, help="KID: images per subset (at most the images)")
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


def evaluate(run: inference.Run, args: argparse.Namespace, extract=None) -> dict[str, float]:
  """All metrics of the module docstring on (up to `args.limit` images of) the test split.

  `extract` is `inception.feature_fn(weights of args.inception)` or None (no FID/KID).
  """
  generate = inference.generate_fn(run.generator, batch_stats=args.batch_stats)
  score = discriminator_fn(args.workdir, run.step) if run.config.loss.adversarial else None
  z_dim = run.config.model.z_dim
  per_image: dict[str, list[np.ndarray]] = {}
  features: dict[str, list[np.ndarray]] = {mode: [] for mode in PREFIXES}
  consistency = [0.0]

  def add(name, values):
    per_image.setdefault(name, []).append(np.asarray(values))

  batches = input_pipeline.eval_batches(run.meta, "test", batch_size=args.batch_size, limit=args.limit)
  for i, batch in enumerate(batches):
    z = inference.noise(args.seed, i, batch["image"].shape[0], z_dim)
    for mode, prefix in PREFIXES.items():
      if mode == "combine" and (extract is None or batch["image"].shape[0] < run.meta.num_patches):
        continue  # only FID/KID: no real image or boxes to compare with; needs N images to mix
      sets, boxes, real = patches.make_patch_sets(
        mode, batch["image"], batch["patches"], batch["boxes"], run.meta.info, seed=(args.seed, i), noise=args.noise
      )
      if real is None:
        _, image = generate(run.variables, sets, z)
        features[mode].append(extract([image]))
        continue
      scores, image = inference.evaluate_batch(generate, run.variables, sets, z, boxes, real)
      if extract is not None:
        features[mode].append(extract([image]))
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
  if extract is not None:
    out.update(distribution_scores(run.meta, extract, features, args))
  return out


def distribution_scores(meta, extract, features: dict[str, list[np.ndarray]], args: argparse.Namespace) -> dict:
  """{prefix + 'fid' | 'kid' | 'kid_std' | 'fid_num_images'} per mode against the test images' (cached) features."""
  real = fid.real_features(
    meta, extract, args.inception, limit=args.limit, batch_size=args.batch_size, log=lambda m: print(m, file=sys.stderr)
  )
  out = {}
  for mode, prefix in PREFIXES.items():
    if not features[mode]:
      continue
    fake = np.concatenate(features[mode])
    scores = fid.distribution_metrics(real, fake, args.kid_subsets, args.kid_subset_size)
    out.update({prefix + k: v for k, v in scores.items()})
    out[prefix + "fid_num_images"] = int(fake.shape[0])
  return out


def format_table(result: dict[str, float]) -> str:
  """Rows `metric | key | random | combine | noisy`, then the remaining scalars."""
  names = metrics_names(result)
  lines = [f"{'metric':<14}" + "".join(f"{mode:>10}" for mode in PREFIXES)]
  for name in names:
    row = [result.get(p + name) for p in PREFIXES.values()]
    lines.append(f"{name:<14}" + "".join(f"{v:>10.4f}" if v is not None else f"{'-':>10}" for v in row))
  prefixed = {p + n for p in PREFIXES.values() for n in names}
  lines += [f"{k:<24}{v:>10.4g}" for k, v in result.items() if k not in prefixed]
  return "\n".join(lines)


def metrics_names(result: dict[str, float]) -> list[str]:
  """The un-prefixed names of the per-mode metrics present in `result`."""
  return [k for k in result if any(p and p + k in result for p in PREFIXES.values())]


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  extract = None
  if args.inception is not None:  # checked before the checkpoint is restored
    extract = inception.feature_fn(inception.load_weights(args.inception), batch_size=args.batch_size)
  run = inference.load_run(args.workdir, args.data, step=args.step, ema=not args.raw)
  result = evaluate(run, args, extract)
  print(format_table(result))
  cli.report_json(result, args.output)
  return 0


main, run = cli.command(PROG, _main)

if __name__ == "__main__":
  run()
