"""Hostile image files cost bounded memory: the decoding gate refuses them from the header (issue 21 part 1).

The files come from benchmarks/hostile_input_bench.py (written here, a few KB
each); the slow test runs the preprocessing worker on each in a subprocess and
bounds its peak RSS over the subprocess's baseline (docs/design.md §2.4).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from keypatch_jax import uploads
from preprocessing import image_header, images

_spec = importlib.util.spec_from_file_location(
  "hostile_input_bench", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "hostile_input_bench.py")
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
BOUND_MB = 300


@pytest.mark.parametrize(
  "make, reason",
  [
    (lambda: bench.png(100_000, 100_000, rows=1), "too_large"),
    (lambda: bench.jpeg_claiming(40_000, 40_000, progressive=True), "too_large"),
    (lambda: bench.jpeg_claiming(9_000, 9_000, progressive=True), "too_large"),  # 81 MP of coefficients
    (lambda: bench.jpeg_claiming(65_000, 65_000, progressive=False), "too_large"),  # beyond a 1/8 decode
    (lambda: bench.tiff(14_000, 14_000), "too_large"),
    (lambda: bench.hdr(4_000, 4_000), "too_large"),  # 16 MP of float: over MAX_DECODE_BYTES
    (lambda: bench.pfm_claiming(8_000, 8_000), "too_large"),
    (lambda: b"P7\nWIDTH 99999\nHEIGHT 99999\n", "not_an_image"),  # no parser reads its size: nothing decodes it
  ],
)
def test_the_gate_refuses_from_the_header(make, reason):
  data = make()
  with pytest.raises(images.Reject) as e:
    images.check_header(data)
  assert e.value.reason == reason
  with pytest.raises(uploads.UploadError, match="megapixels|not an image"):
    uploads.decode_upload(data, "x", 64 * uploads.MB)


def test_the_gate_passes_what_it_can_bound():
  header, factor = images.check_header(bench.jpeg_claiming(12_000, 12_000, progressive=False))
  assert (header.width, factor) == (12_000, 2)  # a baseline JPEG is decoded reduced
  header, factor = images.check_header(bench.hdr(64, 48))
  assert (header.fmt, header.width, header.height, header.sample_bytes, factor) == ("hdr", 64, 48, 4, 1)
  assert images.decode_image(bench.hdr(64, 48)).shape == (48, 64, 3)
  assert image_header.read_header(bench.png(40, 30)).pixels == 1200


def test_extreme_aspect_ratios_are_a_counted_reject():
  strip = images.decode_image(bench.png(32, 2_000))
  with pytest.raises(images.Reject, match="too_elongated"):
    images.check_size(strip)
  assert images.check_size(np.zeros((32, 32 * images.MAX_ASPECT, 3), np.uint8)) is not None
  assert "too_elongated" in images.REASONS


def test_the_page_stores_are_bounded_by_bytes():
  store = uploads.Store(max_bytes=10_000)
  keys = [store.put(np.zeros(3_000, np.uint8)) for _ in range(5)]
  assert store.bytes <= 10_000 and len(store) == 3
  with pytest.raises(uploads.UploadError, match="no longer on the server"):
    store.get(keys[0], "image")
  store.put(np.zeros(50_000, np.uint8))  # one item over the bound is kept alone
  assert len(store) == 1


@pytest.mark.slow
def test_peak_memory_per_hostile_file_stays_bounded(tmp_path):
  files = bench.hostile_files()
  costs = {}
  for name, data in files.items():
    path = tmp_path / name
    path.write_bytes(data)
    r = bench.measure(str(path), cap_gb=2.0, timeout=120)
    assert r["peak_mb"] is not None, f"{name}: {r['reason']}"
    costs[name] = (r["peak_mb"] - r["base_mb"], r["reason"])
  over = {k: v for k, v in costs.items() if v[0] > BOUND_MB}
  assert not over, f"over {BOUND_MB} MB: {over}"
  assert costs["png_32x200000"][1] == "too_elongated"
  assert all(costs[k][1] == "too_large" for k in files if "claims" in k and "baseline" not in k)
