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
over a FastAPI app (`create_app`) around `interactive.Demo` (the checkpoint,
detection and generation) and `uploads` (decoding and keeping uploaded
files); every bad input is a one-line message on the page, never a server
crash.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import fastapi
import pydantic
from fastapi import responses, staticfiles
from fastapi.exceptions import RequestValidationError

from keypatch_jax import cli, inference, interactive, uploads

PROG = "keypatch_jax.serve"
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


# --- web app -------------------------------------------------------------------


class GenerateRequest(pydantic.BaseModel):
  """The body of `POST /api/generate` (see `interactive.Demo.result`)."""

  image_id: str | None = None
  boxes: list[list[float]] = pydantic.Field(default_factory=list)
  patch_ids: list[str] = pydantic.Field(default_factory=list)
  seed: int = 0
  order: list[int] | None = None


def create_app(demo: interactive.Demo):
  """The FastAPI app of the page: `/` (the page), `/static/*` and the JSON API under `/api`.

  Every error reply is JSON {"error": one line}: 400 for bad input, 413 for an
  upload over the limit, 500 (logged with its traceback) for a bug.
  """
  app = fastapi.FastAPI(title="keypatch-jax", docs_url=None, redoc_url=None, openapi_url=None)

  def error(status: int, message: str):
    return responses.JSONResponse({"error": uploads.one_line(message)}, status_code=status)

  @app.exception_handler(uploads.UploadError)
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
    if length and length.isdigit() and int(length) > demo.max_bytes + uploads.MB:
      return error(
        413, f"upload of {int(length) / uploads.MB:.1f} MB is over the {demo.max_bytes / uploads.MB:.0f} MB limit"
      )
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
  demo = interactive.Demo(run, max_patches=max_patches, max_upload_mb=args.max_upload_mb, test_images=args.test_images)
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
