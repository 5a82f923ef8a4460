"""Cross-evaluation: does a model trained on our key patches place the authors' ones? (README "Cross-evaluation")

  python benchmarks/cross_eval.py --boxes ../shared/data/official_boxes/celebA_allbbs_first8100.mat \
      --folder ../shared/data/celeba_train --folder ../shared/data/celeba --workdir cross_work \
      [--train-ids 1:7001] [--test-ids 7001:8101] [--epochs 6] [--quick] [--redo ours] [DETECTION FLAGS]

The faces of the --folder folders whose number k (file 00000k.jpg) lies in
--train-ids or --test-ids (A:B, A <= k < B) and has a row in the authors'
.mat file are preprocessed twice, as the paper prepares CelebA: the central
108 px crop of the 178 px wide aligned face (scaled to the faces' width: 54 px
of the half-size copies) at the network's image size, once with our detection
(`python -m preprocessing`'s defaults plus the DETECTION FLAGS, any of its
detection options) and once with the authors' boxes (`--boxes FILE
--boxes-scale 128`). The train ids make a train-only dataset
(`--test-count 0`), the test ids a test-only one (every image in the test
split). On each train set the demo network (configs/small.py:demo) trains for
--epochs; each model is then evaluated (`keypatch_jax.evaluate`) with the test
faces' key patches of both kinds, against the patch-blind baseline of its own
training set (the mean box-union mask and mean image of that train split).

Everything lives under --workdir: faces/ (links to the chosen files),
ours/ and authors/ (train_data, test_data, model, plan.json), evals/ (each
evaluation's table and JSON), jax_cache/ (compiled programs, so the second
model and a rerun skip most of the compile) and cross_eval.json (the last
result). A finished dataset or model is reused when its plan (faces, options,
epochs) is the same, and refused in one line when not; `--redo ours` rebuilds only our detection's
data and model (after a change to the detection code) and keeps the authors'.
An id found in several folders is taken from the first folder that has it;
the chosen faces must all have one size. The authors' boxes are read only to
preprocess their own datasets, never by our detection. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from keypatch_jax import cli, errors  # noqa: E402

PROG = "cross_eval.py"
KINDS = {"ours": "our detection", "authors": "the authors' boxes"}  # the two key-patch kinds, in table order
PAPER_CROP, PAPER_WIDTH = 108, 178  # the paper's central crop of CelebA's 178 x 218 aligned faces
QUICK_TRAIN, QUICK_TEST, QUICK_EPOCHS = 400, 100, 1  # --quick
# Preprocessing options this benchmark sets itself (not DETECTION FLAGS).
RESERVED = (
  "source", "output", "image_size", "center_crop", "num_patches", "test_count", "boxes", "boxes_scale", "boxes_row",
  "workers", "preview", "quiet", "num_tasks", "task_index", "merge", "num_images", "seed", "tfds_data_dir",
)  # fmt: skip


class CrossEvalError(errors.UsageError):
  """An option or the workdir cannot be used (one line, exit status 2)."""


def parse_ids(flag: str, text: str) -> tuple[int, int]:
  """'A:B' -> (A, B) with 0 <= A < B."""
  m = re.fullmatch(r"(\d+):(\d+)", text)
  if not m or int(m.group(1)) >= int(m.group(2)):
    raise CrossEvalError(f"{flag} {text!r}: give A:B, image numbers A <= k < B with A < B")
  return int(m.group(1)), int(m.group(2))


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
  """(the benchmark's options, the DETECTION FLAGS for `python -m preprocessing`)."""
  p = cli.ArgumentParser(prog=PROG, description=__doc__, allow_abbrev=False)
  p.add_argument("--boxes", required=True, help="the authors' celebA_allbbs .mat (row k-1 = image k)")
  p.add_argument("--boxes-scale", type=float, default=128.0, help="the .mat boxes' F x F frame over the crop")
  p.add_argument("--folder", action="append", required=True, help="folder of numbered aligned faces (repeatable)")
  p.add_argument("--workdir", required=True, help="where everything is kept (and reused from)")
  p.add_argument("--train-ids", default="1:7001", help="A:B, the faces k (A <= k < B) to train on")
  p.add_argument("--test-ids", default="7001:8101", help="A:B, the faces k to evaluate on")
  p.add_argument("--epochs", type=int, default=None, help="training epochs of each model (default 6; --quick 1)")
  p.add_argument("--config", choices=("demo", "tiny"), default="demo", help="configs/small.py row to train")
  p.add_argument(
    "--quick", action="store_true", help=f"the first {QUICK_TRAIN} train and {QUICK_TEST} test faces, 1 epoch"
  )
  p.add_argument("--redo", action="append", choices=tuple(KINDS), default=[], help="rebuild this kind's data, model")
  p.add_argument("--workers", type=int, default=None, help="preprocessing worker processes (default: all cores)")
  p.add_argument("--quiet", action="store_true", help="no preprocessing progress bars")
  args, rest = p.parse_known_args(argv)
  if args.epochs is None:
    args.epochs = QUICK_EPOCHS if args.quick else 6
  if args.epochs < 1:
    raise CrossEvalError(f"--epochs {args.epochs}: must be >= 1")
  return args, rest


def detection_flags(rest: list[str]) -> list[str]:
  """`rest` checked as `python -m preprocessing` detection options (one-line errors, before anything slow)."""
  from preprocessing import __main__ as pre

  unset, mark = object(), "\0unset"  # what a reserved option holds unless `rest` gives it (required ones: mark)
  given = pre.build_parser()
  given.prog = PROG
  given.set_defaults(**dict.fromkeys(RESERVED, unset))
  parsed = vars(given.parse_args(["--source", mark, "--output", mark, *rest]))
  for dest in RESERVED:
    if parsed[dest] not in (unset, mark):
      raise CrossEvalError(f"--{dest.replace('_', '-')}: set by {PROG} itself, not a detection flag")
  msg = pre.check_options(pre.parse_args(["--source", "-", "--output", "-", *rest]))
  if msg:
    raise CrossEvalError(msg)
  return list(rest)


def numbered_faces(folders: Sequence[str], lo: int, hi: int) -> dict[int, str]:
  """k -> path of the files named <digits>.jpg|jpeg|png with lo <= k < hi; an id in several folders: the first's."""
  found: dict[int, str] = {}
  for folder in folders:
    if not os.path.isdir(folder):
      raise CrossEvalError(f"--folder {folder!r} is not a directory")
    for name in sorted(os.listdir(folder)):
      m = re.fullmatch(r"(\d+)\.(jpe?g|png)", name, re.IGNORECASE)
      if m and lo <= int(m.group(1)) < hi:
        found.setdefault(int(m.group(1)), os.path.abspath(os.path.join(folder, name)))
  return dict(sorted(found.items()))


def common_size(paths: Sequence[str]) -> tuple[int, int]:
  """(width, height) shared by all the images (read from their headers)."""
  from PIL import Image

  sizes: dict[tuple[int, int], str] = {}
  for path in paths:
    with Image.open(path) as image:
      sizes.setdefault(image.size, path)
  if len(sizes) > 1:
    (a, pa), (b, pb) = list(sizes.items())[:2]
    raise CrossEvalError(
      f"--folder: the chosen faces have several sizes ({pa} is {a[0]}x{a[1]}, {pb} {b[0]}x{b[1]}); "
      "give folders of one size first (an id is taken from the first folder that has it)"
    )
  return next(iter(sizes))


def choose_faces(args: argparse.Namespace, num_rows: int) -> dict[str, dict[int, str]]:
  """{"train": {k: path}, "test": {k: path}}: the numbered faces of each range with a row in the boxes file."""
  train, test = parse_ids("--train-ids", args.train_ids), parse_ids("--test-ids", args.test_ids)
  if train[0] < test[1] and test[0] < train[1]:
    raise CrossEvalError(f"--train-ids {args.train_ids} and --test-ids {args.test_ids} overlap")
  faces = {}
  for split, (lo, hi), limit in (("train", train, QUICK_TRAIN), ("test", test, QUICK_TEST)):
    chosen = {k: p for k, p in numbered_faces(args.folder, lo, hi).items() if k <= num_rows}
    if args.quick:
      chosen = dict(list(chosen.items())[:limit])
    if not chosen:
      raise CrossEvalError(f"--{split}-ids {lo}:{hi}: no numbered faces with a row in {args.boxes} in {args.folder}")
    faces[split] = chosen
  return faces


def link_faces(folder: str, faces: dict[int, str]) -> None:
  """`folder` holds exactly one link per face, named as its file (rebuilt only when it differs)."""
  want = {os.path.basename(path): path for path in faces.values()}
  if os.path.isdir(folder) and {n: os.readlink(os.path.join(folder, n)) for n in os.listdir(folder)} == want:
    return
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  for name, path in want.items():
    os.symlink(path, os.path.join(folder, name))


def fingerprint(faces: dict[int, str]) -> str:
  """sha1 of the chosen (number, file) pairs."""
  return hashlib.sha1(json.dumps(sorted(faces.items())).encode()).hexdigest()


def preprocess_flags(kind: str, args: argparse.Namespace, flags: list[str]) -> list[str]:
  """The `python -m preprocessing` options that make `kind`'s key patches."""
  if kind == "ours":
    return flags
  return ["--boxes", os.path.abspath(args.boxes), "--boxes-scale", f"{args.boxes_scale:g}", "--boxes-row", "number"]


def check_plan(kind_dir: str, plan: dict) -> None:
  """Refuses a kind folder made for another plan (one line naming what differs and `--redo`)."""
  path = os.path.join(kind_dir, "plan.json")
  if not os.path.exists(kind_dir):
    return
  kind, old = os.path.basename(kind_dir), None
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
  if old != plan:
    diff = "no plan.json" if old is None else ", ".join(k for k in plan if old.get(k) != plan[k])
    raise CrossEvalError(
      f"{kind_dir} was made for other options ({diff}); pass --redo {kind} to rebuild it, or use another --workdir"
    )


def preprocess(data: str, faces: str, split: str, count: int, flags: list[str]) -> bool:
  """Writes `data` from the `count` linked `faces`, train-only or test-only, unless done; whether it ran."""
  if os.path.exists(os.path.join(data, "dataset_info.json")):
    return False
  from preprocessing.__main__ import main as preprocessing

  split_options = ["--test-count", "0", "--preview", "8"] if split == "train" else ["--test-count", str(count)]
  argv = ["--source", f"folder:{faces}", "--output", data, *split_options, *flags]
  print(f"[cross_eval] python -m preprocessing {' '.join(argv)}", flush=True)
  status = preprocessing(argv)
  if status != 0:
    raise errors.UserError(f"preprocessing {data} failed (exit status {status}); rerun to resume")
  return True


def train(model: str, data: str, config_name: str, epochs: int) -> bool:
  """Trains configs/small.py:`config_name` on `data` for `epochs` into `model` unless done; whether it ran."""
  done = os.path.join(model, "done.json")
  if os.path.exists(done):
    return False
  from configs import small
  from keypatch_jax import train as training

  config = small.get_config(config_name)
  config.data_dir, config.num_epochs, config.num_train_steps = data, epochs, -1
  print(f"[cross_eval] training configs/small.py:{config_name} for {epochs} epochs on {data} -> {model}", flush=True)
  summary = training.train_and_evaluate(config, model)
  with open(done, "w") as f:
    json.dump({k: v for k, v in summary.items() if isinstance(v, (int, float, str))}, f)
  return True


CELL_KEYS = ("mask_iou", "blind_mask_iou", "masked_psnr", "blind_masked_psnr", "num_images", "baseline_images")


def evaluate(model: str, test_data: str, baseline: str, out: str) -> dict:
  """`keypatch_jax.evaluate` of `model` on `test_data` against the train split of `baseline`: a table cell.

  The evaluation's JSON goes to `out`, its printed table to `out`.txt.
  Returns the `CELL_KEYS` figures and mask_iou_gain (mask IoU over the patch-blind mask).
  """
  from keypatch_jax import evaluate as evaluation

  with open(out + ".txt", "w") as table, contextlib.redirect_stdout(table):
    status = evaluation.main(["--workdir", model, "--data", test_data, "--baseline-data", baseline, "--output", out])
  if status != 0:
    raise errors.UserError(f"evaluating {model} on {test_data} failed (exit status {status}; see above)")
  with open(out) as f:
    result = json.load(f)
  cell = {k: result[k] for k in CELL_KEYS}
  cell["mask_iou_gain"] = round(result["mask_iou"] - result["blind_mask_iou"], 4)
  return cell


def cell_text(cell: dict) -> str:
  """'mask IoU (baseline) / masked PSNR (baseline)' of one evaluation."""
  return (
    f"{cell['mask_iou']:.3f} ({cell['blind_mask_iou']:.3f}) / "
    f"{cell['masked_psnr']:.1f} dB ({cell['blind_masked_psnr']:.1f})"
  )


def format_table(cells: dict[str, dict]) -> list[str]:
  """The issue's table in Markdown: rows trained on, columns evaluated with; then each model's gain per column."""
  lines = [
    "| trained on ↓, evaluated with the key patches of → | " + " | ".join(KINDS.values()) + " |",
    "|---" * (1 + len(KINDS)) + "|",
  ]
  for row, label in KINDS.items():
    lines.append(f"| {label} | " + " | ".join(cell_text(cells[f"{row}_on_{col}"]) for col in KINDS) + " |")
  for row, label in KINDS.items():
    gains = ", ".join(f"{cells[f'{row}_on_{c}']['mask_iou_gain']:+.3f} on {KINDS[c]}" for c in KINDS)
    lines.append(f"trained on {label}: mask IoU over its patch-blind mask {gains}")
  return lines


def _cross_eval(argv: Sequence[str] | None) -> int:
  args, rest = parse_args(argv)
  flags = detection_flags(rest)
  from configs import small
  from preprocessing import boxes_file

  config = small.get_config(args.config)
  authors = boxes_file.load(args.boxes)
  if authors.format != "mat":
    raise CrossEvalError(f"--boxes {args.boxes}: the authors' .mat file is needed (row k-1 = image k)")
  num_patches = authors.rows.shape[1]
  faces = choose_faces(args, len(authors.rows))
  width, height = common_size([*faces["train"].values(), *faces["test"].values()])
  crop = round(PAPER_CROP * width / PAPER_WIDTH)
  root = os.path.abspath(args.workdir)
  content = ["--image-size", str(config.image_size), "--center-crop", str(crop), "--num-patches", str(num_patches)]
  plans = {
    kind: {
      "faces": {split: fingerprint(f) for split, f in faces.items()},
      "preprocessing": [*content, *preprocess_flags(kind, args, flags)],
      "boxes_sha256": authors.sha256,
      "config": args.config,
      "epochs": args.epochs,
    }
    for kind in KINDS
  }
  for kind in KINDS:  # before anything slow, and before the linked faces change
    if kind not in args.redo:
      check_plan(os.path.join(root, kind), plans[kind])
  for kind in args.redo:
    shutil.rmtree(os.path.join(root, kind), ignore_errors=True)
  start = time.perf_counter()
  for split, chosen in faces.items():
    link_faces(os.path.join(root, "faces", split), chosen)
  print(
    f"[cross_eval] {len(faces['train'])} train faces (ids {args.train_ids}), {len(faces['test'])} test faces "
    f"(ids {args.test_ids}), {width}x{height}: central {crop} px crop, {config.image_size} px, N={num_patches}; "
    f"configs/small.py:{args.config}, {args.epochs} epochs; detection flags: {' '.join(flags) or '(defaults)'}",
    flush=True,
  )
  seconds: dict[str, float] = {}
  reused: list[str] = []

  def timed(name: str, step, *step_args) -> None:
    t0 = time.perf_counter()
    if not step(*step_args):
      reused.append(name)
    seconds[name] = round(time.perf_counter() - t0, 1)

  extra = (["--workers", str(args.workers)] if args.workers else []) + (["--quiet"] if args.quiet else [])
  for kind in KINDS:  # all preprocessing first: its worker processes start before JAX does
    os.makedirs(os.path.join(root, kind), exist_ok=True)
    with open(os.path.join(root, kind, "plan.json"), "w") as f:
      json.dump(plans[kind], f, indent=2)
    for split in faces:
      data, linked = os.path.join(root, kind, f"{split}_data"), os.path.join(root, "faces", split)
      flags_of_kind = [*content, *extra, *preprocess_flags(kind, args, flags)]
      timed(f"{kind}/{split}_data", preprocess, data, linked, split, len(faces[split]), flags_of_kind)
  import jax

  if not jax.config.jax_compilation_cache_dir:  # the second model and every rerun reuse the compiled programs
    jax.config.update("jax_compilation_cache_dir", os.path.join(root, "jax_cache"))
  for kind in KINDS:
    model, data = os.path.join(root, kind, "model"), os.path.join(root, kind, "train_data")
    timed(f"{kind}/model", train, model, data, args.config, args.epochs)
  os.makedirs(os.path.join(root, "evals"), exist_ok=True)
  cells = {}
  for row in KINDS:
    for col in KINDS:
      name, t0 = f"{row}_on_{col}", time.perf_counter()
      model, baseline = os.path.join(root, row, "model"), os.path.join(root, row, "train_data")
      test, out = os.path.join(root, col, "test_data"), os.path.join(root, "evals", f"{name}.json")
      cells[name] = evaluate(model, test, baseline, out)
      seconds[f"evals/{name}"] = round(time.perf_counter() - t0, 1)
  counts = {kind: {split: example_count(root, kind, split) for split in faces} for kind in KINDS}
  total = time.perf_counter() - start
  print(
    "mask IoU (patch-blind baseline: the training set's mean mask) / masked PSNR (the training set's mean image); "
    + "; ".join(f"{KINDS[k]}: {c['train']} train, {c['test']} test examples" for k, c in counts.items())
  )
  print("\n".join(format_table(cells)))
  phases = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
  print(f"{total:.0f} s in all ({phases}); reused: {', '.join(reused) or 'nothing'}")
  result = {
    "train_ids": args.train_ids,
    "test_ids": args.test_ids,
    "quick": args.quick,
    "faces": {split: len(f) for split, f in faces.items()},
    "center_crop": crop,
    "image_size": config.image_size,
    "config": f"configs/small.py:{args.config}",
    "epochs": args.epochs,
    "detection_flags": " ".join(flags),
    "examples": counts,
    "cells": cells,
    "seconds": {**seconds, "total": round(total, 1)},
    "reused": reused,
  }
  with open(os.path.join(root, "cross_eval.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result))
  return 0


def example_count(root: str, kind: str, split: str) -> int:
  """Examples written to `kind`'s `split` dataset (faces minus the rejected ones)."""
  with open(os.path.join(root, kind, f"{split}_data", "dataset_info.json")) as f:
    return int(json.load(f)["counts"][split])


def main(argv: Sequence[str] | None = None) -> int:
  """The benchmark on `argv`; returns the exit status (a user error: one line on stderr)."""
  return cli.run_command(PROG, _cross_eval, argv)


if __name__ == "__main__":
  cli.quiet_logs(cli.verbosity_of(sys.argv[1:]))
  sys.exit(main())
