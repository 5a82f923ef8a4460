"""An interactive page over a trained checkpoint: give it key patches, see where they go.

  python -m keypatch_jax.serve --workdir WORK [--data DATA] [--port 8000] [--host 127.0.0.1]

Upload a photo (or pick a test image of --data): the page runs the same
EdgeBoxes detection as `python -m preprocessing` (`preprocessing.worker`) and
draws the proposed key patches; drag, resize or redraw them, choose how many
to use, add separate patch images (the paper's part combination, Table 1 and
Figure 9), and generate: the predicted mask, the generated image and the
patches pasted where the mask put them (`paste.paste_patches`). Only the generator is
restored (EMA parameters unless --raw), as `sample` does; it is compiled for
every N in 1..--max-patches before the server starts listening.

The page is `static/index.html` + `static/app.js` (a canvas for the boxes)
over a FastAPI app (`create_app`); every bad input is a one-line message on
the page, never a server crash.
"""

from __future__ import annotations

import argparse
import base64
import collections
import concurrent.futures
import dataclasses
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import fastapi
import numpy as np
import pydantic
from fastapi import responses, staticfiles
from fastapi.exceptions import RequestValidationError

from keypatch_jax import cli, errors, inference, input_pipeline, paste, patches, visualize

PROG = "keypatch_jax.serve"
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MB = 1024 * 1024
# Uploaded images and patches kept in memory (least recently used are dropped).
STORE_SIZE = 64


class UploadError(errors.UserError):
  """A request the page cannot serve (one-line message shown on the page)."""


def one_line(message: str) -> str:
  """`message` with all whitespace runs (newlines included) collapsed to one space."""
  return " ".join(str(message).split())


def png_data_url(image: np.ndarray) -> str:
  """uint8 [H, W, 3] RGB -> a `data:image/png;base64,...` URL."""
  import cv2

  ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
  if not ok:
    raise RuntimeError(f"PNG encoding of an image of shape {image.shape} failed")
  return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


_REJECT_MESSAGES = {
  "not_an_image": "is not an image OpenCV or Pillow can read (use PNG, JPEG, BMP, WebP, TIFF or GIF)",
  "truncated": "is a truncated JPEG (its end marker is missing)",
  "decode_error": "cannot be decoded as an image",
  "read_error": "cannot be read",
}


def decode_upload(data: bytes, name: str, max_bytes: int) -> np.ndarray:
  """Decodes an uploaded file with the preprocessing decoder: uint8 RGB [H, W, 3].

  Grayscale, 16-bit, palette, CMYK and alpha images are converted (alpha is
  dropped), as `preprocessing.images.decode_image` does.

  Raises:
    UploadError: empty, over `max_bytes`, not an image, undecodable or over
      `preprocessing.images.MAX_PIXELS`; the message names the file.
  """
  from preprocessing import images

  if not data:
    raise UploadError(f"{name!r} is empty")
  if len(data) > max_bytes:
    raise UploadError(f"{name!r} is over {max_bytes / MB:.0f} MB, the upload limit (--max-upload-mb)")
  try:
    return images.decode_image(data)
  except images.Reject as r:
    if r.reason == "too_large":
      raise UploadError(f"{name!r} has more than {images.MAX_PIXELS // 1_000_000} megapixels") from None
    raise UploadError(f"{name!r} {_REJECT_MESSAGES.get(r.reason, r.reason)}") from None


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
  from preprocessing.__main__ import build_parser, make_settings

  args = build_parser().parse_args(["--source", "synthetic", "--output", "unused"])
  options = dict((info or {}).get("options") or {})
  if options:  # flags added after a dataset was written: the behaviour it was written with
    options.setdefault("scoring", "edgeboxes")
    options.setdefault("selection", "nms")
  for key, value in options.items():
    if hasattr(args, key):
      setattr(args, key, value)
  args.image_size, args.num_patches = image_size, max_patches
  if args.sed_model and not os.path.isfile(args.sed_model):
    print(f"{PROG}: the dataset's --sed-model {args.sed_model!r} is not here; proposing boxes from gradient edges")
    args.sed_model = None
  return make_settings(args)


@dataclasses.dataclass(frozen=True)
class Picture:
  """An image on the page: the frame the boxes are drawn in, and the model's S x S picture."""

  frame: np.ndarray  # uint8 [h, w, 3], the detection frame (boxes are in its pixels)
  model: np.ndarray  # uint8 [S, S, 3], what preprocessing would store


class Store:
  """A small thread-safe LRU of uploaded items by random id."""

  def __init__(self, size: int = STORE_SIZE):
    self._items: collections.OrderedDict[str, Any] = collections.OrderedDict()
    self._size = size
    self._lock = threading.Lock()

  def put(self, item: Any) -> str:
    key = uuid.uuid4().hex
    with self._lock:
      self._items[key] = item
      while len(self._items) > self._size:
        self._items.popitem(last=False)
    return key

  def get(self, key: str, what: str) -> Any:
    with self._lock:
      if key not in self._items:
        raise UploadError(f"{what} {key!r} is no longer on the server (it keeps the last {self._size}); add it again")
      self._items.move_to_end(key)
      return self._items[key]


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
    self.max_bytes = int(max_upload_mb * MB)
    self.settings = detection_settings(run.meta.info if run.meta else None, self.size, max_patches)
    self.pictures, self.patches = Store(), Store()
    self._generate = inference.generate_fn(run.generator)
    self._lock = threading.Lock()
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
    self.result(self.pictures.put(Picture(blank, blank)), [[0, 0, s, s]] * n, [], 0, None)
    return time.perf_counter() - start

  def info(self) -> dict:
    """What the page shows about the checkpoint."""
    return {
      "step": self.run.step,
      "image_size": self.size,
      "num_patches": self.run.config.num_patches,
      "max_patches": self.max_patches,
      "max_upload_mb": self.max_bytes / MB,
      "test_images": len(self.test_set),
      "min_side": self.settings.min_side,
    }

  # --- pictures and patches ---------------------------------------------------

  def _picture_reply(self, picture: Picture, boxes: np.ndarray, note: str = "") -> dict:
    h, w = picture.frame.shape[:2]
    return {
      "image_id": self.pictures.put(picture),
      "frame": png_data_url(picture.frame),
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
      UploadError: a bad file, or a photo under 32 pixels on its shorter side.
    """
    from preprocessing import detect, images, worker

    image = decode_upload(data, name, self.max_bytes)
    if self.settings.center_crop > 0:
      image = images.center_crop(image, self.settings.center_crop)
    if min(image.shape[:2]) < images.MIN_SIDE:
      h, w = image.shape[:2]
      raise UploadError(f"{name!r} is {w}x{h}; a photo needs a shorter side of at least {images.MIN_SIDE} pixels")
    sed = None
    if self.settings.sed_model:
      import cv2

      sed = cv2.ximgproc.createStructuredEdgeDetection(self.settings.sed_model)
    boxes, _ = worker.detect_boxes(image, self.settings, sed)
    picture = Picture(detect.resize_short_side(image, self.settings.min_side), worker.model_image(image, self.settings))
    n = self.run.config.num_patches
    note = f"EdgeBoxes found {len(boxes)} key patches"
    if len(boxes) < n:
      note += f", fewer than the {n} the model was trained with: draw more boxes"
    return self._picture_reply(picture, boxes, note)

  def pick_test_image(self, index: int) -> dict:
    """Test image `index` of --data with its stored boxes (the preprocessing's), as `add_photo` returns."""
    if not 0 <= index < len(self.test_set):
      raise UploadError(f"test image {index} does not exist (the page offers {len(self.test_set)})")
    image, boxes = self.test_set[index]
    return self._picture_reply(Picture(image, image), boxes, f"test image {index} with its stored key patches")

  def test_thumbnails(self) -> list[str]:
    return [png_data_url(image) for image, _ in self.test_set]

  def add_patch(self, data: bytes, name: str) -> dict:
    """A separate patch image, resized to S x S as `patches.load_patch_folder` does: {"patch_id", "thumb"}."""
    import cv2

    image = decode_upload(data, name, self.max_bytes)
    patch = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_CUBIC)
    return {"patch_id": self.patches.put(patch), "thumb": png_data_url(patch)}

  # --- generation -------------------------------------------------------------

  def patch_set(self, image_id: str | None, boxes: Sequence[Sequence[float]], patch_ids: Sequence[str]) -> np.ndarray:
    """The patches of a request: box crops of the picture, then the uploaded patches. float32 [N, S, S, 3]."""
    from preprocessing import detect

    s = self.size
    out = []
    if boxes:
      if image_id is None:
        raise UploadError("boxes were sent without an image; upload a photo first")
      picture = self.pictures.get(image_id, "image")
      b = np.asarray(boxes, np.float32).reshape(-1, 4)
      if not np.isfinite(b).all():
        raise UploadError("a box has a non-finite coordinate")
      h, w = picture.frame.shape[:2]
      b = detect.clip_boxes(b, h, w)
      if (b[:, 2] < 1).any() or (b[:, 3] < 1).any():
        raise UploadError("a box lies outside the image or is under 1 pixel wide or high; redraw it")
      model = picture.model.astype(np.float32) / 127.5 - 1.0
      out.extend(patches.crop(model[None], detect.scale_boxes(b, h, w, s)[None])[0])
    for pid in patch_ids:
      out.append(self.patches.get(pid, "patch").astype(np.float32) / 127.5 - 1.0)
    if not out:
      raise UploadError("no patches: draw a box on the image or add patch images")
    if len(out) > self.max_patches:
      raise UploadError(f"{len(out)} patches; this server takes at most {self.max_patches} (--max-patches)")
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
      raise UploadError(f"order {order} is not a permutation of the {n} patches")
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
      "mask": png_data_url(visualize.to_uint8(mask * 2.0 - 1.0)),
      "image": png_data_url(image8),
      "pasted": png_data_url(pasted),
      "patches": [png_data_url(p) for p in used],
      "order": order,
      "max_diff": max_diff,
      "boxes": placed.tolist(),
      "seconds": seconds,
    }


# --- web app -------------------------------------------------------------------


class GenerateRequest(pydantic.BaseModel):
  """The body of `POST /api/generate` (see `Demo.result`)."""

  image_id: str | None = None
  boxes: list[list[float]] = pydantic.Field(default_factory=list)
  patch_ids: list[str] = pydantic.Field(default_factory=list)
  seed: int = 0
  order: list[int] | None = None


def create_app(demo: Demo):
  """The FastAPI app of the page: `/` (the page), `/static/*` and the JSON API under `/api`.

  Every error reply is JSON {"error": one line}: 400 for bad input, 413 for an
  upload over the limit, 500 (logged with its traceback) for a bug.
  """
  app = fastapi.FastAPI(title="keypatch-jax", docs_url=None, redoc_url=None, openapi_url=None)

  def error(status: int, message: str):
    return responses.JSONResponse({"error": one_line(message)}, status_code=status)

  @app.exception_handler(UploadError)
  async def _upload_error(request, exc):
    return error(400, str(exc))

  @app.exception_handler(RequestValidationError)
  async def _validation_error(request, exc):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return error(400, f"bad request: {where or 'body'}: {first.get('msg', 'invalid')}")

  @app.exception_handler(Exception)
  async def _bug(request, exc):  # Starlette logs the traceback after this reply
    return error(500, f"internal error ({type(exc).__name__}: {exc}); see the server log")

  @app.middleware("http")
  async def _limit_size(request, call_next):
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > demo.max_bytes + MB:
      return error(413, f"upload of {int(length) / MB:.1f} MB is over the {demo.max_bytes / MB:.0f} MB limit")
    return await call_next(request)

  async def read(file: fastapi.UploadFile) -> tuple[bytes, str]:
    return await file.read(demo.max_bytes + 1), os.path.basename(file.filename or "upload")

  @app.get("/")
  def index():
    return responses.FileResponse(os.path.join(STATIC_DIR, "index.html"))

  @app.get("/api/info")
  def info():
    return demo.info()

  @app.get("/api/test-images")
  def test_images():
    return {"thumbnails": demo.test_thumbnails()}

  @app.post("/api/test-images/{index}")
  def pick(index: int):
    return demo.pick_test_image(index)

  @app.post("/api/photo")
  async def photo(file: fastapi.UploadFile):
    data, name = await read(file)
    return await _threaded(demo.add_photo, data, name)

  @app.post("/api/patch")
  async def patch(file: fastapi.UploadFile):
    data, name = await read(file)
    return await _threaded(demo.add_patch, data, name)

  @app.post("/api/generate")
  def generate(req: GenerateRequest):
    return demo.result(req.image_id, req.boxes, req.patch_ids, req.seed, req.order)

  app.mount("/static", staticfiles.StaticFiles(directory=STATIC_DIR), name="static")
  return app


async def _threaded(fn, *args):
  """Runs blocking work (decoding, detection) off the event loop."""
  from starlette.concurrency import run_in_threadpool

  return await run_in_threadpool(fn, *args)


# --- command line --------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="training workdir (config.json + checkpoints/)")
  p.add_argument("--data", default=None, help="preprocessed dataset: its test images and detection settings")
  p.add_argument("--port", type=int, default=8000, help="TCP port")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--raw", action="store_true", help="raw generator params instead of the EMA")
  p.add_argument("--max-patches", type=int, default=None, help="largest N a request may use (default: 2x trained N)")
  p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload, MB")
  p.add_argument("--test-images", type=int, default=24, help="test images of --data offered on the page")
  args = p.parse_args(argv)
  if not 0 <= args.port <= 65535:
    p.error(f"--port {args.port}: must be in [0, 65535]")
  if args.max_patches is not None and args.max_patches < 1:
    p.error(f"--max-patches {args.max_patches}: must be >= 1")
  if args.max_upload_mb <= 0:
    p.error(f"--max-upload-mb {args.max_upload_mb}: must be > 0")
  if args.test_images < 0:
    p.error(f"--test-images {args.test_images}: must be >= 0")
  return args


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  import uvicorn

  run = inference.load_run(args.workdir, args.data, step=args.step, ema=not args.raw)
  max_patches = args.max_patches or 2 * run.config.num_patches
  demo = Demo(run, max_patches=max_patches, max_upload_mb=args.max_upload_mb, test_images=args.test_images)
  seconds = demo.compile()
  s = demo.size
  print(
    f"{PROG}: step {run.step}, {s}x{s}, compiled for N=1..{max_patches} in {seconds:.1f} s; "
    f"serving http://{args.host}:{args.port}/",
    flush=True,
  )
  uvicorn.run(create_app(demo), host=args.host, port=args.port, log_level="warning")
  return 0


main, run = cli.command(PROG, _main)


if __name__ == "__main__":
  run()
