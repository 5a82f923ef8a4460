"""Sample a trained KeyPatchGAN: one labelled PNG grid, patches | mask | generated | real (docs/design.md §6).

  python -m keypatch_jax.sample --workdir WORK --data DATA --output grid.png \
      [--step S] [--mode key|random|combine|noisy|permute] [--num K] \
      [--num-patches N] [--noise SIGMA] [--seed 0] [--raw] [--batch-stats]
  python -m keypatch_jax.sample --workdir WORK --patches MY_PATCHES/ --output mine.png

Only the generator is restored (EMA parameters unless --raw); the optimizer
state is never read. `--patches DIR` uses every image file of DIR as one set
of N patches (any N), sampled with K noises; --mode is then ignored. The grid
has a header (the mode or patch order, and a label over each column); small
images are enlarged so that every cell is at least 128 pixels wide.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

from keypatch_jax import cli, patches, preflight

PROG = "keypatch_jax.sample"
MODE_TITLES = {
  "key": "key patches of test images",
  "random": "patches cut at random boxes",
  "noisy": "key patches + Gaussian noise (sigma {noise})",
  "combine": "each patch from a different test image",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  modes = "\n".join(f"  {mode:<9}{text}" for mode, text in patches.MODE_HELP.items())
  p = cli.run_parser(
    PROG,
    __doc__ + "\n--mode (ignored with --patches):\n" + modes,
    data_help="preprocessed dataset; the first K images of its test split are sampled",
    data_required=False,
    generation=True,
  )
  p.add_argument("--output", required=True, help="image file to write (.png)")
  p.add_argument("--mode", choices=patches.MODES, default="key", help="which patches (see above; not with --patches)")
  p.add_argument("--num", type=int, default=8, help="K test images, or K noises for --patches (the grid's rows)")
  p.add_argument("--num-patches", type=int, default=None, help="N (default: the checkpoint's)")
  p.add_argument("--patches", default=None, help="folder of your own patch images (any N) instead of --data")
  args = p.parse_args(argv)
  if args.num < 1:
    p.error(f"--num {args.num}: must be >= 1")
  if args.data is None and args.patches is None:
    p.error("one of --data or --patches is required")
  return args


def grid_for(run, args: argparse.Namespace) -> tuple[np.ndarray, int]:
  """(the labelled uint8 grid [H, W, 3] the arguments ask for (`visualize.make_grid`), its rows)."""
  from keypatch_jax import dataset_meta, inference, input_pipeline, visualize

  generate = inference.generate_fn(run.generator, batch_stats=args.batch_stats)
  z_dim = run.config.model.z_dim
  if args.patches is not None:
    sets = np.repeat(patches.load_patch_folder(args.patches, run.config.image_size), args.num, axis=0)
    mask, image = generate(run.variables, sets, inference.noise(args.seed, 0, args.num, z_dim))
    title = f"your patches from {args.patches}, step {run.step}"
    return visualize.make_grid(sets, _np(mask), np.asarray(image), None, title=title), args.num
  batch = next(input_pipeline.eval_batches(run.meta, "test", batch_size=args.num, limit=args.num), None)
  if batch is None:
    raise dataset_meta.DataConfigError(f"{run.meta.data_dir}: the test split is empty")
  sets, _, real = patches.make_patch_sets(
    args.mode, batch["image"], batch["patches"], batch["boxes"], run.meta.info, seed=args.seed, noise=args.noise
  )
  z = inference.noise(args.seed, 0, sets.shape[0], z_dim)
  orders = patches.permutations(sets.shape[1]) if args.mode == "permute" else [tuple(range(sets.shape[1]))]
  grids = []
  for order in orders:
    permuted = sets[:, list(order)]
    mask, image = generate(run.variables, permuted, z)
    if args.mode == "permute":
      title = "patch order " + "-".join(str(k + 1) for k in order)
    else:
      title = MODE_TITLES[args.mode].format(noise=args.noise)
    title += f", step {run.step}"
    grids.append(visualize.make_grid(permuted, _np(mask), np.asarray(image), real, title=title, order=order))
  return np.concatenate(grids, axis=1), sets.shape[0]


def _np(x):
  return None if x is None else np.asarray(x)


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  preflight.output(args.output, suffixes=preflight.IMAGE_SUFFIXES)  # before anything slow
  preflight.workdir(args.workdir)
  if args.patches is not None:
    preflight.patch_folder(args.patches)
  else:
    preflight.data(args.data)

  import cv2

  from keypatch_jax import inference

  data = None if args.patches is not None else args.data
  run = inference.load_run(args.workdir, data, step=args.step, ema=not args.raw, num_patches=args.num_patches)
  grid, rows = grid_for(run, args)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  try:
    written = cv2.imwrite(args.output, grid[..., ::-1])
  except cv2.error:
    written = False
  if not written:
    raise patches.PatchError(f"cannot write {args.output!r} (use a .png name in a writable directory)")
  source = f"patches {args.patches}" if args.patches else f"mode {args.mode}"
  short = f"; the test split has only {rows} images" if rows < args.num else ""
  print(f"wrote {args.output} ({grid.shape[1]}x{grid.shape[0]}, {rows} rows{short}, {source}, step {run.step})")
  return 0


main, run = cli.command(PROG, _main)

if __name__ == "__main__":
  run()
