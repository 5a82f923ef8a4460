"""Decoding untrusted image files to 8-bit RGB, with a reason when that fails.

A file is an image if it decodes, whatever its name: OpenCV first, then Pillow
(GIF, TGA, ICO, ... and anything else either library reads). Nothing is
decoded before `check_header`, the decoding gate shared by preprocessing,
`sample --patches` and the page, has read the size from the header and found
it within MAX_PIXELS and MAX_DECODE_BYTES (docs/design.md §2.4). Every failure
is a `Reject` carrying one of the `REASONS`, never an exception that could
stop a run.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings

# OpenCV reads this limit once, at its first decode: set it before importing cv2. It is a
# backstop behind `check_header` (OpenCV applies it to the reduced size of a reduced decode).
MAX_PIXELS = 50_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from preprocessing import image_header  # noqa: E402
from preprocessing.image_header import header_size, sniff_format  # noqa: E402, F401 - this module's API

# Pillow's own backstop: it warns over this many pixels and refuses over twice as many.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# The most a decoder may hold for one image (`image_header.Header.decode_bytes`): an 8-bit RGB
# image of MAX_PIXELS fits (twice 150 MB: imdecode's peak); a float HDR/PFM/TIFF up to 12.5 MP,
# a progressive JPEG up to ~33 MP (4:2:0) or 25 MP (4:4:4): its coefficient buffer is full size.
MAX_DECODE_BYTES = 300_000_000
MIN_SIDE = 32
# Longest side over shortest side: a longer image would make a detection frame (shorter side
# --min-side) of more than MAX_ASPECT * min_side^2 pixels, e.g. 32 x 200000 -> 128 x 800000.
MAX_ASPECT = 16
MAX_FILE_BYTES = 256 * 1024 * 1024

REASONS = (
  "read_error",  # the file could not be read (permissions, a broken link, an unlistable directory)
  "not_a_file",  # a directory, FIFO, socket or device where a file was expected
  "not_an_image",  # neither OpenCV nor Pillow decodes it, and no known image signature
  "truncated",  # a JPEG whose data ends before its end-of-image marker
  "decode_error",  # a known image signature that neither OpenCV nor Pillow decodes
  "too_large",  # more than MAX_PIXELS (or MAX_DECODE_BYTES to decode) by its header, and not reducible
  "too_small",  # shorter side < MIN_SIDE pixels
  "too_elongated",  # longer side > MAX_ASPECT x shorter side (the detection frame would be unbounded)
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
  """Converts a decoded OpenCV image (BGR/BGRA/gray, 8/16-bit or float) to uint8 RGB [H, W, 3].

  Works in place where it can (the decoder's buffer is not needed afterwards),
  so the conversion adds at most one 8-bit frame to the decoder's memory.
  """
  if image.dtype == np.uint16:
    image = np.right_shift(image, 8, out=image).astype(np.uint8)
  elif image.dtype != np.uint8:
    image = image.astype(np.float32, copy=False)
    if image.max() <= 1.0:
      np.multiply(image, 255.0, out=image)
    image = np.clip(image, 0, 255, out=image).astype(np.uint8)
  if image.ndim == 2:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
  if image.shape[2] == 1:
    return cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2RGB)
  if image.shape[2] == 4:
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
  rows = max(1, (1 << 20) // image.shape[1])  # in place, ~1 MP at a time: no second frame
  for y in range(0, image.shape[0], rows):
    block = image[y : y + rows]
    cv2.cvtColor(block, cv2.COLOR_BGR2RGB, dst=block)
  return image


def _pillow_decode(data: bytes) -> np.ndarray | None:
  """Pillow's decoding of `data` (first frame) as uint8 RGB [H, W, 3], or None if Pillow cannot read it.

  Only called once `check_header` has passed the file (Pillow's own
  `Image.MAX_IMAGE_PIXELS` check stops a header that differs from the one read there).
  """
  from PIL import Image, ImageOps

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the outcome is what counts
      with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > MAX_PIXELS:
          return None
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: keep the top 8 bits of 16
          return to_rgb8(np.asarray(im).astype(np.uint16))
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), np.uint8))
  except Exception:  # noqa: BLE001 - untrusted bytes: any failure means "Pillow cannot read it"
    return None


def check_header(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[image_header.Header, int]:
  """The decoding gate: what may be decoded, judged from the header alone (docs/design.md §2.4).

  Returns:
    (the header, the reduction factor per side: 1, or 2, 4 or 8 for a
    baseline JPEG over `max_pixels`, which libjpeg decodes reduced in the
    memory of the reduced image).

  Raises:
    Reject: 'not_an_image' / 'decode_error' when no parser reads the header
      (nothing then decodes the file, so no decoder can allocate from a size
      nobody checked); 'too_large' when the image has more than `max_pixels`
      pixels (and is not a baseline JPEG that a reduced decode brings under
      it), or when the decoder would hold more than `MAX_DECODE_BYTES` (a
      float HDR/PFM/TIFF of more than 12.5 MP, a progressive JPEG of more than
      25-33 MP, whose coefficient buffer is full size).
  """
  header = image_header.read_header(data)
  if header is None:
    raise Reject("not_an_image" if image_header.sniff_format(data) is None else "decode_error")
  if header.width < 1 or header.height < 1:
    raise Reject("decode_error")
  factor = 1
  if header.pixels > max_pixels:
    if header.fmt != "jpeg" or header.progressive:
      raise Reject("too_large")
    factor = next((f for f in (2, 4, 8) if header.pixels / (f * f) <= max_pixels), 0)
    if not factor:
      raise Reject("too_large")
  if header.decode_bytes(factor) > MAX_DECODE_BYTES:
    raise Reject("too_large")
  return header, factor


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Decodes image file bytes to uint8 RGB [H, W, 3], whatever the format, in bounded memory.

  `check_header` judges the file from its header first; nothing is decoded
  past it. OpenCV decodes first (16-bit images straight to 8 bits, float
  ones at their depth); what it cannot read (TGA, ICO, ...) goes to Pillow
  (first frame). Grayscale, 16-bit, palette and alpha images are converted
  (alpha is dropped; EXIF orientation is applied). Baseline JPEGs over
  `max_pixels` are decoded at a reduced scale (1/2, 1/4 or 1/8). Bytes after
  a JPEG's end marker are ignored.

  Raises:
    Reject: with the reason (see `REASONS`).
  """
  fmt = image_header.sniff_format(data)
  if fmt == "jpeg" and jpeg_end(data) is None:
    raise Reject("truncated")
  header, factor = check_header(data, max_pixels)
  # Integer formats decode straight to 8 bits (libpng and libtiff drop the low byte of 16-bit
  # samples as they go); float ones keep their depth for `to_rgb8`'s scaling.
  flags = cv2.IMREAD_COLOR | (cv2.IMREAD_ANYDEPTH if header.sample_bytes > 1 else 0)
  if factor > 1:
    flags = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}.get(factor, cv2.IMREAD_REDUCED_COLOR_8)
  try:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
  except cv2.error:
    image = None
  if image is None or image.size == 0:
    image = _pillow_decode(data)
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
  """Returns `image` [H, W, 3] if detection can use it (docs/design.md §2.4).

  Raises:
    Reject: 'too_small' when its shorter side is under `min_side`;
      'too_elongated' when its longer side is over MAX_ASPECT times the
      shorter one (enlarged to the detection frame's shorter side, a 32 x
      200000 strip would be 128 x 800000 pixels).
  """
  h, w = image.shape[:2]
  if min(h, w) < min_side:
    raise Reject("too_small")
  if max(h, w) > MAX_ASPECT * min(h, w):
    raise Reject("too_elongated")
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
