"""Decoding untrusted image files to 8-bit RGB, with a reason when that fails.

A file is an image if it decodes, whatever its name: OpenCV first, then Pillow
(GIF, TGA, ICO, ... and anything else either library reads). Every failure is a
`Reject` carrying one of the `REASONS`, never an exception that could stop a
run.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings

# OpenCV reads this limit once, at its first decode: set it before importing cv2.
MAX_PIXELS = 50_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(4 * MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

MIN_SIDE = 32
MAX_FILE_BYTES = 256 * 1024 * 1024

REASONS = (
  "read_error",  # the file could not be read (permissions, a broken link, an unlistable directory)
  "not_a_file",  # a directory, FIFO, socket or device where a file was expected
  "not_an_image",  # neither OpenCV nor Pillow decodes it, and no known image signature
  "truncated",  # a JPEG whose data ends before its end-of-image marker
  "decode_error",  # a known image signature that neither OpenCV nor Pillow decodes
  "too_large",  # more than MAX_PIXELS and not reducible while decoding
  "too_small",  # shorter side < MIN_SIDE pixels
  "smaller_than_crop",  # --center-crop: a side is shorter than the crop (the crop would not be square)
  "too_few_boxes",  # fewer than N boxes survive the filters (or in the --boxes file's row)
  "no_boxes",  # --boxes: the file has no boxes for this image
  "box_outside_image",  # --boxes: a box leaves the image or is empty
)


class Reject(Exception):
  """An input that is skipped, with `reason` in `REASONS`."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def sniff_format(data: bytes) -> str | None:
  """'jpeg' | 'png' | 'bmp' | 'webp' | 'gif' | 'tiff' from the file signature, else None."""
  if data[:3] == b"\xff\xd8\xff":
    return "jpeg"
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    return "png"
  if data[:2] == b"BM":
    return "bmp"
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "webp"
  if data[:6] in (b"GIF87a", b"GIF89a"):
    return "gif"
  if data[:4] in (b"II*\x00", b"MM\x00*"):
    return "tiff"
  return None


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
  """(width, height) from a PNG, BMP or JPEG header without decoding, else None."""
  try:
    if fmt == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
      return struct.unpack(">II", data[16:24])
    if fmt == "bmp" and len(data) >= 26:
      w, h = struct.unpack("<ii", data[18:26])
      return abs(w), abs(h)
    if fmt == "jpeg":
      i = 2
      while i + 9 < len(data):
        if data[i] != 0xFF:
          i += 1
          continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
          i += 1 if marker == 0xFF else 2
          continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
          h, w = struct.unpack(">HH", data[i + 5 : i + 9])
          return w, h
        i += 2 + length
  except struct.error:
    return None
  return None


# A JPEG marker in entropy-coded data: 0xFF followed by neither a stuffed 0x00,
# a restart marker (0xD0-0xD7) nor a fill byte (0xFF).
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def jpeg_end(data: bytes) -> int | None:
  """Offset just past a JPEG's end-of-image marker (0xFFD9), or None when the data ends first.

  Walks the segments by their lengths and the entropy-coded scans to their
  next marker, so an end marker inside a header (an EXIF thumbnail) is not
  taken for the end, and bytes after the real end (phones append a video to
  "motion photos") do not make a complete JPEG look truncated.
  """
  i, n = 2, len(data)
  while i + 2 <= n:
    if data[i] != 0xFF:  # junk between segments: resynchronise on the next marker
      m = _JPEG_MARKER.search(data, i)
      if m is None:
        return None
      i = m.start()
    marker = data[i + 1]
    if marker == 0xD9:
      return i + 2
    if marker == 0xFF:  # fill byte
      i += 1
      continue
    if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
      i += 2
      continue
    if i + 4 > n:
      return None
    i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
      m = _JPEG_MARKER.search(data, i)
      if m is None:
        return None
      i = m.start()
  return None


def to_rgb8(image: np.ndarray) -> np.ndarray:
  """Converts a decoded OpenCV image (BGR/BGRA/gray, 8/16-bit or float) to uint8 RGB [H, W, 3]."""
  if image.dtype == np.uint16:
    image = (image >> 8).astype(np.uint8)
  elif image.dtype != np.uint8:
    image = np.clip(image.astype(np.float32) * (255.0 if image.max() <= 1.0 else 1.0), 0, 255)
    image = image.astype(np.uint8)
  if image.ndim == 2:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
  if image.shape[2] == 1:
    return cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2RGB)
  if image.shape[2] == 4:
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _pillow_decode(data: bytes, max_pixels: int) -> np.ndarray | None:
  """Pillow's decoding of `data` (first frame) as uint8 RGB [H, W, 3], or None if Pillow cannot read it.

  Raises:
    Reject: 'too_large' when the image has more than `max_pixels` pixels.
  """
  from PIL import Image, ImageOps

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the outcome is what counts
      with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > max_pixels:
          raise Reject("too_large")
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: keep the top 8 bits of 16
          return to_rgb8(np.asarray(im).astype(np.uint16))
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), np.uint8))
  except Reject:
    raise
  except Exception:  # noqa: BLE001 - untrusted bytes: any failure means "Pillow cannot read it"
    return None


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Decodes image file bytes to uint8 RGB [H, W, 3], whatever the format.

  OpenCV decodes first; what it cannot read (GIF on some builds, TGA, ICO,
  ...) goes to Pillow (first frame). Grayscale, 16-bit, palette and alpha
  images are converted (alpha is dropped; EXIF orientation is applied). JPEGs
  over `max_pixels` are decoded at a reduced scale (1/2, 1/4 or 1/8); other
  images over it are rejected. Bytes after a JPEG's end marker are ignored.

  Raises:
    Reject: with the reason (see `REASONS`).
  """
  fmt = sniff_format(data)
  if fmt == "jpeg" and jpeg_end(data) is None:
    raise Reject("truncated")
  flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
  size = header_size(data, fmt) if fmt else None
  if size is not None and size[0] * size[1] > max_pixels:
    factor = next((f for f in (2, 4, 8) if size[0] * size[1] / (f * f) <= max_pixels), None)
    if fmt != "jpeg" or factor is None:
      raise Reject("too_large")
    flags = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(factor, cv2.IMREAD_REDUCED_COLOR_8)
  try:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
  except cv2.error:
    image = None
  if image is None or image.size == 0:
    image = _pillow_decode(data, max_pixels)
    if image is None or image.size == 0:
      raise Reject("not_an_image" if fmt is None else "decode_error")
    return image
  if image.shape[0] * image.shape[1] > max_pixels:
    raise Reject("too_large")
  return to_rgb8(image)


def read_image_file(path: str) -> np.ndarray:
  """Reads and decodes an image file (local path or any `tf.io.gfile` URL); only regular files are opened.

  Raises:
    Reject: with the reason (see `REASONS`).
  """
  try:
    if "://" in path:
      import tensorflow as tf

      with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    else:
      if not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO would block forever
        raise Reject("not_a_file")
      with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
  except OSError:
    raise Reject("read_error") from None
  if len(data) > MAX_FILE_BYTES:
    raise Reject("too_large")
  return decode_image(data)


def check_size(image: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
  """Returns `image` [H, W, 3] if its shorter side is >= min_side, else Reject('too_small')."""
  if min(image.shape[:2]) < min_side:
    raise Reject("too_small")
  return image


def center_crop(image: np.ndarray, side: int) -> np.ndarray:
  """Central side x side crop of [H, W, C] (CelebA: 108 of 178 x 218, paper §4).

  Raises:
    Reject: 'smaller_than_crop' when H or W is below `side`: the crop would be
      a different part of the picture, and not square (e.g. `--center-crop 108`
      on CelebA's half-size 89 x 109 copies, whose paper crop is 54).
  """
  h, w = image.shape[:2]
  if min(h, w) < side:
    raise Reject("smaller_than_crop")
  y0, x0 = (h - side) // 2, (w - side) // 2
  return image[y0 : y0 + side, x0 : x0 + side]
