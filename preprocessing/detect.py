"""Key-patch detection: edge maps, OpenCV EdgeBoxes, and the paper's filters.

All functions are pure (arrays in, arrays out). Boxes are float (x, y, w, h)
in pixels of the detection frame, [K, 4]; scores are [K].
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class BoxFilter:
  """The filters of paper §4 (docs/design.md §2.1).

  The defaults are the "parts" key patches (`PRESETS`, docs/design.md §2.1):
  part-sized (7-15 % of the frame), near-square boxes, re-ranked by a
  centre prior and kept apart by NMS at 0.2; `PAPER_FILTER` is paper §4's.

  Attributes:
    num_patches: N, boxes to keep.
    min_area: minimum box area as a fraction of the image area.
    max_area: maximum box area as a fraction of the image area.
    max_aspect: keep 1/max_aspect <= w/h <= max_aspect.
    nms_iou: greedy non-maximum suppression IoU threshold.
    max_box_height: if set (waterfall preset, e.g. 0.7), tall boxes (h >= w)
      up to this fraction of the image height are exempt from `max_area`, and
      boxes taller than it are rejected.
    centre_weight: c of the centre prior in `prior_scores` (0: EdgeBoxes' own ranking).
    border_weight: b of the border prior in `prior_scores` (0: none).
    selection: 'nms' (greedy NMS in score order, the paper) or 'coverage'
      (`coverage_select`: the boxes that cover the proposals' consensus).
  """

  num_patches: int = 3
  min_area: float = 0.07
  max_area: float = 0.15
  max_aspect: float = 1.5
  nms_iou: float = 0.2
  max_box_height: float | None = None
  centre_weight: float = 1.0
  border_weight: float = 0.0
  selection: str = "nms"


# Paper §4: boxes of 5-25 % of the image, aspect within 1/3..3, NMS at 0.3,
# EdgeBoxes' own ranking (no priors).
PAPER_FILTER = BoxFilter(
  min_area=0.05, max_area=0.25, max_aspect=3.0, nms_iou=0.3, centre_weight=0.0, border_weight=0.0, selection="nms"
)


@dataclasses.dataclass(frozen=True)
class Preset:
  """One `--key-patches` choice: the filters and the edge and proposal settings that go with them.

  Attributes:
    box_filter: the filters, ranking and selection.
    edge_smoothing: σ in pixels of the detection frame of the Gaussian applied
      before the gradient edge map (`gradient_edges`; 0: none).
    edgeboxes_beta: EdgeBoxes' own NMS threshold β between its proposals
      (Zitnick & Dollár 2014: 0.75 by default, higher for denser proposals
      that localise boxes more finely).
    edges: the edge map, one of `EDGE_MAPS`: "hed" (`preprocessing.hed`,
      thinned by `thin_edges`) or "gradient" (`gradient_edges`, no download, ~20x faster on a CPU).
  """

  box_filter: BoxFilter
  edge_smoothing: float
  edgeboxes_beta: float
  edges: str = "hed"


# docs/design.md §2.1; measured in the README ("Key patches without the structured-edge model").
# Both use HED edges (`preprocessing.hed`), the learned edge map closest to the paper's structured edges.
PRESETS = {
  "parts": Preset(BoxFilter(), edge_smoothing=1.0, edgeboxes_beta=0.9),
  "paper": Preset(PAPER_FILTER, edge_smoothing=0.0, edgeboxes_beta=0.75),
}
# The edge maps `--edges` chooses between: a learned one (HED, downloaded once) and a plain gradient map.
EDGE_MAPS = ("hed", "gradient")


# A box whose edge lies within this fraction of the image side from the border touches it.
BORDER_GAP = 0.02
# `coverage_select`: proposal weights exp(VOTE_TEMPERATURE * score) and the
# fraction of the vote map's peak below which covering a pixel costs.
VOTE_TEMPERATURE = 0.5
COVER_THRESHOLD = 0.25


def prior_scores(boxes: np.ndarray, scores: np.ndarray, height: int, width: int, f: BoxFilter) -> np.ndarray:
  """EdgeBoxes scores re-ranked by two priors on where key patches lie: [K] -> [K].

  log(score) - c * d^2 - b * [touches the border], with d the distance of the
  box centre from the image centre in units of the image's sides (0 .. 0.71)
  and "touches" = an edge within `BORDER_GAP` of the image's border. The
  centre prior is the photographer's bias (the subject is framed in the
  middle); the border prior drops boxes that enclose contours only because the
  frame cuts them (hair, background, the object's outline). Both are generic,
  one number each, and 0 restores EdgeBoxes' own order (the scores are then
  returned unchanged). Tuned once on faces (benchmarks/boxes_bench.py), checked
  on flowers and cars; see the README's "Key patches without the
  structured-edge model".
  """
  scores = np.asarray(scores, np.float32)
  if f.centre_weight == 0 and f.border_weight == 0:
    return scores
  cx = (boxes[:, 0] + boxes[:, 2] / 2) / width - 0.5
  cy = (boxes[:, 1] + boxes[:, 3] / 2) / height - 0.5
  gap = np.minimum(
    np.minimum(boxes[:, 0], width - boxes[:, 0] - boxes[:, 2]) / width,
    np.minimum(boxes[:, 1], height - boxes[:, 1] - boxes[:, 3]) / height,
  )
  out = np.log(np.maximum(scores, 1e-9)) - f.centre_weight * (cx * cx + cy * cy)
  return (out - f.border_weight * (gap < BORDER_GAP)).astype(np.float32)


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
  """Resizes [H, W, C] so that min(H, W) == short_side (area filter when shrinking)."""
  h, w = image.shape[:2]
  scale = short_side / min(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  if size == (w, h):
    return image
  interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
  return cv2.resize(image, size, interpolation=interp)


def gradient_edges(image: np.ndarray, smoothing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Edge map and orientation without a structured-edge model.

  Sobel magnitude (max over colour channels) masked by Canny edges; the
  orientation uses OpenCV's `computeOrientation` formula on a smoothed map.
  With `smoothing` σ > 0 the image is first blurred by a Gaussian of σ pixels,
  which removes the finest texture (skin, hair strands) that a structured-edge
  model ignores too (docs/design.md §2.1).

  Args:
    image: uint8 [H, W, 3].
    smoothing: σ of the Gaussian in pixels (0: none).

  Returns:
    (edges float32 [H, W] in [0, 1], orientation float32 [H, W] in [0, pi)).
  """
  if smoothing > 0:
    image = cv2.GaussianBlur(image, (0, 0), smoothing)
  f = image.astype(np.float32) * (1.0 / 255.0)
  gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3)
  gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3)
  mag = np.sqrt(gx * gx + gy * gy)
  if mag.ndim == 3:
    mag = mag.max(axis=2)
  gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
  canny = cv2.Canny(gray, 40, 100)
  edges = np.where(canny > 0, mag, 0.0).astype(np.float32)
  edges /= max(float(edges.max()), 1e-6)
  return edges, edge_orientation(edges)


def edge_orientation(edges: np.ndarray, blur: int = 9) -> np.ndarray:
  """`arctan(Oyy * sign(-Oxy) / (Oxx + 1e-5)) mod pi` of an edge map [H, W] box-filtered over `blur` pixels."""
  e = cv2.blur(edges, (blur, blur))
  ox = cv2.Sobel(e, cv2.CV_32F, 1, 0, ksize=3)
  oy = cv2.Sobel(e, cv2.CV_32F, 0, 1, ksize=3)
  oxx = cv2.Sobel(ox, cv2.CV_32F, 1, 0, ksize=3)
  oxy = cv2.Sobel(ox, cv2.CV_32F, 0, 1, ksize=3)
  oyy = cv2.Sobel(oy, cv2.CV_32F, 0, 1, ksize=3)
  theta = np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5))
  return np.mod(theta, np.pi).astype(np.float32)


# `thin_edges`: structured edges' NMS settings (Dollár & Zitnick's edgesNms: radius 1, 5 px border, x1.01).
THIN_RADIUS = 1
THIN_BORDER = 5
THIN_MULTIPLIER = 1.01
HED_ORIENTATION_BLUR = 5


def thin_edges(probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A thick edge probability map (HED's) made one pixel wide, as EdgeBoxes expects.

  Non-maximum suppression across the edge: a pixel is kept if 1.01 times its
  value is at least the bilinearly interpolated values one pixel either side
  along the orientation's normal; values fade to 0 over the last 5 pixels of
  the border, where the frame cuts contours (Dollár & Zitnick's `edgesNms`,
  used on structured edges before EdgeBoxes; docs/design.md §2.1).

  Args:
    probability: float [H, W] in [0, 1].

  Returns:
    (edges float32 [H, W], orientation float32 [H, W] in [0, pi)).
  """
  e = np.asarray(probability, np.float32)
  orientation = edge_orientation(e, HED_ORIENTATION_BLUR)
  h, w = e.shape
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  keep = np.ones((h, w), bool)
  for d in (-THIN_RADIUS, THIN_RADIUS):
    keep &= e * THIN_MULTIPLIER >= _bilinear(e, xs + d * np.cos(orientation), ys + d * np.sin(orientation))
  distance = np.minimum(np.minimum(xs, ys), np.minimum(w - 1 - xs, h - 1 - ys))
  edges = np.where(keep, e, 0) * np.minimum(distance / THIN_BORDER, 1)
  return edges.astype(np.float32), orientation


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """`image` [H, W] at float coordinates (clamped to the image), bilinearly interpolated."""
  return cv2.remap(image, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def structured_edges(image: np.ndarray, model) -> tuple[np.ndarray, np.ndarray]:
  """Edge map and orientation from a `cv2.ximgproc` StructuredEdgeDetection model.

  Args:
    image: uint8 [H, W, 3] RGB.
    model: result of `cv2.ximgproc.createStructuredEdgeDetection(path)`.

  Returns:
    (edges float32 [H, W] after NMS, orientation float32 [H, W]).
  """
  f = image.astype(np.float32) * (1.0 / 255.0)
  edges = model.detectEdges(f)
  orientation = model.computeOrientation(edges)
  edges = model.edgesNms(edges, orientation)
  return edges, orientation


def edge_boxes(
  edges: np.ndarray,
  orientation: np.ndarray,
  *,
  max_boxes: int,
  min_box_area: float,
  max_aspect: float,
  beta: float = 0.75,
) -> tuple[np.ndarray, np.ndarray]:
  """Runs OpenCV EdgeBoxes (`beta`: its NMS threshold between proposals, `Preset.edgeboxes_beta`).

  Returns:
    (boxes float32 [K, 4] as (x, y, w, h), scores float32 [K]), best first.
  """
  eb = cv2.ximgproc.createEdgeBoxes(
    maxBoxes=max_boxes, minBoxArea=float(min_box_area), maxAspectRatio=float(max_aspect), beta=float(beta)
  )
  boxes, scores = eb.getBoundingBoxes(edges, orientation)
  if boxes is None or len(boxes) == 0:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
  return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32).reshape(-1)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of one (x, y, w, h) box [4] against [K, 4] -> [K]."""
  x0 = np.maximum(box[0], boxes[:, 0])
  y0 = np.maximum(box[1], boxes[:, 1])
  x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
  y1 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
  return inter / np.maximum(union, 1e-9)


def shape_mask(boxes: np.ndarray, height: int, width: int, f: BoxFilter) -> np.ndarray:
  """Which boxes [K, 4] pass the area, aspect and height rules -> bool [K]."""
  w, h = boxes[:, 2], boxes[:, 3]
  area = w * h / float(height * width)
  ratio = w / np.maximum(h, 1e-9)
  ok = (area >= f.min_area) & (ratio >= 1.0 / f.max_aspect) & (ratio <= f.max_aspect)
  ok &= (w > 0) & (h > 0)
  if f.max_box_height is None:
    return ok & (area <= f.max_area)
  tall_ok = (h >= w) & (h <= f.max_box_height * height)
  return ok & ((area <= f.max_area) | tall_ok) & (h <= f.max_box_height * height)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
  """Greedy NMS in descending score order (stable on ties).

  Returns:
    int indices into `boxes` of the kept boxes, best first, at most `limit`.
  """
  order = np.argsort(-scores, kind="stable")
  keep: list[int] = []
  for i in order:
    if len(keep) >= limit:
      break
    if not keep or np.all(iou(boxes[i], boxes[keep]) <= iou_threshold):
      keep.append(int(i))
  return np.asarray(keep, np.int64)


def _pixel_bounds(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, ...]:
  """Integer (x0, y0, x1, y1) [K] each of boxes [K, 4], rounded and clipped to the image."""
  x0 = np.clip(np.round(boxes[:, 0]), 0, width).astype(np.int64)
  y0 = np.clip(np.round(boxes[:, 1]), 0, height).astype(np.int64)
  x1 = np.clip(np.round(boxes[:, 0] + boxes[:, 2]), 0, width).astype(np.int64)
  y1 = np.clip(np.round(boxes[:, 1] + boxes[:, 3]), 0, height).astype(np.int64)
  return x0, y0, x1, y1


def vote_map(boxes: np.ndarray, scores: np.ndarray, height: int, width: int) -> np.ndarray:
  """How strongly the proposals agree on each pixel: float64 [height, width], sums to the mean box area.

  Each proposal of [K, 4] votes for its pixels with weight
  softmax(VOTE_TEMPERATURE * scores) over the K proposals (scores [K] as from
  `prior_scores`), so the map is the probability that a pixel lies in a
  proposal drawn by score.
  """
  w = np.exp(VOTE_TEMPERATURE * (scores - scores.max()))
  w /= w.sum()
  x0, y0, x1, y1 = _pixel_bounds(boxes, height, width)
  corners = np.zeros((height + 1, width + 1))
  np.add.at(corners, (y0, x0), w)
  np.add.at(corners, (y0, x1), -w)
  np.add.at(corners, (y1, x0), -w)
  np.add.at(corners, (y1, x1), w)
  return corners.cumsum(0).cumsum(1)[:height, :width]


def coverage_select(boxes: np.ndarray, scores: np.ndarray, height: int, width: int, f: BoxFilter) -> np.ndarray:
  """Picks up to N boxes of [K, 4] that together cover where the proposals agree -> int indices [M].

  Greedy maximum coverage of the `vote_map` V (peak-normalised): each step
  takes the box with the largest sum of V / max V - COVER_THRESHOLD over its
  pixels not yet covered, then drops the boxes overlapping it by IoU >
  `f.nms_iou` (the paper's NMS rule stays a filter). Where the ranking by
  score puts its N boxes on one strong spot, this spreads them over the
  region that many good proposals share (on faces: eyes, nose and mouth
  rather than one eye three times). Measured in the README.
  """
  if len(boxes) == 0:
    return np.zeros((0,), np.int64)
  gain = vote_map(boxes, scores, height, width)
  gain = gain / max(float(gain.max()), 1e-12) - COVER_THRESHOLD
  x0, y0, x1, y1 = _pixel_bounds(boxes, height, width)
  allowed = np.ones(len(boxes), bool)
  keep: list[int] = []
  while len(keep) < f.num_patches and allowed.any():
    table = cv2.integral(gain)
    total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    i = int(np.argmax(np.where(allowed, total, -np.inf)))
    keep.append(i)
    gain[y0[i] : y1[i], x0[i] : x1[i]] = 0.0
    allowed &= iou(boxes[i], boxes) <= f.nms_iou
    allowed[i] = False
  return np.asarray(keep, np.int64)


def select_boxes(boxes: np.ndarray, scores: np.ndarray, height: int, width: int, f: BoxFilter) -> np.ndarray:
  """Applies the filters and returns up to N boxes [M, 4] (M <= N), best first.

  Boxes are first clipped to the image; the survivors of the shape rules are
  scored by `prior_scores`, then greedy NMS keeps the best N (`f.selection`
  'nms', or always with EdgeBoxes' own order: zero prior weights) or
  `coverage_select` picks N ('coverage').
  """
  boxes = clip_boxes(np.asarray(boxes, np.float32).reshape(-1, 4), height, width)
  scores = np.asarray(scores, np.float32).reshape(-1)
  mask = shape_mask(boxes, height, width, f)
  boxes, scores = boxes[mask], prior_scores(boxes[mask], scores[mask], height, width, f)
  paper = f.centre_weight == 0 and f.border_weight == 0
  if f.selection == "coverage" and not paper:
    keep = coverage_select(boxes, scores, height, width, f)
  else:
    keep = greedy_nms(boxes, scores, f.nms_iou, f.num_patches)
  return boxes[keep].reshape(-1, 4)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Clips (x, y, w, h) boxes [K, 4] to the image [0, width] x [0, height]."""
  x0 = np.clip(boxes[:, 0], 0, width)
  y0 = np.clip(boxes[:, 1], 0, height)
  x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
  y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
  return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.float32)


def scale_boxes(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
  """Maps boxes [K, 4] from a height x width frame to a size x size frame, float32."""
  s = np.array([size / width, size / height, size / width, size / height], np.float32)
  return clip_boxes(boxes.astype(np.float32) * s, size, size)
