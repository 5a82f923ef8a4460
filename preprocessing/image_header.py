"""What an image file's header says, read before any pixel is decoded (docs/design.md §2.4).

`read_header` gives the format, the width and height, and the bytes per pixel
the decoder will hold, from the header alone: Pillow's lazy `Image.open`
(which parses the header and decodes nothing) for most formats, and small
parsers for the ones Pillow does not read (Radiance HDR, PFM) or whose
decoding cost Pillow does not tell (a progressive JPEG's coefficient buffer,
a PNG's bit depth). `images.decode_image` refuses on these numbers before a
decoder allocates anything.
"""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import warnings

# JPEG start-of-frame markers (not DHT 0xC4, JPG 0xC8, DAC 0xCC); the progressive ones keep a
# coefficient buffer of the whole image while decoding, whatever the output scale.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_PROGRESSIVE = frozenset((0xC2, 0xC6, 0xCA, 0xCE))
_HDR_SIZE = re.compile(rb"([-+][XY]) +(\d+) +([-+][XY]) +(\d+)")


@dataclasses.dataclass(frozen=True)
class Header:
  """A file's header.

  Attributes:
    fmt: 'jpeg' | 'png' | 'bmp' | 'webp' | 'gif' | 'tiff' | 'hdr' | 'pfm' | Pillow's format name, lower case.
    width, height: pixels.
    sample_bytes: bytes per decoded sample at the depth OpenCV keeps (1; 4 for float formats).
    progressive: a progressive (or lossless/hierarchical multi-scan) JPEG.
    planes: a JPEG's samples per pixel over its components, with their subsampling
      (3 for 4:4:4, 1.5 for 4:2:0, 1 for gray).
  """

  fmt: str
  width: int
  height: int
  sample_bytes: int = 1
  progressive: bool = False
  planes: float = 3.0

  @property
  def pixels(self) -> int:
    return self.width * self.height

  def decode_bytes(self, factor: int = 1) -> int:
    """Bytes the decoder holds at once for a decode reduced `factor` times per side.

    Twice the output (3 channels at `sample_bytes`: OpenCV's `imdecode` holds
    two copies at its peak, as measured by benchmarks/hostile_input_bench.py),
    plus for a progressive JPEG its coefficient buffer (2 bytes per sample, at
    full size: libjpeg keeps every coefficient until the last scan, so a
    reduced decode does not shrink it).
    """
    out = 2 * self.pixels * 3 * self.sample_bytes // (factor * factor)
    if self.progressive:
      out += int(self.pixels * 2 * self.planes)
    return out


def sniff_format(data: bytes) -> str | None:
  """'jpeg' | 'png' | 'bmp' | 'webp' | 'gif' | 'tiff' | 'hdr' | 'pfm' from the file signature, else None."""
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
  if data[:10] == b"#?RADIANCE" or data[:6] == b"#?RGBE":
    return "hdr"
  if data[:2] in (b"PF", b"Pf") and data[2:3].isspace():
    return "pfm"
  return None


def jpeg_frame(data: bytes) -> tuple[int, int, bool, float] | None:
  """(width, height, progressive, planes) from a JPEG's first frame header (see `Header`), else None."""
  i = 2
  try:
    while i + 9 < len(data):
      if data[i] != 0xFF:
        i += 1
        continue
      marker = data[i + 1]
      if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
        i += 1 if marker == 0xFF else 2
        continue
      length = struct.unpack(">H", data[i + 2 : i + 4])[0]
      if marker in _JPEG_SOF:
        h, w = struct.unpack(">HH", data[i + 5 : i + 9])
        sampling = [data[j + 1] for j in range(i + 10, min(i + 10 + 3 * data[i + 9], len(data) - 2), 3)]
        hv = [(s >> 4, s & 15) for s in sampling] or [(1, 1)] * 3
        h_max, v_max = max(max(a for a, _ in hv), 1), max(max(b for _, b in hv), 1)
        planes = sum(a * b for a, b in hv) / (h_max * v_max)
        # Lossless and hierarchical frames are multi-scan too: counted like progressive ones.
        return w, h, marker in _JPEG_PROGRESSIVE or marker in (0xC3, 0xC7, 0xCB, 0xCF), max(planes, 1.0)
      i += 2 + length
  except struct.error:
    return None
  return None


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
  """(width, height) from a PNG, BMP or JPEG header without decoding, else None."""
  try:
    if fmt == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
      return struct.unpack(">II", data[16:24])
    if fmt == "bmp" and len(data) >= 26:
      w, h = struct.unpack("<ii", data[18:26])
      return abs(w), abs(h)
  except struct.error:
    return None
  if fmt == "jpeg":
    frame = jpeg_frame(data)
    return None if frame is None else frame[:2]
  return None


def _hdr_size(data: bytes) -> tuple[int, int] | None:
  """A Radiance HDR's (width, height): the resolution line after the blank line ending its header."""
  end = data.find(b"\n\n", 0, 64 * 1024)
  if end < 0:
    return None
  m = _HDR_SIZE.match(data, end + 2)
  if m is None:
    return None
  size = {m[1][1:]: int(m[2]), m[3][1:]: int(m[4])}
  return (size[b"X"], size[b"Y"]) if set(size) == {b"X", b"Y"} else None


def _pfm_size(data: bytes) -> tuple[int, int] | None:
  fields = data[2:256].split(maxsplit=3)
  if len(fields) < 3 or not (fields[0].isdigit() and fields[1].isdigit()):
    return None
  return int(fields[0]), int(fields[1])


def _pillow_header(data: bytes) -> Header | None:
  """Pillow's lazy `Image.open`: reads the header, decodes nothing."""
  from PIL import Image

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # DecompressionBombWarning: the size is judged by the caller
      with Image.open(io.BytesIO(data)) as im:
        sample = 4 if im.mode in ("F", "I") else 1  # OpenCV keeps float (and 32-bit) depth
        if im.format == "TIFF" and sample == 1:
          bits = im.tag_v2.get(258, (8,))
          fmt_code = im.tag_v2.get(339, (1,))  # SampleFormat: 3 is IEEE float
          if (fmt_code if isinstance(fmt_code, tuple) else (fmt_code,))[0] == 3 or max(
            bits if isinstance(bits, tuple) else (bits,)
          ) > 16:
            sample = 4
        return Header((im.format or "unknown").lower(), im.width, im.height, sample)
  except Image.DecompressionBombError as e:  # over 2x Image.MAX_IMAGE_PIXELS: the size is in the message
    m = re.search(r"\((\d+) pixels", str(e))
    return Header("unknown", int(m[1]) if m else 2**40, 1)
  except Exception:  # noqa: BLE001 - untrusted bytes: any failure means "Pillow cannot read the header"
    return None


def read_header(data: bytes) -> Header | None:
  """The header of image file bytes, or None when no parser reads it (then nothing may decode it)."""
  fmt = sniff_format(data)
  if fmt == "jpeg":
    frame = jpeg_frame(data)
    return None if frame is None else Header("jpeg", frame[0], frame[1], 1, frame[2], frame[3])
  if fmt == "hdr":
    size = _hdr_size(data)
    return None if size is None else Header("hdr", *size, sample_bytes=4)
  if fmt == "pfm":
    size = _pfm_size(data)
    return None if size is None else Header("pfm", *size, sample_bytes=4)
  header = _pillow_header(data)
  if header is not None and fmt is not None:
    header = dataclasses.replace(header, fmt=fmt)
  if header is None and fmt in ("png", "bmp"):  # a header Pillow refuses (e.g. a huge size): ours reads it
    size = header_size(data, fmt)
    header = None if size is None else Header(fmt, *size)
  return header
