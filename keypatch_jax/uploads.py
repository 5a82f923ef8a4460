"""What the interactive page (`serve`) is sent: uploaded files, the pictures and patches it keeps.

`decode_upload` turns an uploaded file into uint8 RGB with the preprocessing
decoder, or a one-line `UploadError` naming the file; `Picture` is an image on
the page, `Store` the small LRU that keeps pictures and patches by id between
requests; `png_data_url` encodes an image for the page, `one_line` a message.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import threading
import uuid
from typing import Any

import numpy as np

from keypatch_jax import errors

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
