"""The end-to-end demo: preprocess the built-in synthetic faces, train, sample, evaluate.

  python -m keypatch_jax.demo --workdir demo_work

Writes `WORKDIR/data` (TFRecords + previews), `WORKDIR/train` (checkpoints,
TensorBoard logs), `WORKDIR/samples.png` (patches | mask | generated | real)
and `WORKDIR/metrics.json`. Every stage resumes: rerunning after an
interruption continues where it stopped. It is the same as running

  python -m preprocessing --source synthetic --num-images 2000 --image-size 32 \
      --preview 8 --output WORKDIR/data
  python -m keypatch_jax.main --config configs/demo.py --workdir WORKDIR/train \
      --config.data_dir=WORKDIR/data
  python -m keypatch_jax.sample --workdir WORKDIR/train --data WORKDIR/data --output WORKDIR/samples.png
  python -m keypatch_jax.evaluate --workdir WORKDIR/train --data WORKDIR/data --output WORKDIR/metrics.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="keypatch_jax.demo", description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="demo_work", help="where everything is written")
  parser.add_argument("--num-images", type=int, default=2000, help="synthetic images to generate")
  parser.add_argument("--epochs", type=int, default=None, help="override configs/demo.py's num_epochs")
  args = parser.parse_args(argv)

  from configs import demo
  from keypatch_jax import evaluate, features, sample, train
  from preprocessing.__main__ import main as preprocess

  data, work = os.path.join(args.workdir, "data"), os.path.join(args.workdir, "train")
  config = demo.get_config()
  config.data_dir = data
  if args.epochs is not None:
    config.num_epochs = args.epochs
  start = time.perf_counter()
  print(f"[demo 1/4] preprocessing {args.num_images} synthetic images -> {data}", flush=True)
  if not os.path.exists(os.path.join(data, features.INFO_FILE)):
    argv_pre = [
      "--source",
      "synthetic",
      "--num-images",
      str(args.num_images),
      "--image-size",
      str(config.image_size),
      "--preview",
      "8",
      "--output",
      data,
    ]
    if preprocess(argv_pre) != 0:
      return 1
  print(f"[demo 2/4] training configs/demo.py -> {work}", flush=True)
  try:
    summary = train.train_and_evaluate(config, work)
  except (train.ConfigError, train.NonFiniteLossError, ValueError) as e:
    print(f"keypatch_jax.demo: error: {e}", file=sys.stderr)
    return 1
  samples, metrics = os.path.join(args.workdir, "samples.png"), os.path.join(args.workdir, "metrics.json")
  print(f"[demo 3/4] sampling -> {samples}", flush=True)
  if sample.main(["--workdir", work, "--data", data, "--output", samples, "--num", "8"]) != 0:
    return 1
  print(f"[demo 4/4] evaluating -> {metrics}", flush=True)
  if evaluate.main(["--workdir", work, "--data", data, "--output", metrics]) != 0:
    return 1
  with open(metrics) as f:
    masked_psnr = json.load(f)["masked_psnr"]
  print(
    f"demo done in {time.perf_counter() - start:.0f} s: {summary['step']} steps at "
    f"{summary['steps_per_s']:.2f} steps/s; test mask IoU {summary['mask_iou']:.3f} "
    f"(an all-ones mask scores {summary['mask_iou_all_ones']:.3f}), masked PSNR {masked_psnr:.1f} dB; "
    f"see {samples} and `tensorboard --logdir {work}`",
    flush=True,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
