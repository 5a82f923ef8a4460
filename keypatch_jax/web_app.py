"""The FastAPI app of the interactive page (`python -m keypatch_jax.serve`).

`create_app(demo)` serves `static/` (the canvas page) and the JSON API around
an `interactive.Demo` (the checkpoint, detection and generation); uploads are
decoded and kept by `uploads`. Every bad input is a one-line message on the
page (`uploads.UploadError`, request validation), never a server crash.
"""

from __future__ import annotations

import os

import fastapi
import pydantic
from fastapi import responses, staticfiles
from fastapi.exceptions import RequestValidationError

from keypatch_jax import interactive, uploads

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


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
