"""`python -m preprocessing` / `keypatch-preprocess`: images -> key patches -> TFRecords.

Example (the built-in demo dataset):

  python -m preprocessing --source synthetic --num-images 2000 --output DATA \
      --image-size 64 --preview 8
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool

from preprocessing import detect, images, run, sources, worker, writer


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    """One line, exit code 2 (argparse's default prints the usage as well)."""
    self.exit(2, f"{self.prog}: error: {message}\n")


def default_workers() -> int:
  """The cores this process may use."""
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog="preprocessing", description=__doc__.splitlines()[0])
  a = p.add_argument
  a("--source", required=True, help="folder:PATH | tfds:NAME[:split] | synthetic[:varied|aligned]")
  a("--output", required=True, help="output directory (local or gs://)")
  a("--num-images", type=int, default=2000, help="synthetic source: number of images")
  a("--image-size", type=int, default=64, help="S, side of the stored images (64/128/256)")
  a("--min-side", type=int, default=128, help="shorter side of the detection frame")
  a("--center-crop", type=int, default=0, help="central crop side before resizing (celeba: 108)")
  a("--num-patches", type=int, default=3, help="N, boxes per image")
  a("--min-area", type=float, default=0.05, help="min box area, fraction of the image")
  a("--max-area", type=float, default=0.25, help="max box area, fraction of the image")
  a("--max-aspect", type=float, default=3.0, help="keep 1/A <= w/h <= A")
  a("--nms-iou", type=float, default=0.3, help="greedy NMS IoU threshold")
  a(
    "--max-box-height",
    type=float,
    default=None,
    help="waterfall preset (0.7): tall boxes up to this height fraction skip --max-area",
  )
  a("--test-count", type=int, default=128, help="images held out by id hash for the test split")
  a("--shard-size", type=int, default=1024, help="source images per shard")
  a("--workers", type=int, default=default_workers(), help="worker processes (default: all cores)")
  a("--sed-model", default=None, help="structured-edge model (model.yml.gz); default: gradient")
  a("--preview", type=int, default=0, help="write K preview PNGs with boxes to OUTPUT/preview")
  a("--seed", type=int, default=0, help="seed of the synthetic source")
  a("--quiet", action="store_true", help="no progress bar")
  return p


def check_options(args: argparse.Namespace) -> str | None:
  """The first invalid option as a one-line message, else None."""
  rules = [
    (args.num_patches < 1, f"--num-patches {args.num_patches}: must be >= 1"),
    (args.image_size < 8, f"--image-size {args.image_size}: must be >= 8"),
    (args.min_side < images.MIN_SIDE, f"--min-side {args.min_side}: must be >= {images.MIN_SIDE}"),
    (not 0 < args.min_area <= 1, f"--min-area {args.min_area}: must be in (0, 1]"),
    (not 0 < args.max_area <= 1, f"--max-area {args.max_area}: must be in (0, 1]"),
    (
      args.min_area > args.max_area,
      f"--min-area {args.min_area} is larger than --max-area {args.max_area}",
    ),
    (args.max_aspect < 1, f"--max-aspect {args.max_aspect}: must be >= 1"),
    (not 0 <= args.nms_iou <= 1, f"--nms-iou {args.nms_iou}: must be in [0, 1]"),
    (
      args.max_box_height is not None and not 0 < args.max_box_height <= 1,
      f"--max-box-height {args.max_box_height}: must be in (0, 1]",
    ),
    (args.test_count < 0, f"--test-count {args.test_count}: must be >= 0"),
    (args.shard_size < 1, f"--shard-size {args.shard_size}: must be >= 1"),
    (args.workers < 1, f"--workers {args.workers}: must be >= 1"),
    (args.preview < 0, f"--preview {args.preview}: must be >= 0"),
    (args.center_crop < 0, f"--center-crop {args.center_crop}: must be >= 0"),
    (
      args.sed_model is not None and not os.path.isfile(args.sed_model),
      f"--sed-model {args.sed_model}: no such file",
    ),
  ]
  return next((msg for bad, msg in rules if bad), None)


def make_settings(args: argparse.Namespace) -> worker.Settings:
  box_filter = detect.BoxFilter(
    num_patches=args.num_patches,
    min_area=args.min_area,
    max_area=args.max_area,
    max_aspect=args.max_aspect,
    nms_iou=args.nms_iou,
    max_box_height=args.max_box_height,
  )
  return worker.Settings(
    image_size=args.image_size,
    min_side=args.min_side,
    center_crop=args.center_crop,
    box_filter=box_filter,
    sed_model=args.sed_model,
  )


def _check_sed_model(path: str) -> str | None:
  import cv2

  try:
    cv2.ximgproc.createStructuredEdgeDetection(path)
  except cv2.error:
    return f"--sed-model {path}: not a readable structured-edge model"
  return None


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns 0, or exits 2 with a one-line error."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ logs quiet
  parser = build_parser()
  args = parser.parse_args(argv)
  msg = check_options(args)
  if msg is None and args.sed_model:
    msg = _check_sed_model(args.sed_model)
  if msg:
    parser.error(msg)
  try:
    source = sources.open_source(args.source, num_images=args.num_images, seed=args.seed)
    if args.test_count >= len(source.ids):
      parser.error(f"--test-count {args.test_count}: must be smaller than the {len(source.ids)} source images")
    options = vars(args).copy()
    if args.source.partition(":")[0] != "synthetic":
      options.pop("num_images")
      options.pop("seed")
    info = run.run(options, source, make_settings(args))
  except (sources.SourceError, writer.OutputError) as e:
    parser.error(str(e))
  except BrokenProcessPool as e:
    print(f"{parser.prog}: error: a worker process died ({e}); rerun to resume", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"{parser.prog}: interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  c = info["counts"]
  rejected = sum(info["rejects"].values())
  print(
    f"wrote {c['train']} train + {c['test']} test examples to {args.output} ({rejected} rejected: {info['rejects']})"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
