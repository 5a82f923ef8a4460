"""Peak memory of one preprocessing worker per hostile image file (docs/design.md §2.4).

  PYTHONPATH=. python benchmarks/hostile_input_bench.py [--json] [--bound-mb 300] [--cap-gb 4]

Writes each hostile file (a few kilobytes that claim or hold gigapixels), then
runs `preprocessing.worker.process_item` on it in a fresh subprocess (the code
on PYTHONPATH: run it once on an old checkout and once on this one for
before/after figures) and prints the child's peak RSS over its baseline after
the imports (`ru_maxrss`), the seconds, and the outcome (a reject reason, or
"accepted"). A child's address space is capped at --cap-gb so an unbounded
decoder fails instead of swapping the machine; such a row reads "MemoryError"
or "killed". The last line with --json is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib

CHILD = r"""
import json, resource, sys, time
from preprocessing import worker
worker.init_worker(worker.Settings())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
  reason = worker.process_item((0, "x", ("file", sys.argv[1]))).reason or "accepted"
except MemoryError:
  reason = "MemoryError"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"reason": reason, "base_mb": base / 1024, "peak_mb": peak / 1024,
                  "seconds": time.perf_counter() - start}))
"""


def _png_chunk(kind: bytes, body: bytes) -> bytes:
  return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, rows: int | None = None, depth: int = 8) -> bytes:
  """An RGB PNG whose header says width x height; `rows` rows of (grey ramp) data, default all."""
  bpp = 3 * depth // 8
  row = b"\x00" + bytes(i * 7 % 251 for i in range(width * bpp))
  z = zlib.compressobj(1)
  idat = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
  ihdr = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int, progressive: bool) -> bytes:
  """A 64 x 64 JPEG (Pillow) whose frame header is rewritten to say width x height."""
  from PIL import Image

  out = io.BytesIO()
  Image.new("RGB", (64, 64), (120, 80, 40)).save(out, "JPEG", progressive=progressive, quality=90)
  data = bytearray(out.getvalue())
  i = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
  data[i + 5 : i + 9] = struct.pack(">HH", height, width)
  return bytes(data)


def tiff(width: int, height: int) -> bytes:
  """An honest 8-bit grey TIFF, one Deflate strip of a ramp (a few hundred KB for 14000 x 14000)."""
  z = zlib.compressobj(9)
  row = bytes(i % 256 for i in range(width))
  strip = b"".join(z.compress(row) for _ in range(height)) + z.flush()
  tags = [  # (tag, type, count, value): SHORT = 3, LONG = 4
    (256, 4, 1, width),
    (257, 4, 1, height),
    (258, 3, 1, 8),
    (259, 3, 1, 8),  # Deflate
    (262, 3, 1, 1),  # black is zero
    (273, 4, 1, 0),  # strip offset, set below
    (277, 3, 1, 1),
    (278, 4, 1, height),
    (279, 4, 1, len(strip)),
  ]
  ifd_size = 2 + 12 * len(tags) + 4
  offset = 8 + ifd_size
  ifd = struct.pack("<H", len(tags))
  for tag, kind, count, value in tags:
    value = offset if tag == 273 else value
    packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    ifd += struct.pack("<HHI", tag, kind, count) + packed
  return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + strip


def hdr(width: int, height: int) -> bytes:
  """An honest Radiance HDR of one flat colour, run-length coded (about 6 MB for 10000 x 10000)."""
  line = b"\x02\x02" + struct.pack(">H", width)
  for value in (128, 100, 60, 129):  # R, G, B, exponent
    full, rest = divmod(width, 127)
    line += bytes((255, value)) * full + (bytes((128 + rest, value)) if rest else b"")
  return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {height} +X {width}\n".encode() + line * height


def pfm_claiming(width: int, height: int) -> bytes:
  """A float PFM header saying width x height, with one row of data."""
  return f"PF\n{width} {height}\n-1\n".encode() + b"\x00" * (12 * width)


def hostile_files() -> dict[str, bytes]:
  """name -> file bytes: the kinds of issue 21 part 1, plus the largest image the gate accepts."""
  return {
    "png_32x200000": png(32, 200_000),
    "png_claims_100000x100000": png(100_000, 100_000, rows=1),
    "jpeg_progressive_claims_40000x40000": jpeg_claiming(40_000, 40_000, progressive=True),
    "jpeg_baseline_claims_40000x40000": jpeg_claiming(40_000, 40_000, progressive=False),
    "tiff_14000x14000": tiff(14_000, 14_000),
    "hdr_10000x10000": hdr(10_000, 10_000),
    "pfm_claims_8000x8000": pfm_claiming(8_000, 8_000),
    "png16_7000x7000_accepted_size": png(7_000, 7_000, depth=16),
  }


def measure(path: str, cap_gb: float, timeout: float = 300) -> dict:
  """Runs the worker on `path` in a fresh subprocess capped at `cap_gb` of address space."""

  def cap():
    import resource

    limit = int(cap_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

  try:
    proc = subprocess.run(
      [sys.executable, "-c", CHILD, path], capture_output=True, text=True, timeout=timeout, preexec_fn=cap
    )
  except subprocess.TimeoutExpired:
    return {"reason": "timeout", "base_mb": None, "peak_mb": None, "seconds": timeout}
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return {"reason": f"killed ({tail[:80]})", "base_mb": None, "peak_mb": None, "seconds": None}
  return json.loads(lines[-1])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--bound-mb", type=float, default=300.0, help="largest peak RSS over the baseline allowed per file")
  p.add_argument("--cap-gb", type=float, default=4.0, help="address-space cap of each child")
  p.add_argument("--only", default=None, help="comma-separated file names to run (default: all)")
  p.add_argument("--json", action="store_true", help="last line: one JSON object")
  args = p.parse_args()
  files = hostile_files()
  wanted = args.only.split(",") if args.only else list(files)
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    print(f"{'file':<38}{'KB':>9}{'+peak MB':>10}{'s':>7}  outcome")
    for name in wanted:
      path = os.path.join(tmp, name)
      with open(path, "wb") as f:
        f.write(files[name])
      r = measure(path, args.cap_gb)
      cost = None if r["peak_mb"] is None else r["peak_mb"] - r["base_mb"]
      rows[name] = dict(r, kb=len(files[name]) / 1024, cost_mb=cost, within=cost is not None and cost <= args.bound_mb)
      shown = "-" if cost is None else f"{cost:.0f}"
      secs = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
      print(f"{name:<38}{len(files[name]) / 1024:>9.1f}{shown:>10}{secs:>7}  {r['reason']}", flush=True)
  ok = all(r["within"] for r in rows.values())
  print(f"bound {args.bound_mb:.0f} MB over the baseline per file: {'held' if ok else 'EXCEEDED'}")
  if args.json:
    print(json.dumps({"bound_mb": args.bound_mb, "cap_gb": args.cap_gb, "held": ok, "files": rows}))


if __name__ == "__main__":
  main()
