"""Per-image work, run in worker processes: load, detect, filter, resize.

No TensorFlow here: workers only need OpenCV and NumPy, so they start fast and
scale with the number of cores. `process_item` is a pure function of the item
and the `Settings` installed by `init_worker`.

With HED edges (`Settings.edges == "hed"`) detection runs in two halves: a
worker decodes and returns the detection frame (a pending `Result`), the
parent process computes HED edge maps of many frames at once on its
accelerator (`edge_model`), and a worker's `finish_items` turns each into
boxes (`run.finish_pending`).
"""

from __future__ import annotations

import dataclasses
import signal
from typing import NamedTuple

import cv2
import numpy as np

from preprocessing import boxes_file, detect, images, sources

# Candidates asked from EdgeBoxes before our filters (the cost barely depends on it).
MAX_CANDIDATES = 1000


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a worker needs to turn an item into an example.

  Attributes:
    image_size: S, side of the stored image.
    min_side: shorter side of the detection frame.
    center_crop: if > 0, central crop side applied first (CelebA: 108).
    box_filter: the filters, ranking and N (docs/design.md §2.1).
    edge_smoothing: σ (detection-frame pixels) of the blur before the gradient
      edge map (`detect.gradient_edges`; not used with `sed_model`).
    edgeboxes_beta: EdgeBoxes' NMS threshold between its proposals.
    edges: the edge map, "hed" or "gradient" (`detect.Preset.edges`; not
      used with `sed_model`).
    hed_weights: the HED weights file for "hed" (None: `hed_weights.locate`'s).
    sed_model: path of a structured-edge model (model.yml.gz) or None.
    boxes_scale: F of the frame of boxes given from a file (`--boxes-scale`),
      None for pixels of the image after `center_crop`.
  """

  image_size: int = 64
  min_side: int = 128
  center_crop: int = 0
  box_filter: detect.BoxFilter = detect.PRESETS["parts"].box_filter
  edge_smoothing: float = detect.PRESETS["parts"].edge_smoothing
  edgeboxes_beta: float = detect.PRESETS["parts"].edgeboxes_beta
  edges: str = detect.PRESETS["parts"].edges
  hed_weights: str | None = None
  sed_model: str | None = None
  boxes_scale: float | None = None


# What `process_item` gets besides the item: None (detect), boxes [N, 4] from a
# file (in the `boxes_scale` frame), or the reject reason of an image without usable boxes.
Given = np.ndarray | str | None


class Result(NamedTuple):
  """One processed item: `reason` is None when accepted.

  `image` is uint8 [S, S, 3] and `boxes` float32 [N, 4] in S pixels when
  accepted, else both None. A pending result (HED detection, see the module
  docstring) has `boxes` None and the uint8 detection frame [h, w, 3] in
  `frame`, for `finish_item`.
  """

  index: int
  reason: str | None
  image: np.ndarray | None
  boxes: np.ndarray | None
  label: int
  frame: np.ndarray | None = None

  @property
  def pending(self) -> bool:
    return self.frame is not None


_settings: Settings | None = None
_sed = None
_edge_models: dict = {}  # weights path -> hed.EdgeModel (JAX is imported only where HED runs)


def init_worker(settings: Settings) -> None:
  """Installs `settings` in this process; one OpenCV thread per process."""
  global _settings, _sed
  cv2.setNumThreads(1)
  _settings = settings
  _sed = None
  if settings.sed_model:
    _sed = cv2.ximgproc.createStructuredEdgeDetection(settings.sed_model)


def init_pool_worker(settings: Settings) -> None:
  """`init_worker` in a pool's worker process, which leaves Ctrl-C to the parent (it stops the pool, one line)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  init_worker(settings)


def edge_model(path: str | None):
  """The `hed.EdgeModel` of weights file `path` (None: `hed_weights.locate`'s), loaded once per process.

  Raises:
    errors.UserError: no weights file (see `hed_weights.locate`) or not a HED weights file.
  """
  from preprocessing import hed, hed_weights

  path = path or hed_weights.locate(None)
  if path not in _edge_models:
    _edge_models[path] = hed.EdgeModel(*hed_weights.read(path))
  return _edge_models[path]


def uses_hed(settings: Settings, sed=None) -> bool:
  """Whether detection with `settings` computes HED edge maps."""
  return settings.edges == "hed" and sed is None and not settings.sed_model


def detect_boxes(image: np.ndarray, settings: Settings, sed=None) -> tuple[np.ndarray, tuple[int, int]]:
  """Key-patch boxes of an RGB image [H, W, 3] in its detection frame (HED edges computed here, one image).

  Returns:
    (boxes float32 [M, 4] in detection-frame pixels, M <= N, best first,
    detection frame shape (h, w)).
  """
  det = detect.resize_short_side(image, settings.min_side)
  if uses_hed(settings, sed):
    probability = edge_model(settings.hed_weights)([det])[0]
    return boxes_from_edges(*detect.thin_edges(probability), settings), det.shape[:2]
  if sed is None:
    edges, orientation = detect.gradient_edges(det, settings.edge_smoothing)
  else:
    edges, orientation = detect.structured_edges(det, sed)
  return boxes_from_edges(edges, orientation, settings), det.shape[:2]


def boxes_from_edges(edges: np.ndarray, orientation: np.ndarray, settings: Settings) -> np.ndarray:
  """EdgeBoxes on a thin edge map [h, w] and its orientation, then the filters: boxes [M, 4], M <= N, best first."""
  h, w = edges.shape
  f = settings.box_filter
  boxes, scores = detect.edge_boxes(
    edges,
    orientation,
    max_boxes=MAX_CANDIDATES,
    min_box_area=f.min_area * h * w,
    max_aspect=f.max_aspect,
    beta=settings.edgeboxes_beta,
  )
  return detect.select_boxes(boxes, scores, h, w, f)


def place_boxes(given: np.ndarray, height: int, width: int, scale: float | None) -> np.ndarray:
  """Boxes [N, 4] from a file's F x F frame (None: pixels) to pixels of a height x width image.

  Raises:
    images.Reject: 'box_outside_image' when a box leaves the frame or is empty.
  """
  fw, fh = (width, height) if scale is None else (scale, scale)
  if boxes_file.outside(given, fw, fh):
    raise images.Reject(boxes_file.OUTSIDE)
  return (np.asarray(given, np.float64) * [width / fw, height / fh, width / fw, height / fh]).astype(np.float32)


def make_example(
  image: np.ndarray, settings: Settings, sed=None, given: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Detects (or takes the `given` boxes [N, 4]) and resizes one RGB image [H, W, 3].

  Returns:
    (uint8 [S, S, 3], float32 [N, 4] boxes in S pixels).

  Raises:
    images.Reject: 'too_small', 'too_few_boxes' or 'box_outside_image'.
  """
  image = cropped(image, settings)
  if given is None:
    boxes, (h, w) = detect_boxes(image, settings, sed)
  else:
    h, w = image.shape[:2]
    boxes = place_boxes(given, h, w, settings.boxes_scale)
  if len(boxes) < settings.box_filter.num_patches:
    raise images.Reject("too_few_boxes")
  return model_image(image, settings), detect.scale_boxes(boxes, h, w, settings.image_size)


def cropped(image: np.ndarray, settings: Settings) -> np.ndarray:
  """The image after the `center_crop`, checked to be large enough (`images.Reject` 'too_small')."""
  if settings.center_crop > 0:
    image = images.center_crop(image, settings.center_crop)
  images.check_size(image)
  return image


def pending_example(image: np.ndarray, settings: Settings, index: int, label: int) -> Result:
  """The first half of HED detection (module docstring): the stored picture and the detection frame."""
  image = cropped(image, settings)
  return Result(
    index, None, model_image(image, settings), None, label, detect.resize_short_side(image, settings.min_side)
  )


def finish_items(pairs: list[tuple[Result, np.ndarray]]) -> list[Result]:
  """`finish_item` over (pending result, edge probability) pairs with the installed `Settings` (one task)."""
  assert _settings is not None, "init_worker was not called"
  return [finish_item(r, p, _settings) for r, p in pairs]


def finish_item(result: Result, probability: np.ndarray, settings: Settings) -> Result:
  """The second half: a pending `Result` and the HED edge probability [h, w] of its frame -> the final `Result`."""
  h, w = result.frame.shape[:2]
  boxes = boxes_from_edges(*detect.thin_edges(probability), settings)
  if len(boxes) < settings.box_filter.num_patches:
    return Result(result.index, "too_few_boxes", None, None, -1)
  return result._replace(boxes=detect.scale_boxes(boxes, h, w, settings.image_size), frame=None)


def model_image(image: np.ndarray, settings: Settings) -> np.ndarray:
  """The stored S x S picture of an RGB image [H, W, 3] (after any center crop): uint8 [S, S, 3].

  Very large images are first reduced to the detection frame's scale; the
  aspect ratio is not kept (boxes are scaled per axis with `detect.scale_boxes`).
  """
  s = settings.image_size
  src = image
  if min(image.shape[:2]) > 2 * max(settings.min_side, s):
    src = detect.resize_short_side(image, max(settings.min_side, s))
  interp = cv2.INTER_AREA if min(src.shape[:2]) >= s else cv2.INTER_CUBIC
  return cv2.resize(src, (s, s), interpolation=interp)


def process_item(item: sources.Item, given: Given = None) -> Result:
  """Loads and processes one item; every failure becomes a rejected `Result`.

  `given`: see `Given`; a reason rejects the item without reading it.
  """
  assert _settings is not None, "init_worker was not called"
  index = item[0]
  if isinstance(given, str):
    return Result(index, given, None, None, -1)
  try:
    image, label = sources.load_item(item)
    if given is None and uses_hed(_settings, _sed):
      return pending_example(image, _settings, index, label)
    out, boxes = make_example(image, _settings, _sed, given)
  except images.Reject as r:
    return Result(index, r.reason, None, None, -1)
  except (cv2.error, ValueError, MemoryError):
    return Result(index, "decode_error", None, None, -1)
  return Result(index, None, out, boxes, label)


def process_items(tasks: list[tuple[sources.Item, Given]]) -> list[Result]:
  """`process_item` over a small batch of (item, given) pairs (one task, to amortise the IPC)."""
  return [process_item(item, given) for item, given in tasks]
