"""The FastAPI app of the interactive page (`python -m keypatch_jax.serve`).

`create_app(demo)` serves `static/` (the canvas page) and the JSON API around
an `interactive.Demo` (the checkpoint, detection and generation); uploads are
decoded and kept by `uploads`. Every bad input is a one-line message on the
page (`uploads.UploadError`, request validation), never a server crash; only
the page itself, served under an allowed host name, may change the server's
state (docs/design.md §8.1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Annotated

import fastapi
import pydantic
import starlette.datastructures
import starlette.exceptions
from fastapi import responses, staticfiles
from fastapi.exceptions import RequestValidationError
from starlette.middleware import trustedhost

from keypatch_jax import interactive, uploads

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# Body of a JSON request (a generate request with 6 boxes is ~300 bytes), and what a multipart
# upload may add to the file limit (boundaries, part headers).
JSON_BODY_BYTES = 64 * 1024
MULTIPART_SLACK_BYTES = 64 * 1024
MAX_SEED = 2**31 - 1
ID_CHARS = 64  # a store id is 32 hex digits
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
UPLOAD_PATHS = ("/api/photo", "/api/patch")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

Coordinate = Annotated[float, pydantic.Field(allow_inf_nan=False, ge=-1e6, le=1e6)]
Box = Annotated[list[Coordinate], pydantic.Field(min_length=4, max_length=4)]
Id = Annotated[str, pydantic.Field(max_length=ID_CHARS)]


def generate_request(max_patches: int) -> type[pydantic.BaseModel]:
  """The model of a `POST /api/generate` body (see `interactive.Demo.result`) for a server of `max_patches`.

  Every list is bounded by `max_patches` and every number by its range, so a
  bad request is a 400 before any work: boxes of exactly 4 finite numbers,
  seeds in [0, 2^31 - 1], orders of indices < max_patches, ids of <= 64 characters.
  """
  index = Annotated[int, pydantic.Field(ge=0, lt=max_patches)]
  return pydantic.create_model(
    "GenerateRequest",
    __config__=pydantic.ConfigDict(extra="forbid"),
    image_id=(Id | None, None),
    boxes=(list[Box], pydantic.Field(default_factory=list, max_length=max_patches)),
    patch_ids=(list[Id], pydantic.Field(default_factory=list, max_length=max_patches)),
    seed=(int, pydantic.Field(0, ge=0, le=MAX_SEED)),
    order=(list[index] | None, pydantic.Field(None, max_length=max_patches)),
  )


def _host_of(value: str) -> tuple[str, str] | None:
  """(host in lower case, port or '') of a Host header or an Origin's netloc, else None."""
  from starlette._utils import parse_host_header

  parsed = parse_host_header(value)
  return None if parsed is None else (parsed.host.lower(), parsed.port or "")


class PageGuard:
  """Refuses, before the app reads anything, what the page must never serve (docs/design.md §8.1).

  - 403 for a state-changing request a browser sends from another site. Rule,
    for every method but GET/HEAD/OPTIONS: an `Origin` header must be
    `http://` + the request's own Host (the page's origin: "null" and any
    other origin are refused); a `Sec-Fetch-Site` header must be
    "same-origin" or "none". A request with neither header comes from a
    program, not a web page (browsers send Origin with every cross-origin
    POST, and Sec-Fetch-Site with every request), and is let through: what a
    local program can do, it can do without the page. The Host itself is
    checked before, by Starlette's TrustedHostMiddleware (DNS rebinding).
  - 413 for a declared Content-Length over `body_limit(path)` (a chunked or
    under-declared body is cut while it is read, by FastAPI's `max_body_size`).

  Args:
    app: the ASGI app.
    body_limit: path -> (bytes, what the limit is called in the message).
  """

  def __init__(self, app, body_limit: Callable[[str], tuple[int, str]]):
    self.app = app
    self.body_limit = body_limit

  async def __call__(self, scope, receive, send):
    if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
      headers = starlette.datastructures.Headers(scope=scope)
      status, message = 0, ""
      site, origin = headers.get("sec-fetch-site"), headers.get("origin")
      if site is not None and site not in ("same-origin", "none"):
        status, message = 403, f"refused a {site} request (Sec-Fetch-Site)"
      elif origin is not None:
        scheme, _, netloc = origin.partition("://")
        if scheme != "http" or _host_of(netloc) is None or _host_of(netloc) != _host_of(headers.get("host", "")):
          status, message = 403, f"refused a request from the page of another origin ({origin[:100]})"
      if status:
        message += ": only this server's own page may change its state"
      limit, what = self.body_limit(scope["path"])
      length = headers.get("content-length", "")
      if not status and length.isdigit() and int(length) > limit:
        status, message = 413, f"the request body ({int(length) / uploads.MB:.1f} MB) is over the {what}"
      if status:
        await responses.JSONResponse({"error": uploads.one_line(message)}, status_code=status)(scope, receive, send)
        return
    await self.app(scope, receive, send)


def create_app(demo: interactive.Demo, allowed_hosts: Sequence[str] = LOOPBACK_HOSTS):
  """The FastAPI app of the page: `/` (the page), `/static/*` and the JSON API under `/api`.

  Every error reply is JSON {"error": one line}: 400 for bad input (request
  models bound every list and number, `generate_request`), 403 for a
  state-changing request from another origin (`PageGuard`), 413 for a body
  over its limit (`JSON_BODY_BYTES`, or the upload limit for `/api/photo` and
  `/api/patch`: a declared length at once, `PageGuard`; every byte counted
  while reading, chunked bodies too, by FastAPI's per-route `max_body_size`),
  500 (logged with its traceback) for a bug. A request
  whose Host is not in `allowed_hosts` (Starlette's TrustedHostMiddleware)
  gets 400 "Invalid host header".
  """
  app = fastapi.FastAPI(title="keypatch-jax", docs_url=None, redoc_url=None, openapi_url=None)
  upload_limit = demo.max_bytes + MULTIPART_SLACK_BYTES

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

  def body_limit(path: str) -> tuple[int, str]:
    if path in UPLOAD_PATHS:
      return upload_limit, f"{demo.max_bytes / uploads.MB:.0f} MB upload limit (--max-upload-mb)"
    return JSON_BODY_BYTES, f"{JSON_BODY_BYTES // 1024} KB limit of a request"

  @app.exception_handler(starlette.exceptions.HTTPException)
  async def _http_error(request, exc):
    if exc.status_code == 413:
      return error(413, f"the request body is over the {body_limit(request.url.path)[1]}")
    return error(exc.status_code, f"{exc.detail}")

  @app.exception_handler(Exception)
  async def _bug(request, exc):  # Starlette logs the traceback after this reply
    return error(500, f"internal error ({type(exc).__name__}: {exc}); see the server log")

  app.add_middleware(PageGuard, body_limit=body_limit)
  app.add_middleware(trustedhost.TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)

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

  @app.post("/api/test-images/{index}", max_body_size=JSON_BODY_BYTES)
  def pick(index: int):
    return demo.pick_test_image(index)

  @app.post("/api/photo", max_body_size=upload_limit)
  async def photo(file: fastapi.UploadFile):
    data, name = await read(file)
    return await _threaded(demo.add_photo, data, name)

  @app.post("/api/patch", max_body_size=upload_limit)
  async def patch(file: fastapi.UploadFile):
    data, name = await read(file)
    return await _threaded(demo.add_patch, data, name)

  def generate(req):
    return demo.result(req.image_id, req.boxes, req.patch_ids, req.seed, req.order)

  generate.__annotations__ = {"req": generate_request(demo.max_patches)}  # a per-server model, not a global name
  app.post("/api/generate", max_body_size=JSON_BODY_BYTES)(generate)

  app.mount("/static", staticfiles.StaticFiles(directory=STATIC_DIR), name="static")
  return app


async def _threaded(fn, *args):
  """Runs blocking work (decoding, detection) off the event loop."""
  from starlette.concurrency import run_in_threadpool

  return await run_in_threadpool(fn, *args)


# --- command line --------------------------------------------------------------
