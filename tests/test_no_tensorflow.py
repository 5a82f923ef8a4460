"""The compute path with TensorFlow absent (docs/design.md §1): TensorFlow only reads and writes TFRecords.

Models, losses, state, the parallel step, checkpoint restore, `sample --patches`
and the page without `--data` run in a subprocess where TensorFlow cannot be
imported (tests/no_tensorflow.py), as on an accelerator image without it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import cv2
import numpy as np
import pytest
from conftest import timeout

from keypatch_jax import input_pipeline, patches
from preprocessing import synthetic

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "no_tensorflow.py")


def _env() -> dict:
  return dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))


def _run(*args: str, seconds: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, HELPER, *args], capture_output=True, text=True, env=_env(), timeout=timeout(seconds)
  )


@pytest.mark.parametrize("image_size", [16, 64])
def test_numpy_crop_equals_the_training_crop(image_size):
  """`patches.crop_one` (NumPy, sampling and the page) gives training's tf.data patches, boxes past the edges too."""
  rng = np.random.default_rng(image_size)
  s = image_size
  image = rng.uniform(-1, 1, (s, s, 3)).astype(np.float32)
  xy = rng.uniform(-4, s + 1, (12, 2))
  wh = rng.uniform(0.2, s, (12, 2))
  boxes = np.concatenate([xy, wh], axis=1).astype(np.float32)
  boxes[0] = [0, 0, s, s]  # the identity
  expected = np.asarray(input_pipeline.crop_patches(image, boxes, s))
  np.testing.assert_allclose(patches.crop_one(image, boxes), expected, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_step_and_restore_run_without_tensorflow(trained_workdir):
  result = _run("step", trained_workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "BLOCKED_LOADED []" in result.stdout
  line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT"))
  assert "restored=4 after=5" in line, line


@pytest.mark.slow
def test_sample_own_patches_runs_without_tensorflow(trained_workdir, tmp_path):
  folder = tmp_path / "mine"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i, shape in enumerate([(12, 10, 3), (20, 20, 3)]):
    cv2.imwrite(str(folder / f"p{i}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
  out = tmp_path / "grid.png"
  result = _run(
    "-m", "keypatch_jax.sample", "--workdir", trained_workdir, "--patches", str(folder), "--output", str(out)
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "BLOCKED_LOADED []" in result.stderr
  assert cv2.imread(str(out)) is not None


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _post(url: str, body: bytes, content_type: str) -> dict:
  request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
  with urllib.request.urlopen(request, timeout=120) as r:
    return json.loads(r.read())


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
  boundary = uuid.uuid4().hex
  head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
  head += "Content-Type: image/png\r\n\r\n"
  return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.slow
def test_page_without_data_runs_without_tensorflow(trained_workdir, tmp_path):
  """serve with no --data: upload a photo, generate from its detected boxes (cropped in NumPy)."""
  port = _free_port()
  log = tmp_path / "server.log"
  argv = [sys.executable, HELPER, "-m", "keypatch_jax.serve", "--workdir", trained_workdir, "--port", str(port)]
  with open(log, "w") as out:
    proc = subprocess.Popen(argv, stdout=out, stderr=out, env=_env())
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + timeout(300)
    while True:
      if proc.poll() is not None:
        pytest.fail(f"the server exited with {proc.returncode}: {log.read_text()[-3000:]}")
      try:
        with urllib.request.urlopen(url + "/api/info", timeout=10) as r:
          info = json.loads(r.read())
        break
      except OSError:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    assert info["test_images"] == 0
    ok, png = cv2.imencode(".png", synthetic.make_face(7, 3, 160)[0][..., ::-1])
    assert ok
    photo = _post(url + "/api/photo", *_multipart("face.png", png.tobytes()))
    assert photo["boxes"], photo
    body = json.dumps({"image_id": photo["image_id"], "boxes": photo["boxes"][:3], "seed": 1}).encode()
    result = _post(url + "/api/generate", body, "application/json")
    assert result["image"].startswith("data:image/png;base64,")
    assert len(result["patches"]) == len(photo["boxes"][:3])
  finally:
    proc.send_signal(signal.SIGINT)  # uvicorn re-raises it after its shutdown: the helper's `finally` runs
    try:
      proc.wait(timeout=timeout(30))
    except subprocess.TimeoutExpired:
      proc.kill()
  assert "BLOCKED_LOADED []" in log.read_text(), log.read_text()[-3000:]
