"""How close the default key-patch detection comes to the authors' CelebA boxes.

  python benchmarks/boxes_bench.py --boxes ../shared/data/official_boxes/celebA_allbbs_first8100.mat \
      --folder ../shared/data/celeba_train --folder ../shared/data/celeba --ids 6001:8101 [DETECTION FLAGS]

Every image of the folders whose number k (file 00000k.jpg) lies in --ids A:B
(A <= k < B) and has a row in the authors' file is prepared like the paper:
the central 108 px crop of the 178 px wide aligned face (scaled to the file's
width: 54 px of the half-size copies), detected by `preprocessing`'s own
`worker.detect_boxes` with the given detection flags (any `python -m
preprocessing` option, e.g. `--edge-map canny --scoring edgeboxes`), in the
128 x 128 frame the authors' boxes use. Per image:

  union IoU       IoU of the union of our N boxes with the union of theirs
                  (rasterised in the 128 x 128 frame);
  best-match IoU  for each of their boxes, the best IoU with one of ours, averaged.

Images where fewer than N boxes survive the filters count with the boxes they
have (none: 0). The "average face" baseline is one fixed box set for every
image: per slot, the mean of the authors' boxes of the file's rows outside
--ids (each row's boxes sorted top to bottom), i.e. learned on other faces.
The "best fixed mask" is the best image-blind answer: the pixels that lie in the
authors' union for at least a fraction t of the file's rows outside --ids,
with t chosen to maximise the union IoU on those rows; no method that ignores
the image does better on average (on aligned faces, where the parts sit in
nearly the same place in every image, this also bounds a detector that finds
the parts but not which of them the authors' SED boxes chose).
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


def best_match_iou(ours: np.ndarray, theirs: np.ndarray) -> float:
  """Mean over their boxes of the best IoU with one of ours (0 when we have none)."""
  if len(ours) == 0:
    return 0.0
  return float(np.mean([max(box_iou(t, o) for o in ours) for t in theirs]))


def numbered_files(folders: list[str], lo: int, hi: int) -> list[tuple[int, str]]:
  """(k, path) of files named <digits>.jpg|png with lo <= k < hi, sorted by (k, folder order)."""
  found = []
  for order, folder in enumerate(folders):
    for name in os.listdir(folder):
      m = re.fullmatch(r"(\d+)\.(jpe?g|png)", name, re.IGNORECASE)
      if m and lo <= int(m.group(1)) < hi:
        found.append((int(m.group(1)), order, os.path.join(folder, name)))
  return [(k, path) for k, _, path in sorted(found)]


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


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--boxes", required=True, help="the authors' celebA_allbbs .mat (row k-1 = image k)")
  p.add_argument("--folder", action="append", required=True, help="folder of numbered aligned faces (repeatable)")
  p.add_argument("--ids", default="6001:8101", help="A:B, image numbers A <= k < B")
  p.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
  a, rest = p.parse_known_args()
  pre = cli.build_parser().parse_args(["--source", "synthetic", "--output", "unused", "--workers", "1", *rest])
  msg = cli.check_options(pre)
  if msg:
    p.error(msg)
  settings = cli.make_settings(pre)
  worker.init_worker(settings)
  allbbs = scipy.io.loadmat(a.boxes)["allbbs"].astype(np.float64)
  lo, hi = (int(v) for v in a.ids.split(":"))
  files = [(k, path) for k, path in numbered_files(a.folder, lo, hi) if k <= len(allbbs)]
  if a.limit:
    files = files[: a.limit]
  if not files:
    p.error(f"--ids {a.ids}: no numbered images with boxes in {a.folder}")
  others = [r for r in range(len(allbbs)) if not lo <= r + 1 < hi]
  baseline = average_face(allbbs[others])
  fixed, fixed_t = best_fixed_mask(allbbs[others])
  n = settings.box_filter.num_patches
  rows = {"union": [], "best": [], "base_union": [], "base_best": [], "fixed_union": [], "full": 0}
  t0 = time.perf_counter()
  for k, path in files:
    crop = paper_crop(images.read_image_file(path))
    boxes, (h, w) = worker.detect_boxes(crop, settings)
    boxes = boxes * np.array([FRAME / w, FRAME / h, FRAME / w, FRAME / h], np.float32)
    theirs = allbbs[k - 1]
    rows["union"].append(union_iou(boxes, theirs))
    rows["best"].append(best_match_iou(boxes, theirs))
    rows["base_union"].append(union_iou(baseline, theirs))
    rows["base_best"].append(best_match_iou(baseline, theirs))
    rows["fixed_union"].append(mask_iou(fixed, union_mask(theirs)))
    rows["full"] += len(boxes) == n
  seconds = time.perf_counter() - t0
  result = {
    "num_images": len(files),
    "ids": a.ids,
    "detection_flags": " ".join(rest),
    "union_iou": round(float(np.mean(rows["union"])), 4),
    "best_match_iou": round(float(np.mean(rows["best"])), 4),
    "fraction_with_n_boxes": round(rows["full"] / len(files), 4),
    "average_face_union_iou": round(float(np.mean(rows["base_union"])), 4),
    "average_face_best_match_iou": round(float(np.mean(rows["base_best"])), 4),
    "best_fixed_mask_union_iou": round(float(np.mean(rows["fixed_union"])), 4),
    "best_fixed_mask_threshold": round(fixed_t, 3),
    "best_fixed_mask_area": round(float(fixed.mean()), 4),
    "ms_per_image": round(1000 * seconds / len(files), 2),
  }
  print(f"{len(files)} faces (ids {a.ids}), detection flags: {' '.join(rest) or '(defaults)'}")
  print(f"  detection:    union IoU {result['union_iou']:.3f}, best-match box IoU {result['best_match_iou']:.3f}")
  print(f"                {result['fraction_with_n_boxes']:.1%} with {n} boxes, {result['ms_per_image']:.1f} ms/image")
  print(
    f"  average face: union IoU {result['average_face_union_iou']:.3f}, "
    f"best-match box IoU {result['average_face_best_match_iou']:.3f}"
  )
  print(
    f"  best fixed mask (image-blind, learned from the other rows; {result['best_fixed_mask_area']:.0%} of the frame): "
    f"union IoU {result['best_fixed_mask_union_iou']:.3f}"
  )
  print(json.dumps(result))


if __name__ == "__main__":
  main()
