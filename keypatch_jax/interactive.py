"""What the interactive page (`serve`) does with a checkpoint, apart from the web.

`Demo` holds the restored generator, compiled for every N in
1..max_patches, with the page's uploaded pictures and patches: it proposes key
patches on a photo with the preprocessing's own EdgeBoxes detection
(`detection_settings`), cuts a request's patch set and generates the mask,
the image and the patches pasted where the mask put them. Its errors are
`uploads.UploadError`, one line each.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Sequence

import numpy as np

from keypatch_jax import inference, input_pipeline, paste, patches, uploads, visualize

PROG = "keypatch_jax.serve"  # its messages are the server's (`serve` is its one user)


def detection_settings(info: dict | None, image_size: int, max_patches: int):
  """The preprocessing `worker.Settings` of a dataset, proposing up to `max_patches` boxes.

  Built by `preprocessing`'s own flag parser and `make_settings` from the
  dataset's recorded flags, so the page detects exactly as preprocessing did.

  Args:
    info: the dataset's `dataset_info.json` (its "options" are the
      preprocessing flags), or None for the preprocessing defaults.
    image_size: S of the checkpoint.
    max_patches: boxes to keep after the filters (the first N are the ones
      preprocessing with N keeps: the NMS is greedy, best first).
  """
  from preprocessing import fingerprint
  from preprocessing.__main__ import make_settings, parse_args

  args = parse_args(["--source", "synthetic", "--output", "unused"])
  options = dict((info or {}).get("options") or {})
  if options:  # flags added after a dataset was written: the behaviour it was written with
    options = {**fingerprint.EARLIER_OPTIONS, **options}
  for key, value in options.items():
    if hasattr(args, key):
      setattr(args, key, value)
  args.image_size, args.num_patches = image_size, max_patches
  if args.sed_model and not os.path.isfile(args.sed_model):
    print(f"{PROG}: the dataset's --sed-model {args.sed_model!r} is not here; proposing boxes from gradient edges")
    args.sed_model, args.edges = None, "gradient"
  if args.edges == "hed" and not args.sed_model:
    args.hed_weights_file = _hed_weights(args.hed_weights)
    if args.hed_weights_file is None:
      args.edges = "gradient"
  return make_settings(args)


def _hed_weights(path: str | None) -> str | None:
  """The HED weights file for the page's box proposals (`hed_weights.locate`), or None (one line says why)."""
  from keypatch_jax import errors
  from preprocessing import hed_weights

  if path and not os.path.isfile(path):
    print(f"{PROG}: the dataset's --hed-weights {path!r} is not here; using the default HED weights")
    path = None
  try:
    return hed_weights.locate(path)
  except errors.UserError as e:
    print(f"{PROG}: {e}; proposing boxes from gradient edges")
    return None


class Demo:
  """The restored generator, compiled for N = 1..max_patches, and the page's state.

  Args:
    run: from `inference.load_run` (its `meta`, when set, supplies the test
      images and the detection settings).
    max_patches: the largest N a request may use.
    max_upload_mb: the largest accepted file.
    test_images: how many test images of the dataset the page offers.
  """

  def __init__(self, run: inference.Run, *, max_patches: int, max_upload_mb: float = 20, test_images: int = 24):
    self.run = run
    self.size = run.config.image_size
    self.z_dim = run.config.model.z_dim
    self.max_patches = max_patches
    self.max_bytes = int(max_upload_mb * uploads.MB)
    self.settings = detection_settings(run.meta.info if run.meta else None, self.size, max_patches)
    self.pictures, self.patches = uploads.Store(), uploads.Store()
    self._generate = inference.generate_fn(run.generator)
    self._lock = threading.Lock()
    # One upload decoded (and detected) at a time: concurrent uploads do not add up in memory.
    self._decoding = threading.Lock()
    self.test_set: list[tuple[np.ndarray, np.ndarray]] = []
    if run.meta is not None and test_images > 0:
      batch = next(input_pipeline.eval_batches(run.meta, "test", batch_size=test_images, limit=test_images), None)
      if batch is not None:
        self.test_set = list(zip(visualize.to_uint8(batch["image"]), batch["boxes"], strict=True))

  def compile(self) -> float:
    """Compiles the generator for every N in 1..max_patches and runs one request; seconds taken."""
    start = time.perf_counter()
    s = self.size
    z = inference.noise(0, 0, 1, self.z_dim)  # compiles the noise sampler too

    def one(n: int) -> None:
      np.asarray(self._generate(self.run.variables, np.zeros((1, n, s, s, 3), np.float32), z)[1])

    # XLA compiles outside the GIL: the N shapes compile side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
      for future in [pool.submit(one, n) for n in range(1, self.max_patches + 1)]:
        future.result()
    # One whole request (crop, generate, paste, PNG) on a blank picture warms the rest of the path.
    blank = np.zeros((s, s, 3), np.uint8)
    n = min(self.run.config.num_patches, self.max_patches)
    self.result(self.pictures.put(uploads.Picture(blank, blank)), [[0, 0, s, s]] * n, [], 0, None)
    return time.perf_counter() - start

  def info(self) -> dict:
    """What the page shows about the checkpoint."""
    return {
      "step": self.run.step,
      "image_size": self.size,
      "num_patches": self.run.config.num_patches,
      "max_patches": self.max_patches,
      "max_upload_mb": self.max_bytes / uploads.MB,
      "test_images": len(self.test_set),
      "min_side": self.settings.min_side,
    }

  # --- pictures and patches ---------------------------------------------------

  def _picture_reply(self, picture: uploads.Picture, boxes: np.ndarray, note: str = "") -> dict:
    h, w = picture.frame.shape[:2]
    return {
      "image_id": self.pictures.put(picture),
      "frame": uploads.png_data_url(picture.frame),
      "width": w,
      "height": h,
      "boxes": np.round(np.asarray(boxes, np.float64), 2).tolist(),
      "note": note,
    }

  def add_photo(self, data: bytes, name: str) -> dict:
    """Decodes a photo and proposes key patches with the preprocessing detection.

    Returns:
      {"image_id", "frame" (PNG data URL of the detection frame), "width",
       "height", "boxes" [[x, y, w, h]] in frame pixels (at most max_patches,
       best first), "note"}.

    Raises:
      uploads.UploadError: a bad file (refused from its header before decoding
        when too large), a photo under 32 pixels on its shorter side, or more
        than `images.MAX_ASPECT` times longer than high (or the reverse).
    """
    from preprocessing import detect, images, worker

    with self._decoding:
      image = uploads.decode_upload(data, name, self.max_bytes)
      if self.settings.center_crop > 0:
        # The dataset's crop; a smaller upload gets its central square instead.
        image = images.center_crop(image, min(self.settings.center_crop, *image.shape[:2]))
      try:
        images.check_size(image)
      except images.Reject as r:
        h, w = image.shape[:2]
        raise uploads.UploadError(f"{uploads.reject_message(name, r.reason)}: it is {w}x{h}") from None
      sed = None
      if self.settings.sed_model:
        import cv2

        sed = cv2.ximgproc.createStructuredEdgeDetection(self.settings.sed_model)
      boxes, _ = worker.detect_boxes(image, self.settings, sed)
      picture = uploads.Picture(
        detect.resize_short_side(image, self.settings.min_side), worker.model_image(image, self.settings)
      )
      del image
    n = self.run.config.num_patches
    note = f"EdgeBoxes found {len(boxes)} key patches"
    if len(boxes) < n:
      note += f", fewer than the {n} the model was trained with: draw more boxes"
    return self._picture_reply(picture, boxes, note)

  def pick_test_image(self, index: int) -> dict:
    """Test image `index` of --data with its stored boxes (the preprocessing's), as `add_photo` returns."""
    if not 0 <= index < len(self.test_set):
      raise uploads.UploadError(f"test image {index} does not exist (the page offers {len(self.test_set)})")
    image, boxes = self.test_set[index]
    return self._picture_reply(uploads.Picture(image, image), boxes, f"test image {index} with its stored key patches")

  def test_thumbnails(self) -> list[str]:
    return [uploads.png_data_url(image) for image, _ in self.test_set]

  def add_patch(self, data: bytes, name: str) -> dict:
    """A separate patch image, resized to S x S as `patches.load_patch_folder` does: {"patch_id", "thumb"}."""
    import cv2

    with self._decoding:
      image = uploads.decode_upload(data, name, self.max_bytes)
      patch = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_CUBIC)
    return {"patch_id": self.patches.put(patch), "thumb": uploads.png_data_url(patch)}

  # --- generation -------------------------------------------------------------

  def patch_set(self, image_id: str | None, boxes: Sequence[Sequence[float]], patch_ids: Sequence[str]) -> np.ndarray:
    """The patches of a request: box crops of the picture, then the uploaded patches. float32 [N, S, S, 3]."""
    from preprocessing import detect

    s = self.size
    if len(boxes) + len(patch_ids) > self.max_patches:  # before any crop
      count = len(boxes) + len(patch_ids)
      raise uploads.UploadError(f"{count} patches; this server takes at most {self.max_patches} (--max-patches)")
    out = []
    if boxes:
      if image_id is None:
        raise uploads.UploadError("boxes were sent without an image; upload a photo first")
      picture = self.pictures.get(image_id, "image")
      b = np.asarray(boxes, np.float32).reshape(-1, 4)
      if not np.isfinite(b).all():
        raise uploads.UploadError("a box has a non-finite coordinate")
      h, w = picture.frame.shape[:2]
      b = detect.clip_boxes(b, h, w)
      if (b[:, 2] < 1).any() or (b[:, 3] < 1).any():
        raise uploads.UploadError("a box lies outside the image or is under 1 pixel wide or high; redraw it")
      model = picture.model.astype(np.float32) / 127.5 - 1.0
      out.extend(patches.crop(model[None], detect.scale_boxes(b, h, w, s)[None])[0])
    for pid in patch_ids:
      out.append(self.patches.get(pid, "patch").astype(np.float32) / 127.5 - 1.0)
    if not out:
      raise uploads.UploadError("no patches: draw a box on the image or add patch images")
    if len(out) > self.max_patches:
      raise uploads.UploadError(f"{len(out)} patches; this server takes at most {self.max_patches} (--max-patches)")
    return np.stack(out).astype(np.float32)

  def generate(self, sets: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask float [S, S, 1] in [0, 1], image float [S, S, 3] in [-1, 1]) for patches [N, S, S, 3]."""
    z = inference.noise(seed, 0, 1, self.z_dim)
    with self._lock:
      mask, image = self._generate(self.run.variables, sets[None], z)
      image = np.asarray(image)[0]
    mask = np.ones((self.size, self.size, 1), np.float32) if mask is None else np.asarray(mask)[0]
    return mask, image

  def result(
    self,
    image_id: str | None,
    boxes: Sequence[Sequence[float]],
    patch_ids: Sequence[str],
    seed: int,
    order: Sequence[int] | None,
  ) -> dict:
    """Generates from the request's patches, in `order` when given.

    Returns:
      {"mask", "image", "pasted", "patches" (PNG data URLs; the patches in the
       order used), "order", "max_diff" (largest |difference| of the generated
       image from the one in the original order, in [-1, 1] units, when `order`
       is not the identity; else None), "boxes" (where each patch was pasted),
       "seconds" (generation time)}.
    """
    sets = self.patch_set(image_id, boxes, patch_ids)
    n = len(sets)
    order = list(range(n)) if order is None else [int(i) for i in order]
    if sorted(order) != list(range(n)):
      raise uploads.UploadError(f"order {order} is not a permutation of the {n} patches")
    start = time.perf_counter()
    mask, image = self.generate(sets[order], seed)
    seconds = time.perf_counter() - start
    max_diff = None
    if order != list(range(n)):
      _, original = self.generate(sets, seed)
      max_diff = float(np.abs(image - original).max())
    image8, used = visualize.to_uint8(image), visualize.to_uint8(sets[order])
    pasted, placed = paste.paste_patches(mask, image8, used)
    return {
      "mask": uploads.png_data_url(visualize.to_uint8(mask * 2.0 - 1.0)),
      "image": uploads.png_data_url(image8),
      "pasted": uploads.png_data_url(pasted),
      "patches": [uploads.png_data_url(p) for p in used],
      "order": order,
      "max_diff": max_diff,
      "boxes": placed.tolist(),
      "seconds": seconds,
    }
