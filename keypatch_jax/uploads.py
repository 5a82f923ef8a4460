"""What the interactive page (`serve`) is sent: uploaded files, the pictures and patches it keeps.

`decode_upload` turns an uploaded file into uint8 RGB with the preprocessing
decoder (behind its decoding gate, `preprocessing.images.check_header`), or a
one-line `UploadError` naming the file; `Picture` is an image on the page,
`Store` the LRU, bounded in bytes, that keeps pictures and patches by id
between requests; `png_data_url` encodes an image for the page, `one_line` a
message.
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
# Bytes of pictures (and, separately, of patches) kept in memory; the least recently used
# are dropped past it. A picture's detection frame is at most MAX_ASPECT * min_side^2 pixels.
STORE_BYTES = 64 * MB


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
  "too_elongated": "is too elongated (its longer side is over {aspect} times the shorter one)",
  "too_small": "is too small (a photo needs a shorter side of at least {min_side} pixels)",
}


def reject_message(name: str, reason: str) -> str:
  """The page's one line for a `preprocessing.images.Reject` reason of file `name`."""
  from preprocessing import images

  if reason == "too_large":
    return (
      f"{name!r} has more than {images.MAX_PIXELS // 1_000_000} megapixels, or would take more than "
      f"{images.MAX_DECODE_BYTES // MB} MB to decode (a float HDR, a large progressive JPEG)"
    )
  text = _REJECT_MESSAGES.get(reason, reason).format(aspect=images.MAX_ASPECT, min_side=images.MIN_SIDE)
  return f"{name!r} {text}"


def decode_upload(data: bytes, name: str, max_bytes: int) -> np.ndarray:
  """Decodes an uploaded file with the preprocessing decoder: uint8 RGB [H, W, 3].

  Grayscale, 16-bit, palette, CMYK and alpha images are converted (alpha is
  dropped), as `preprocessing.images.decode_image` does.

  Raises:
    UploadError: empty, over `max_bytes`, not an image, undecodable or over
      `preprocessing.images.MAX_PIXELS` / `MAX_DECODE_BYTES` by its header
      (refused before decoding); the message names the file.
  """
  from preprocessing import images

  if not data:
    raise UploadError(f"{name!r} is empty")
  if len(data) > max_bytes:
    raise UploadError(f"{name!r} is over {max_bytes / MB:.0f} MB, the upload limit (--max-upload-mb)")
  try:
    return images.decode_image(data)
  except images.Reject as r:
    raise UploadError(reject_message(name, r.reason)) from None


@dataclasses.dataclass(frozen=True)
class Picture:
  """An image on the page: the frame the boxes are drawn in, and the model's S x S picture."""

  frame: np.ndarray  # uint8 [h, w, 3], the detection frame (boxes are in its pixels)
  model: np.ndarray  # uint8 [S, S, 3], what preprocessing would store


def nbytes(item: Any) -> int:
  """Bytes of the arrays of a stored item (a `Picture` or an array)."""
  if isinstance(item, np.ndarray):
    return item.nbytes
  return sum(v.nbytes for v in vars(item).values() if isinstance(v, np.ndarray))


class Store:
  """A thread-safe LRU of uploaded items by random id, bounded by the bytes of their arrays.

  Putting an item drops the least recently used ones until the total is at
  most `max_bytes` (the new item is always kept).
  """

  def __init__(self, max_bytes: int = STORE_BYTES):
    self._items: collections.OrderedDict[str, tuple[Any, int]] = collections.OrderedDict()
    self._max_bytes = max_bytes
    self._bytes = 0
    self._lock = threading.Lock()

  @property
  def bytes(self) -> int:
    """Bytes held now."""
    return self._bytes

  def __len__(self) -> int:
    return len(self._items)

  def put(self, item: Any) -> str:
    key, size = uuid.uuid4().hex, nbytes(item)
    with self._lock:
      self._items[key] = (item, size)
      self._bytes += size
      while self._bytes > self._max_bytes and len(self._items) > 1:
        _, (_, dropped) = self._items.popitem(last=False)
        self._bytes -= dropped
    return key

  def get(self, key: str, what: str) -> Any:
    with self._lock:
      if key not in self._items:
        raise UploadError(
          f"{what} {key!r} is no longer on the server (it keeps the last {self._max_bytes / MB:.0f} MB of them); "
          "add it again"
        )
      self._items.move_to_end(key)
      return self._items[key][0]
