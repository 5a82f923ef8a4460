"""How close the default key-patch detection comes to the authors' CelebA boxes.

  python benchmarks/boxes_bench.py --boxes ../shared/data/official_boxes/celebA_allbbs_first8100.mat \
      --folder ../shared/data/celeba_train --folder ../shared/data/celeba --ids 7001:8101 [DETECTION FLAGS]

Every image of the folders whose number k (file 00000k.jpg) lies in --ids A:B
(A <= k < B) and has a row in the authors' file is prepared like the paper:
the central 108 px crop of the 178 px wide aligned face (scaled to the file's
width: 54 px of the half-size copies), detected by `preprocessing`'s own
`worker.detect_boxes` with the given detection flags (any `python -m
preprocessing` option, e.g. `--key-patches paper`), in the 128 x 128 frame the
authors' boxes use. Printed for our boxes and for the authors':

  matched IoU     the mean IoU of the best one-to-one pairing of our N boxes
                  with their N (Hungarian; a missing box pairs with 0);
  box areas       mean area of the smallest .. largest box of an image,
                  fraction of the frame;
  centre spread   std of the N box centres within an image, x and y, fraction
                  of the side, averaged over images;
  patch-blind     IoU with each test image's box union of the mean box-union
                  mask of the --train-ids images thresholded at 0.5 (what
                  `evaluate` calls the patch-blind mask): high when the boxes
                  are the same blob on every face, i.e. the task is easy;
  union IoU       (secondary) IoU of the union of our boxes with theirs.

Images where fewer than N boxes survive the filters count with the boxes they
have (none: 0). Two image-blind references: one fixed "average face" box set
(per slot, the mean of the authors' boxes of the --train-ids rows, each row's
boxes sorted top to bottom), and the best fixed mask for union IoU (their
union frequency over the --train-ids rows thresholded at the t that maximises
the mean union IoU there).
The authors' boxes are only read here, to score: never in the detection path.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np
import scipy.io
import scipy.optimize

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from preprocessing import __main__ as cli  # noqa: E402
from preprocessing import images, worker  # noqa: E402

FRAME = 128  # the authors' boxes: (x, y, w, h) in a 128 x 128 frame of the 108 px crop
PAPER_CROP, PAPER_WIDTH = 108, 178  # CelebA aligned faces are 178 x 218


def union_mask(boxes: np.ndarray, size: int = FRAME) -> np.ndarray:
  """bool [size, size]: pixels covered by any (x, y, w, h) box of [K, 4] (rounded to pixels)."""
  mask = np.zeros((size, size), bool)
  for x, y, w, h in np.asarray(boxes, np.float64).reshape(-1, 4):
    x0, y0 = int(round(max(x, 0))), int(round(max(y, 0)))
    x1, y1 = int(round(min(x + w, size))), int(round(min(y + h, size)))
    mask[y0:y1, x0:x1] = True
  return mask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
  """IoU of two bool masks of one shape (0 when both are empty)."""
  return float((a & b).sum() / max((a | b).sum(), 1))


def union_iou(ours: np.ndarray, theirs: np.ndarray) -> float:
  return mask_iou(union_mask(ours), union_mask(theirs))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
  x0, y0 = max(a[0], b[0]), max(a[1], b[1])
  x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
  inter = max(x1 - x0, 0) * max(y1 - y0, 0)
  return float(inter / max(a[2] * a[3] + b[2] * b[3] - inter, 1e-9))


def matched_iou(ours: np.ndarray, theirs: np.ndarray) -> float:
  """Mean IoU of the best one-to-one pairing of boxes [M, 4] with [N, 4], divided by N (unpaired count 0)."""
  if len(ours) == 0:
    return 0.0
  table = np.array([[box_iou(t, o) for o in ours] for t in theirs])
  rows, cols = scipy.optimize.linear_sum_assignment(-table)
  return float(table[rows, cols].sum() / len(theirs))


def box_stats(boxes: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
  """(mean area of the smallest .. largest box [n], mean within-image centre std (x, y) [2]) of per-image boxes.

  Areas and centres are fractions of the FRAME; an image with fewer boxes adds to the ranks it has.
  """
  areas = np.full((len(boxes), n), np.nan)
  spread = np.zeros((len(boxes), 2))
  for i, b in enumerate(boxes):
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if len(b):
      areas[i, : len(b)] = np.sort(b[:, 2] * b[:, 3] / FRAME**2)[:n]
      spread[i] = np.std(b[:, :2] + b[:, 2:] / 2, axis=0) / FRAME
  return np.nanmean(areas, axis=0), spread.mean(axis=0)


def patch_blind_iou(train_boxes: list[np.ndarray], test_boxes: list[np.ndarray]) -> float:
  """Mean IoU with each test union of the train unions' mean mask thresholded at 0.5."""
  blind = np.mean([union_mask(b) for b in train_boxes], axis=0) >= 0.5
  return float(np.mean([mask_iou(blind, union_mask(b)) for b in test_boxes]))


def numbered_files(folders: list[str], lo: int, hi: int) -> list[tuple[int, str]]:
  """(k, path) of files <digits>.jpg|png, lo <= k < hi, sorted by k; a number in several folders: the first's."""
  found: dict[int, tuple[int, str]] = {}
  for order, folder in enumerate(folders):
    for name in os.listdir(folder):
      m = re.fullmatch(r"(\d+)\.(jpe?g|png)", name, re.IGNORECASE)
      if m and lo <= int(m.group(1)) < hi:
        found.setdefault(int(m.group(1)), (order, os.path.join(folder, name)))
  return [(k, found[k][1]) for k in sorted(found)]


def paper_crop(image: np.ndarray) -> np.ndarray:
  """The paper's central 108 px crop of a 178 px wide face, scaled to this image's width."""
  return images.center_crop(image, round(PAPER_CROP * image.shape[1] / PAPER_WIDTH))


def average_face(allbbs: np.ndarray) -> np.ndarray:
  """[N, 4]: per slot, the mean box of [R, N, 4] after sorting each row's boxes by their centre y."""
  centre_y = allbbs[:, :, 1] + allbbs[:, :, 3] / 2
  order = np.argsort(centre_y, axis=1, kind="stable")
  return np.take_along_axis(allbbs, order[:, :, None], axis=1).mean(axis=0)


def best_fixed_mask(allbbs: np.ndarray, steps: int = 40) -> tuple[np.ndarray, float]:
  """bool [FRAME, FRAME]: the union-frequency map of [R, N, 4] thresholded at the t maximising mean union IoU on them.

  Returns:
    (mask, t).
  """
  unions = np.stack([union_mask(row) for row in allbbs])  # [R, FRAME, FRAME]
  freq = unions.mean(axis=0)
  flat = unions.reshape(len(unions), -1)
  best = (-1.0, 0.0)
  for t in np.linspace(0.05, 0.8, steps):
    m = (freq >= t).reshape(-1)
    inter = (flat & m).sum(1)
    iou = inter / np.maximum(flat.sum(1) + m.sum() - inter, 1)
    best = max(best, (float(iou.mean()), float(t)))
  return freq >= best[1], best[1]


def parse_ids(text: str, flag: str, p: argparse.ArgumentParser) -> tuple[int, int]:
  try:
    lo, hi = (int(v) for v in text.split(":"))
  except ValueError:
    p.error(f"{flag} {text}: expected A:B (image numbers A <= k < B)")
  return lo, hi


def detect_on(files: list[tuple[int, str]], settings) -> list[np.ndarray]:
  """Our boxes [M, 4] in the FRAME of each (k, path), detected like preprocessing on the paper's crop."""
  out = []
  for _, path in files:
    boxes, (h, w) = worker.detect_boxes(paper_crop(images.read_image_file(path)), settings)
    out.append(boxes * np.array([FRAME / w, FRAME / h, FRAME / w, FRAME / h], np.float32))
  return out


def describe(name: str, r: dict) -> str:
  areas = " / ".join(f"{a:.3f}" for a in r["box_areas"])
  return (
    f"  {name:<16} matched IoU {r['matched_iou']:.3f}  union IoU {r['union_iou']:.3f}  "
    f"box areas {areas}  centre spread {r['centre_spread'][0]:.3f} / {r['centre_spread'][1]:.3f}  "
    f"patch-blind mask IoU {r['patch_blind_iou']:.3f}"
  )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--boxes", required=True, help="the authors' celebA_allbbs .mat (row k-1 = image k)")
  p.add_argument("--folder", action="append", required=True, help="folder of numbered aligned faces (repeatable)")
  p.add_argument("--ids", default="7001:8101", help="A:B, the test image numbers A <= k < B")
  p.add_argument("--train-ids", default="1:7001", help="A:B, the images of the patch-blind masks and baselines")
  p.add_argument("--limit", type=int, default=0, help="at most this many test images (0: all)")
  p.add_argument("--train-limit", type=int, default=1000, help="train images detected for the patch-blind mask")
  a, rest = p.parse_known_args()
  pre = cli.parse_args(["--source", "synthetic", "--output", "unused", "--workers", "1", *rest])
  msg = cli.check_options(pre)
  if msg:
    p.error(msg)
  settings = cli.make_settings(pre)
  worker.init_worker(settings)
  allbbs = scipy.io.loadmat(a.boxes)["allbbs"].astype(np.float64)
  lo, hi = parse_ids(a.ids, "--ids", p)
  tlo, thi = parse_ids(a.train_ids, "--train-ids", p)
  if max(lo, tlo) < min(hi, thi):
    p.error(f"--ids {a.ids} and --train-ids {a.train_ids} overlap: keep the test faces apart")
  files = [(k, path) for k, path in numbered_files(a.folder, lo, hi) if k <= len(allbbs)]
  train = [(k, path) for k, path in numbered_files(a.folder, tlo, thi) if k <= len(allbbs)]
  if a.limit:
    files = files[: a.limit]
  if not files or not train:
    p.error(f"--ids {a.ids} / --train-ids {a.train_ids}: no numbered images with boxes in {a.folder}")
  step = max(1, len(train) // a.train_limit) if a.train_limit else 1
  train_sample = train[::step][: a.train_limit or None]
  n = settings.box_filter.num_patches
  t0 = time.perf_counter()
  ours = detect_on(files, settings)
  seconds = time.perf_counter() - t0
  ours_train = detect_on(train_sample, settings)
  theirs = [allbbs[k - 1] for k, _ in files]
  theirs_train = [allbbs[k - 1] for k, _ in train]
  baseline = average_face(np.stack(theirs_train))
  fixed, fixed_t = best_fixed_mask(np.stack(theirs_train))

  def summary(boxes: list[np.ndarray], train_boxes: list[np.ndarray]) -> dict:
    areas, spread = box_stats(boxes, n)
    return {
      "matched_iou": round(float(np.mean([matched_iou(b, t) for b, t in zip(boxes, theirs, strict=True)])), 4),
      "union_iou": round(float(np.mean([union_iou(b, t) for b, t in zip(boxes, theirs, strict=True)])), 4),
      "box_areas": [round(float(v), 4) for v in areas],
      "centre_spread": [round(float(v), 4) for v in spread],
      "patch_blind_iou": round(patch_blind_iou(train_boxes, boxes), 4),
    }

  result = {
    "num_images": len(files),
    "ids": a.ids,
    "train_ids": a.train_ids,
    "num_train_images_detected": len(train_sample),
    "detection_flags": " ".join(rest),
    "ours": summary(ours, ours_train),
    "authors": summary(theirs, theirs_train),
    "fraction_with_n_boxes": round(float(np.mean([len(b) == n for b in ours])), 4),
    "average_face_matched_iou": round(float(np.mean([matched_iou(baseline, t) for t in theirs])), 4),
    "best_fixed_mask_union_iou": round(float(np.mean([mask_iou(fixed, union_mask(t)) for t in theirs])), 4),
    "best_fixed_mask_threshold": round(fixed_t, 3),
    "ms_per_image": round(1000 * seconds / len(files), 2),
  }
  print(f"{len(files)} test faces (ids {a.ids}), detection flags: {' '.join(rest) or '(defaults)'}")
  print(describe("our detection", result["ours"]))
  print(describe("authors' boxes", result["authors"]))
  print(f"  {result['fraction_with_n_boxes']:.1%} with {n} boxes, {result['ms_per_image']:.1f} ms/image")
  print(
    f"  image-blind references (from the {len(train)} --train-ids rows): fixed average-face boxes matched IoU "
    f"{result['average_face_matched_iou']:.3f}; best fixed mask union IoU {result['best_fixed_mask_union_iou']:.3f}"
  )
  print(json.dumps(result))


if __name__ == "__main__":
  main()
