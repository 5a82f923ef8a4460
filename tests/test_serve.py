"""`python -m keypatch_jax.serve`: upload decoding, and the page in a real headless Chromium.

The browser tests start the server on the tiny trained checkpoint (or on
KEYPATCH_SERVE_WORKDIR / KEYPATCH_SERVE_DATA when set, e.g. a demo run) and
drive Debian's `chromium` with Playwright (no browser download). They save a
screenshot to KEYPATCH_SERVE_SCREENSHOT (default: the test's tmp dir).
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest
from conftest import timeout

from keypatch_jax import interactive, serve, uploads
from preprocessing import synthetic

CHROMIUM = os.environ.get("KEYPATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
]
LIMIT_MB = 1  # --max-upload-mb of the test server


def _png(image: np.ndarray) -> bytes:
  ok, buf = cv2.imencode(".png", image)
  assert ok
  return buf.tobytes()


def _face(size: int = 160) -> np.ndarray:
  """A synthetic face, RGB uint8 [size, size, 3] (the preprocessing finds boxes on its parts)."""
  return synthetic.make_face(7, 3, size)[0]


def _cmyk_jpeg(rgb: np.ndarray) -> bytes:
  from PIL import Image

  out = io.BytesIO()
  Image.fromarray(rgb).convert("CMYK").save(out, format="JPEG", quality=95)
  return out.getvalue()


# --- decoding (fast) -----------------------------------------------------------------------


@pytest.mark.parametrize(
  "kind",
  ["gray", "16-bit", "alpha", "cmyk"],
)
def test_uploads_in_other_modes_are_converted_to_rgb8(kind):
  rgb = _face(64)
  bgr = rgb[..., ::-1]
  data = {
    "gray": lambda: _png(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)),
    "16-bit": lambda: _png(bgr.astype(np.uint16) * 257),
    "alpha": lambda: _png(np.dstack([bgr, np.full(bgr.shape[:2], 128, np.uint8)])),
    "cmyk": lambda: _cmyk_jpeg(rgb),
  }[kind]()
  out = uploads.decode_upload(data, f"x.{kind}", 10 * uploads.MB)
  assert out.shape == (64, 64, 3) and out.dtype == np.uint8
  if kind in ("16-bit", "alpha"):
    np.testing.assert_array_equal(out, rgb)
  else:
    tolerance = 40 if kind == "gray" else 12  # luma only / JPEG
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < tolerance


@pytest.mark.parametrize(
  "data, expected",
  [
    (b"", "is empty"),
    (b"name,value\n1,2\n", "is not an image"),
    (b"\x00" * (2 * uploads.MB), "over 1 MB, the upload limit"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 10_000, 10_000) + b"\x08\x02", "megapixels"),
    (b"\xff\xd8\xff\xe0 a JPEG cut short", "truncated JPEG"),
  ],
)
def test_bad_uploads_are_one_line_errors_naming_the_file(data, expected):
  with pytest.raises(uploads.UploadError, match=expected) as e:
    uploads.decode_upload(data, "f.png", uploads.MB)
  assert "'f.png'" in str(e.value) and "\n" not in str(e.value)


def test_the_page_proposes_the_boxes_preprocessing_stores():
  from preprocessing import detect, worker

  face = _face(160)
  info = {"options": {"num_patches": 3, "min_side": 128, "scoring": "priors", "max_area": 0.3}}
  page = interactive.detection_settings(info, 32, 6)
  assert page.box_filter.max_area == 0.3 and page.box_filter.num_patches == 6
  proposed, (h, w) = worker.detect_boxes(face, page)
  image, stored = worker.make_example(face, interactive.detection_settings(info, 32, 3))
  assert len(proposed) > 3
  np.testing.assert_allclose(detect.scale_boxes(proposed[:3], h, w, 32), stored)  # the first N are the stored N
  np.testing.assert_array_equal(worker.model_image(face, page), image)
  old = interactive.detection_settings({"options": {"num_patches": 3}}, 32, 6)  # written before the ranking priors
  assert old.box_filter.centre_weight == 0 and old.box_filter.border_weight == 0
  old = interactive.detection_settings({"options": {"scoring": "priors"}}, 32, 6)  # written before --selection
  assert old.box_filter.selection == "nms" and old.box_filter.centre_weight > 0


def test_bad_flags_exit_before_anything_slow(capsys):
  with pytest.raises(SystemExit):
    serve.parse_args(["--workdir", "w", "--max-patches", "0"])
  assert "--max-patches 0: must be >= 1" in capsys.readouterr().err
  assert serve.main(["--workdir", "/nonexistent/work"]) == 1
  assert "/nonexistent/work" in capsys.readouterr().err


# --- the page in a browser (slow) ------------------------------------------------------------


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _get_json(url: str) -> dict:
  with urllib.request.urlopen(url, timeout=10) as r:
    return json.loads(r.read())


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
  """Base URL of a running server (a subprocess), its /api/info, and the process."""
  workdir, data = os.environ.get("KEYPATCH_SERVE_WORKDIR"), os.environ.get("KEYPATCH_SERVE_DATA")
  if workdir is None:
    workdir, data = request.getfixturevalue("trained_workdir"), request.getfixturevalue("tiny_data")
  port = _free_port()
  log = tmp_path_factory.mktemp("serve") / "server.log"
  argv = ["--workdir", workdir, "--port", str(port), "--max-upload-mb", str(LIMIT_MB), "--max-patches", "4"]
  argv += ["--data", data] if data else []
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
  with open(log, "w") as out:
    proc = subprocess.Popen([sys.executable, "-m", "keypatch_jax.serve", *argv], stdout=out, stderr=out, env=env)
  url = f"http://127.0.0.1:{port}"
  deadline = time.monotonic() + timeout(600)
  try:
    while True:
      if proc.poll() is not None:
        pytest.fail(f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
      try:
        info = _get_json(url + "/api/info")
        break
      except OSError:
        if time.monotonic() > deadline:
          pytest.fail(f"the server did not answer in 600 s: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, info, proc
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=timeout(30))
    except subprocess.TimeoutExpired:
      proc.kill()


@pytest.fixture(scope="module")
def browser():
  if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`, as .ci/run does)")
  from playwright.sync_api import sync_playwright

  with sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield b
    b.close()


@pytest.fixture
def page(browser, server):
  url, _, _ = server
  page = browser.new_page(viewport={"width": 1400, "height": 900})
  page.goto(url)
  page.wait_for_selector("body[data-ready='1']", timeout=timeout(60) * 1000)
  yield page
  page.close()


def _natural_size(page, selector: str) -> tuple[int, int]:
  return tuple(page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]"))


def _boxes(page) -> list[list[float]]:
  return json.loads(page.get_attribute("#canvas", "data-boxes"))


def _generate(page, button: str) -> None:
  count = int(page.get_attribute("#generated", "data-count") or 0)
  page.click(button)
  page.wait_for_selector(f"#generated[data-count='{count + 1}']", timeout=timeout(120) * 1000)


def _patch_sources(page) -> list[str]:
  return page.eval_on_selector_all("#used-patches img", "imgs => imgs.map(i => i.src)")


def _inside(x: float, y: float, boxes) -> bool:
  return any(bx <= x <= bx + bw and by <= y <= by + bh for bx, by, bw, bh in boxes)


def _file(name: str, data: bytes, mime: str = "image/png") -> dict:
  return {"name": name, "mimeType": mime, "buffer": data}


@pytest.mark.slow
def test_upload_detect_drag_and_generate(page, server, tmp_path):
  _, info, _ = server
  s, n = info["image_size"], info["num_patches"]
  page.set_input_files("#photo-input", _file("face.png", _png(_face()[..., ::-1])))
  page.wait_for_function(
    "JSON.parse(document.getElementById('canvas').dataset.boxes).length > 0", timeout=timeout(60) * 1000
  )
  detected = _boxes(page)
  assert "EdgeBoxes found" in page.inner_text("#message")

  # Drag the middle of the first box 10 CSS pixels right and down: the smallest box there moves by 10 / scale.
  canvas = page.locator("#canvas").bounding_box()
  width, height = page.evaluate("[state.width, state.height]")
  scale = page.evaluate("document.getElementById('canvas').width") / width  # canvas pixels are CSS pixels
  left = canvas["x"] + page.evaluate("document.getElementById('canvas').clientLeft")
  top = canvas["y"] + page.evaluate("document.getElementById('canvas').clientTop")

  def drag(x0, y0, x1, y1):
    page.mouse.move(left + x0 * scale, top + y0 * scale)
    page.mouse.down()
    page.mouse.move(left + (x0 + x1) / 2 * scale, top + (y0 + y1) / 2 * scale)
    page.mouse.move(left + x1 * scale, top + y1 * scale)
    page.mouse.up()

  x, y, w, h = detected[0]
  drag(x + w / 2, y + h / 2, x + w / 2 + 10 / scale, y + h / 2 + 10 / scale)
  after = _boxes(page)
  changed = [i for i, (a, b) in enumerate(zip(detected, after, strict=True)) if a != b]
  assert len(changed) == 1
  (bx, by, bw, bh), moved = detected[changed[0]], after[changed[0]]
  expected = [min(bx + 10 / scale, width - bw), min(by + 10 / scale, height - bh), bw, bh]
  assert moved == pytest.approx(expected, abs=0.01)
  # Drag on empty space (a corner of the photo, outside every box) redraws the selected box.
  corner = next((cx, cy) for cx in (1, width - 2) for cy in (1, height - 2) if not _inside(cx, cy, after))
  end = (corner[0] + 20 if corner[0] < 2 else corner[0] - 20, corner[1] + 16 if corner[1] < 2 else corner[1] - 16)
  drag(*corner, *end)
  redrawn = _boxes(page)[changed[0]]
  assert redrawn == pytest.approx([min(corner[0], end[0]), min(corner[1], end[1]), 20, 16], abs=0.01)

  _generate(page, "#generate")
  for selector in ("#mask", "#generated", "#pasted"):
    assert _natural_size(page, selector) == (s, s)
  used = min(n, len(detected))
  assert page.locator("#used-patches img").count() == used
  edited = _patch_sources(page)
  page.click("#redetect")
  assert _boxes(page) == detected
  _generate(page, "#generate")  # the edited boxes were the ones cropped
  assert _patch_sources(page) != edited
  first = page.get_attribute("#generated", "src")

  if used >= 2:  # the order of the patches changes nothing
    _generate(page, "#shuffle")
    assert float(page.get_attribute("#order-note", "data-max-diff")) < 1e-4
    assert "cannot matter" in page.inner_text("#order-note")

  _generate(page, "#resample")  # a new noise sample
  assert "noise seed 1" in page.inner_text("#seed-info")
  assert page.get_attribute("#generated", "src") != first

  shot = os.environ.get("KEYPATCH_SERVE_SCREENSHOT") or str(tmp_path / "serve.png")
  os.makedirs(os.path.dirname(os.path.abspath(shot)), exist_ok=True)
  page.screenshot(path=shot, full_page=True)
  assert cv2.imread(shot) is not None


@pytest.mark.slow
def test_test_images_and_patches_from_anywhere(page, server):
  _, info, _ = server
  s, n = info["image_size"], info["num_patches"]
  if info["test_images"]:
    page.click("#dataset img >> nth=0")
    page.wait_for_function(f"JSON.parse(document.getElementById('canvas').dataset.boxes).length === {n}")
    assert "stored key patches" in page.inner_text("#message")
  else:
    page.set_input_files("#photo-input", _file("face.png", _png(_face()[..., ::-1])))
    page.wait_for_function("JSON.parse(document.getElementById('canvas').dataset.boxes).length > 0")
  rng = np.random.default_rng(0)
  crops = [_file(f"crop{i}.png", _png(rng.integers(0, 255, (12 + i, 9, 3), dtype=np.uint8))) for i in range(2)]
  page.set_input_files("#patch-input", crops)
  page.wait_for_function("document.querySelectorAll('#extra-patches img').length === 2")
  page.fill("#num-patches", "2")
  _generate(page, "#generate")
  assert page.locator("#used-patches img").count() == 4  # two boxes + two uploaded patches: N=4
  assert _natural_size(page, "#generated") == (s, s)
  assert _natural_size(page, "#used-patches img >> nth=2") == (s, s)


@pytest.mark.slow
def test_bad_uploads_show_one_line_and_the_server_lives_on(page, server):
  url, _, proc = server
  cases = [
    ("notes.png", b"this is not an image\nat all\n", "'notes.png' is not an image"),
    ("big.jpg", b"\xff\xd8\xff" + b"\x00" * (LIMIT_MB * uploads.MB + 10), "upload limit"),
    ("tiny.png", _png(np.zeros((8, 8, 3), np.uint8)), "at least 32 pixels"),
  ]
  for name, data, expected in cases:
    page.set_input_files("#photo-input", _file(name, data))
    page.wait_for_selector("#message.error", timeout=timeout(60) * 1000)
    message = page.inner_text("#message")
    assert expected in message and "\n" not in message
    page.evaluate("say('')")  # clear for the next case
  page.set_input_files("#patch-input", _file("notes.txt", b"hello", "text/plain"))
  page.wait_for_selector("#message.error")
  assert "'notes.txt' is not an image" in page.inner_text("#message")
  page.evaluate("say('')")
  page.click("#generate")  # nothing to generate from: a message, not a crash
  page.wait_for_selector("#message.error")
  assert "no patches" in page.inner_text("#message")

  assert proc.poll() is None and _get_json(url + "/api/info")["step"] >= 0
  page.evaluate("say('')")
  page.set_input_files("#photo-input", _file("cmyk.jpg", _cmyk_jpeg(_face()), "image/jpeg"))  # converted
  page.wait_for_function(
    "JSON.parse(document.getElementById('canvas').dataset.boxes).length > 0", timeout=timeout(60) * 1000
  )
  assert "EdgeBoxes found" in page.inner_text("#message")
