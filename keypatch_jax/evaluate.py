"""Evaluate a trained KeyPatchGAN on the test split (docs/design.md §6): a table, and JSON with definitions.

  python -m keypatch_jax.evaluate --workdir WORK --data DATA --output metrics.json \
      [--step S] [--limit K] [--noise SIGMA] [--seed 0] [--raw] [--batch-stats] [--baseline-data DIR] \
      [--inception pt_inception-2015-12-05-6726825d.pth [--kid-subsets 100 --kid-subset-size 1000]]

Every image metric is computed from the test image's own key patches (`key`),
from patches cut at random boxes (`random_*`), from noisy key patches
(`noisy_*`), and for a patch-blind baseline that ignores the patches
(`blind_*`: the mean mask and mean image of the train split of the run's own
training data, or of --baseline-data, `baselines.py`), so the table shows what
the model adds; the output says which dataset gave the baseline. With
--inception (pytorch-fid's weights file), FID and KID per patch mode (also
`combine_*`: each patch from another test image) against the same test images
(README "FID and KID").
`DEFINITIONS` below says what each figure means; `--help`, the printed table
and the JSON's "descriptions" block all come from it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np

from keypatch_jax import cli, preflight

PROG = "keypatch_jax.evaluate"
PREFIXES = {"key": "", "random": "random_", "combine": "combine_", "noisy": "noisy_"}
BLIND = "blind_"  # the patch-blind baseline's prefix
BASELINE_IMAGES = 2048  # train images averaged into the baseline (the mean of more barely moves)

# What each figure means: the single source of --help, the table and the JSON's "descriptions".
DEFINITIONS = {
  "mask_iou": "IoU of the predicted mask (> 0.5) with the union of the true boxes; 1 is perfect",
  "mask_l1": "mean |predicted mask - true box union| over all pixels; 0 is perfect",
  "masked_l1": "mean |generated - real| inside the true box union, images in [-1, 1]; 0 is perfect",
  "masked_psnr": "PSNR in dB of generated vs real inside the true box union (peak-to-peak 2); higher is closer",
  "image_l1": "mean |generated - real| over the whole image; 0 is perfect",
  "image_psnr": "PSNR in dB of generated vs real over the whole image; higher is closer",
  "fid": "Frechet Inception distance of the generated images to the test images (with --inception; needs more "
  "images than the 2048 features, else left out); 0 is equal",
  "kid": "kernel Inception distance, unbiased, mean over subsets (with --inception); 0 is equal",
  "kid_std": "standard deviation of kid over the subsets",
  "fid_num_images": "generated images in fid/kid (combine skips batches smaller than N)",
  "order_consistency": "max |difference| of the images generated from every order of the same key patches; "
  "0 is order invariant",
  "d_real_score": "mean sigmoid of the discriminator on the real test images (1 = judged real)",
  "d_fake_score": "mean sigmoid of the discriminator on the images generated from the key patches",
  "num_images": "test images evaluated",
  "baseline_images": "train images averaged into the patch-blind baseline",
  "baseline_data": "the dataset whose train split gave the patch-blind baseline",
  "baseline_from": "how it was chosen: 'run' (the run's training data, data_dir in its config.json) or "
  "'--baseline-data'",
  "step": "checkpoint step evaluated",
}
COLUMNS = {
  "key": "the test image's own key patches (no prefix)",
  "random": "patches cut at random boxes of the dataset's size range; the true mask is their union (random_*)",
  "combine": "each patch from a different test image; FID/KID only (combine_*)",
  "noisy": "the key patches plus Gaussian noise of sigma --noise (noisy_*)",
  "blind": "patch-blind baseline, whatever the patches: the mean box-union mask and mean image of the training "
  "data's train split (the run's data_dir, or --baseline-data), scored like the model (blind_*); the model should "
  "beat it",
}


def describe(name: str) -> str:
  """The definition of a (possibly prefixed) figure name ('' when unknown)."""
  for column, prefix in (*((c, p) for c, p in PREFIXES.items() if p), ("blind", BLIND)):
    if name.startswith(prefix) and name[len(prefix) :] in DEFINITIONS:
      return f"{DEFINITIONS[name[len(prefix) :]]} [{column}: {COLUMNS[column].split(' (')[0]}]"
  return DEFINITIONS.get(name, "")


def help_epilog() -> str:
  """The metric and column definitions, for `--help`."""
  width = max(map(len, (*DEFINITIONS, *COLUMNS))) + 2
  lines = ["metrics (means over the test images):"]
  lines += [f"  {name:<{width}}{text}" for name, text in DEFINITIONS.items()]
  lines += ["", "columns of the table (prefixes in the JSON):"]
  lines += [f"  {name:<{width}}{text}" for name, text in COLUMNS.items()]
  return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = cli.run_parser(
    PROG, __doc__, data_help="preprocessed dataset; its test split is evaluated", data_required=True, generation=True
  )
  p.epilog = help_epilog()
  p.add_argument("--output", default=None, help="JSON file to write (default: print only)")
  p.add_argument("--limit", type=int, default=None, help="evaluate at most this many test images")
  p.add_argument("--batch-size", type=int, default=64, help="images per jitted call")
  p.add_argument("--baseline-images", type=int, default=BASELINE_IMAGES, help="train images averaged for blind_*")
  p.add_argument(
    "--baseline-data",
    default=None,
    help="preprocessed dataset whose train split gives blind_* (default: the run's training data, data_dir in "
    "WORKDIR/config.json)",
  )
  p.add_argument("--inception", default=None, help="pytorch-fid's Inception-v3 weights (.pth): adds FID and KID")
  p.add_argument("--kid-subsets", type=int, default=100, help="KID: number of random subsets")
  p.add_argument("--kid-subset-size", type=int, default=1000, help="KID: images per subset (at most the images)")
  return p.parse_args(argv)


def discriminator_fn(workdir: str, step: int):
  """Jitted `(real, generated) -> (sigmoid scores [B], [B])` of the checkpoint's discriminator, or None.

  Eval mode; each kind uses its own running statistics (real: row 0, the
  generated image: the row of "G"), as in training.
  """
  import jax

  from keypatch_jax import checkpoint

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


def baseline_source(baseline_data: str | None, run_data_dir: str | None) -> tuple[str | None, str]:
  """(dataset, 'run' | '--baseline-data'): whose train split gives the blind_* baseline (docs/design.md §6.2).

  `--baseline-data` when given, else the run's training data `run_data_dir`
  (config.data_dir; None while not yet known, e.g. a remote workdir before its config is read).
  """
  if baseline_data is not None:
    return baseline_data, "--baseline-data"
  return run_data_dir, "run"


def chosen_by(source: str, workdir: str) -> str:
  """How the baseline's dataset was chosen, in words (messages, the printed line)."""
  if source == "run":
    return f"the run's training data (data_dir in {os.path.join(workdir, preflight.CONFIG_FILE)})"
  return source


def evaluate(run, args: argparse.Namespace, extract=None) -> dict[str, float | str]:
  """All figures of `DEFINITIONS` on (up to `args.limit` images of) the test split, with the blind_* baseline.

  `run` is an `inference.Run`; `extract` is `inception.feature_fn(weights of
  args.inception)` or None (no FID/KID). The baseline comes from the train
  split of `args.baseline_data`, or by default of the run's training data
  (`run.config.data_dir`): `baseline_data` and `baseline_from` in the result say which.

  Raises:
    DatasetFormatError, DataConfigError: the baseline's dataset is missing, has no train
      split or another image size; the test split is empty (one line each).
  """
  import jax.numpy as jnp

  from keypatch_jax import baselines, dataset_meta, inference, input_pipeline, losses, patches

  generate = inference.generate_fn(run.generator, batch_stats=args.batch_stats)
  score = discriminator_fn(args.workdir, run.step) if run.config.loss.adversarial else None
  baseline_dir, source = baseline_source(args.baseline_data, run.config.data_dir)
  baseline_meta = baselines.baseline_meta(baseline_dir, run.meta.image_size, chosen_by(source, args.workdir))
  means = baselines.train_means(baseline_meta, args.baseline_images)
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
      for name, values in baselines.blind_metrics(means, real, losses.mask_from_boxes(boxes, real.shape[1])).items():
        add(BLIND + name, values)
      for order in patches.permutations(sets.shape[1])[1:]:
        _, permuted = generate(run.variables, sets[:, list(order)], z)
        consistency.append(float(jnp.abs(permuted - image).max()))
      if score is not None:
        d_real, d_fake = score(real, image)
        add("d_real_score", d_real)
        add("d_fake_score", d_fake)
  if not per_image:
    raise dataset_meta.DataConfigError(f"{run.meta.data_dir}: the test split is empty")
  out = {name: float(np.concatenate(v).mean()) for name, v in per_image.items()}
  out["order_consistency"] = max(consistency)
  out["num_images"] = int(np.concatenate(per_image["mask_iou"]).size)
  out["baseline_images"] = means.num_images
  out["baseline_data"] = baseline_dir
  out["baseline_from"] = source
  out["step"] = int(run.step)
  if extract is not None:
    out.update(distribution_scores(run.meta, extract, features, args))
  return out


def distribution_scores(meta, extract, features: dict[str, list[np.ndarray]], args: argparse.Namespace) -> dict:
  """{prefix + 'fid' | 'kid' | 'kid_std' | 'fid_num_images'} per mode against the test images' (cached) features.

  A figure not defined for the images there are (FID below 2049, KID below 2:
  `fid.distribution_metrics`) is left out, with one warning line saying why.
  """
  from keypatch_jax import fid

  real = fid.real_features(
    meta, extract, args.inception, limit=args.limit, batch_size=args.batch_size, log=lambda m: print(m, file=sys.stderr)
  )
  out, notes = {}, []
  for mode, prefix in PREFIXES.items():
    if not features[mode]:
      continue
    fake = np.concatenate(features[mode])
    scores, missing = fid.distribution_metrics(real, fake, args.kid_subsets, args.kid_subset_size)
    out.update({prefix + k: v for k, v in scores.items()})
    out[prefix + "fid_num_images"] = int(fake.shape[0])
    notes += missing
  for note in dict.fromkeys(notes):  # each reason once, not once per patch mode
    print(f"{PROG}: warning: {note}", file=sys.stderr)
  return out


def format_table(result: dict[str, float | str]) -> str:
  """The per-mode figures as rows `metric | key | random | combine | noisy | blind` (a column only when
  present), the column legend, the other figures with their definitions, then where the baseline came from."""
  names = metrics_names(result)
  columns = {c: p for c, p in {**PREFIXES, "blind": BLIND}.items() if any(p + n in result for n in names)}
  lines = [f"{'metric':<16}" + "".join(f"{c:>10}" for c in columns)]
  for name in names:
    row = [result.get(p + name) for p in columns.values()]
    lines.append(f"{name:<16}" + "".join(f"{v:>10.4f}" if v is not None else f"{'-':>10}" for v in row))
  lines += [f"  {c}: {COLUMNS[c]}" for c in columns]
  prefixed = {p + n for p in columns.values() for n in names}
  rest = [k for k in result if k not in prefixed and not isinstance(result[k], str)]
  if rest:
    lines.append("")
    lines += [f"{k:<18}{result[k]:>10.4g}  {describe(k)}" for k in rest]
  if "baseline_data" in result:
    source = "the run's training data" if result["baseline_from"] == "run" else result["baseline_from"]
    lines.append(
      f"blind_* baseline: the train split of {result['baseline_data']!r} ({source}), "
      f"{result.get('baseline_images', '?')} images"
    )
  return "\n".join(lines)


def metrics_names(result: dict[str, float]) -> list[str]:
  """The un-prefixed names of the per-mode figures present in `result`."""
  prefixes = [p for p in (*PREFIXES.values(), BLIND) if p]
  return [k for k in result if any(p + k in result for p in prefixes)]


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  preflight.run_and_data(args, output_suffixes=(".json",))  # before anything slow
  baseline_dir, source = baseline_source(args.baseline_data, preflight.run_data_dir(args.workdir))
  if baseline_dir is not None:
    preflight.baseline_data(baseline_dir, chosen_by(source, args.workdir))

  from keypatch_jax import inception, inference

  extract = None
  if args.inception is not None:  # checked before the checkpoint is restored
    extract = inception.feature_fn(inception.load_weights(args.inception), batch_size=args.batch_size)
  run = inference.load_run(args.workdir, args.data, step=args.step, ema=not args.raw)
  result = evaluate(run, args, extract)
  print(format_table(result))
  cli.report_json(result, args.output, {k: describe(k) for k in result})
  return 0


main, run = cli.command(PROG, _main)

if __name__ == "__main__":
  run()
