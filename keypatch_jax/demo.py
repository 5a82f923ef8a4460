"""The end-to-end demo: preprocess the built-in synthetic faces, train, sample, evaluate.

  python -m keypatch_jax.demo --workdir demo_work

Writes `WORKDIR/data` (TFRecords + previews), `WORKDIR/train` (checkpoints,
TensorBoard logs), `WORKDIR/samples.png` (a labelled grid: patches | mask |
generated | real) and `WORKDIR/metrics.json`, shows a progress line while it
trains, and ends with the test metrics next to their patch-blind baselines.
Every stage resumes: rerunning after an interruption continues where it
stopped; data made with other options (another --num-images) is an error,
never silently reused. It is the same as running

  python -m preprocessing --source synthetic:aligned --num-images 2000 --image-size 32 \
      --edges gradient --preview 8 --output WORKDIR/data
  python -m keypatch_jax.main --config configs/demo.py --workdir WORKDIR/train \
      --config.data_dir=WORKDIR/data
  python -m keypatch_jax.sample --workdir WORKDIR/train --data WORKDIR/data --output WORKDIR/samples.png
  python -m keypatch_jax.evaluate --workdir WORKDIR/train --data WORKDIR/data --output WORKDIR/metrics.json
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

from keypatch_jax import cli, errors

PROG = "keypatch_jax.demo"
# Faces placed like CelebA's aligned crops: with the default "varied" pose the
# parts wander by ±3 pixels at 32x32, and a 1-pixel error already costs more
# than the demo can learn in its few hundred steps (docs/demo_quality.md).
SOURCE = "synthetic:aligned"
# The synthetic faces are flat colours, whose gradient edges are exact: no HED download and no HED time
# (~75 ms a frame on a CPU) in the demo's budget; real photos use the default HED edges.
EDGES = "gradient"


class DemoError(errors.UserError):
  """The workdir holds something the demo cannot reuse (one-line message)."""


def existing_data(data: str, num_images: int, image_size: int) -> dict | None:
  """The `dataset_info.json` of a finished earlier run in `data`, or None when there is none.

  Raises:
    DemoError: it was written for other options (another --num-images): a rerun
      must not silently train and evaluate on the old data.
  """
  from keypatch_jax import features

  path = os.path.join(data, features.INFO_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    info = json.load(f)
  had = {"source": info.get("source"), "num_images": info.get("options", {}).get("num_images")}
  had["image_size"] = info.get("image_size")
  want = {"source": SOURCE, "num_images": num_images, "image_size": image_size}
  if had != want:
    diff = ", ".join(f"{k} {had[k]} (now {want[k]})" for k in want if had[k] != want[k])
    raise DemoError(
      f"{data} was preprocessed with other options: {diff}; rerun with those options, "
      f"or use another --workdir, or delete {os.path.dirname(data) or data}"
    )
  return info


def _demo(argv: Sequence[str] | None) -> int:
  parser = cli.ArgumentParser(prog=PROG, description=__doc__)
  parser.add_argument("--workdir", default="demo_work", help="where everything is written")
  parser.add_argument("--num-images", type=int, default=2000, help="synthetic images to generate")
  parser.add_argument("--epochs", type=int, default=None, help="override configs/demo.py's num_epochs")
  args = parser.parse_args(argv)
  if args.num_images < 2:
    parser.error(f"--num-images {args.num_images}: must be >= 2 (a train and a test image)")

  from configs import demo

  data, work = os.path.join(args.workdir, "data"), os.path.join(args.workdir, "train")
  config = demo.get_config()
  config.data_dir = data
  if args.epochs is not None:
    config.num_epochs = args.epochs
  start = time.perf_counter()
  phases: dict[str, float] = {}  # wall seconds of each step, for the last line
  info = existing_data(data, args.num_images, config.image_size)  # before anything slow
  # Imported here, not at the top, so that `--help` and the checks above answer without JAX and TensorFlow.
  from keypatch_jax import evaluate, sample, train
  from preprocessing.__main__ import main as preprocess

  if info is not None:
    c = info["counts"]
    print(f"[demo 1/4] using the {c['train']} train + {c['test']} test images already in {data}", flush=True)
  else:
    print(f"[demo 1/4] preprocessing {args.num_images} synthetic images -> {data}", flush=True)
    argv_pre = ["--source", SOURCE, "--num-images", str(args.num_images), "--image-size", str(config.image_size)]
    argv_pre += ["--edges", EDGES]
    if preprocess([*argv_pre, "--preview", "8", "--output", data]) != 0:
      return 1
  phases["preprocessing"] = time.perf_counter() - start
  print(f"[demo 2/4] training configs/demo.py -> {work}", flush=True)
  summary = train.train_and_evaluate(config, work)
  phases["training"] = time.perf_counter() - start - sum(phases.values())
  samples, metrics = os.path.join(args.workdir, "samples.png"), os.path.join(args.workdir, "metrics.json")
  print(f"[demo 3/4] sampling -> {samples}", flush=True)
  if sample.main(["--workdir", work, "--data", data, "--output", samples, "--num", "8"]) != 0:
    return 1
  phases["sampling"] = time.perf_counter() - start - sum(phases.values())
  print(f"[demo 4/4] evaluating -> {metrics}", flush=True)
  if evaluate.main(["--workdir", work, "--data", data, "--output", metrics]) != 0:
    return 1
  phases["evaluation"] = time.perf_counter() - start - sum(phases.values())
  print(summary_line(summary, metrics, time.perf_counter() - start, samples, work, phases), flush=True)
  return 0


def summary_line(
  summary: dict, metrics_path: str, seconds: float, samples: str, work: str, phases: dict[str, float] | None = None
) -> str:
  """The demo's last line: the headline metrics next to their patch-blind baselines.

  Args:
    summary: `train.train_and_evaluate`'s summary ("step", "steps_per_s").
    metrics_path: the evaluate command's JSON.
    seconds: the demo's wall time.
    samples, work: paths the line points to.
    phases: wall seconds of each step by name, shown after the total.
  """
  with open(metrics_path) as f:
    m = json.load(f)
  rate = summary["steps_per_s"]
  trained = f"{rate:.2f} steps/s" if rate == rate else "trained earlier"
  split = f" ({', '.join(f'{k} {v:.0f} s' for k, v in phases.items())})" if phases else ""
  return (
    f"demo done in {seconds:.0f} s{split}: {summary['step']} steps ({trained}); on the test split, mask IoU "
    f"{m['mask_iou']:.3f} vs {m['blind_mask_iou']:.3f} for a patch-blind mean mask, masked PSNR "
    f"{m['masked_psnr']:.1f} dB vs {m['blind_masked_psnr']:.1f} dB and image PSNR "
    f"{m['image_psnr']:.1f} dB vs {m['blind_image_psnr']:.1f} dB for the train split's mean image; "
    f"see {samples}, {metrics_path} and `tensorboard --logdir {work}`"
  )


main, run = cli.command(PROG, _demo)

if __name__ == "__main__":
  run()
