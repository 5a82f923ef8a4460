"""Image sources on real-world folders: links, any decodable format, odd names, rejects listed, a real TFDS build.

Every input is made here. Runs that could hang (link cycles, FIFOs) run in a
subprocess with a timeout.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import timeout
from PIL import Image

from keypatch_jax import features
from preprocessing import __main__ as cli
from preprocessing import images, sources, synthetic, worker

REPO = Path(__file__).resolve().parents[1]
SETTINGS = worker.Settings(image_size=32)


def _faces(count: int, seed: int = 11) -> list[np.ndarray]:
  """`count` synthetic RGB faces [128, 128, 3] that each yield N boxes (so they are accepted)."""
  out, i = [], 0
  while len(out) < count:
    face = synthetic.make_face(seed, i)[0]
    i += 1
    try:
      worker.make_example(face, SETTINGS)
    except images.Reject:
      continue
    out.append(face)
  return out


def _png(rgb: np.ndarray) -> bytes:
  return cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()


def _jpeg(rgb: np.ndarray) -> bytes:
  return cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _pillow_bytes(rgb: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format=fmt)
  return buf.getvalue()


def _preprocess(src, out, *extra: str) -> dict:
  argv = ["--source", f"folder:{src}", "--output", str(out), "--image-size", "32", "--test-count", "1"]
  assert cli.main([*argv, "--workers", "1", "--quiet", *extra]) == 0
  return json.loads((Path(out) / features.INFO_FILE).read_text())


def _stored_ids(out: Path, info: dict) -> list[bytes]:
  import tensorflow as tf

  files = [str(out / n) for s in ("train", "test") for n in info["shards"][s]]
  spec = {"id": tf.io.FixedLenFeature([], tf.string)}
  return [bytes(tf.io.parse_single_example(r, spec)["id"].numpy()) for r in tf.data.TFRecordDataset(files)]


def _rejects(out: Path, info: dict) -> list[dict]:
  return [json.loads(line) for line in (out / info["rejects_file"]).read_text().splitlines()]


def _accounted(out: Path, info: dict) -> dict[bytes, str]:
  """Every source item: "ok" when stored, else its reject reason."""
  status = {i: "ok" for i in _stored_ids(out, info)}
  status.update({features.id_bytes(r["id"]): r["reason"] for r in _rejects(out, info)})
  return status


# ---------------------------------------------------------------- links and special files (subprocess: may hang)


@pytest.fixture(scope="module")
def linked_run(tmp_path_factory):
  """A folder with a linked sub-folder, a second link to it, a link cycle, a FIFO; preprocessed in a subprocess."""
  root = tmp_path_factory.mktemp("links")
  src, elsewhere = root / "src", root / "elsewhere"
  (src / "own").mkdir(parents=True)
  elsewhere.mkdir()
  faces = _faces(6)
  for i in range(3):
    (src / "own" / f"face{i}.png").write_bytes(_png(faces[i]))
    (elsewhere / f"linked{i}.png").write_bytes(_png(faces[3 + i]))
  os.symlink(elsewhere, src / "linked")  # a sub-folder that is a link
  os.symlink(elsewhere, src / "own" / "same_again")  # the same real folder a second time
  os.symlink(src, src / "own" / "loop")  # a cycle back to the top
  os.mkfifo(src / "pipe.png")  # opening it would block forever
  out = root / "out"
  cmd = [sys.executable, "-m", "preprocessing", "--source", f"folder:{src}", "--output", str(out)]
  cmd += ["--image-size", "32", "--test-count", "1", "--workers", "1", "--quiet"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout(240))
  assert r.returncode == 0, r.stderr[-2000:]
  return out, json.loads((out / features.INFO_FILE).read_text())


@pytest.mark.slow
def test_symlinked_subfolder_is_followed_once_and_cycles_end(linked_run):
  out, info = linked_run
  status = _accounted(out, info)
  linked = {f"linked/linked{i}.png".encode() for i in range(3)}
  own = {f"own/face{i}.png".encode() for i in range(3)}
  assert {i for i, s in status.items() if s == "ok"} == linked | own
  # 6 images + the FIFO; the second link and the cycle add nothing.
  assert info["num_source_images"] == 7 == len(status)
  assert info["counts"]["train"] + info["counts"]["test"] + sum(info["rejects"].values()) == 7


@pytest.mark.slow
def test_fifo_in_folder_is_a_counted_reject_not_a_hang(linked_run):
  out, info = linked_run
  assert _accounted(out, info)[b"pipe.png"] == "not_a_file"
  assert info["rejects"] == {"not_a_file": 1}


def test_unlistable_subfolder_is_counted(tmp_path, monkeypatch):
  """A sub-folder that cannot be listed is an entry of its own (a read_error reject), not skipped silently."""
  (tmp_path / "ok").mkdir()
  (tmp_path / "ok" / "a.png").write_bytes(b"x")
  (tmp_path / "locked").mkdir()
  (tmp_path / "locked" / "hidden.png").write_bytes(b"x")
  real_scandir = os.scandir

  def scandir(path="."):
    if os.path.basename(os.fspath(path)) == "locked":
      raise PermissionError(13, "Permission denied", os.fspath(path))
    return real_scandir(path)

  monkeypatch.setattr(os, "scandir", scandir)
  assert sources.list_files(str(tmp_path)) == ["locked", "ok/a.png"]
  monkeypatch.undo()
  with pytest.raises(images.Reject) as e:
    images.read_image_file(str(tmp_path / "locked"))
  assert e.value.reason == "not_a_file"
  with pytest.raises(images.Reject) as e:
    images.read_image_file(str(tmp_path / "no_such_file.png"))
  assert e.value.reason == "read_error"


# ---------------------------------------------------------------- any format that decodes


def test_any_decodable_format_is_an_image_whatever_its_extension(tmp_path):
  faces = _faces(8)
  src = tmp_path / "src"
  src.mkdir()
  files = {
    "a.png": _png(faces[0]),
    "b.tif": cv2.imencode(".tif", faces[1][..., ::-1])[1].tobytes(),
    "c.gif": _pillow_bytes(faces[2], "GIF"),
    "d.jfif": _jpeg(faces[3]),
    "e.tga": _pillow_bytes(faces[4], "TGA"),  # no signature; OpenCV cannot read it, Pillow can
    "f.webp": cv2.imencode(".webp", faces[5][..., ::-1])[1].tobytes(),
    "no_extension": _png(faces[6]),
    "g.dat": _jpeg(faces[7]),
    "junk.tif": b"II*\x00 not really a tiff",
    "notes.txt": b"just words",
  }
  for name, data in files.items():
    (src / name).write_bytes(data)
    if name not in ("junk.tif", "notes.txt"):
      assert images.decode_image(data).shape == (128, 128, 3), name
  info = _preprocess(src, tmp_path / "out")
  status = _accounted(tmp_path / "out", info)
  assert sorted(status) == sorted(n.encode() for n in files)  # nothing dropped without being counted
  assert status[b"junk.tif"] == "decode_error" and status[b"notes.txt"] == "not_an_image"
  images_ok = {n.encode() for n in files} - {b"junk.tif", b"notes.txt"}
  assert {i for i, s in status.items() if s == "ok"} == images_ok


# ---------------------------------------------------------------- JPEG end


def _with_exif_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
  """`jpeg` with an APP1 (Exif) segment holding `thumbnail` (a complete JPEG, end marker included)."""
  payload = b"Exif\x00\x00" + thumbnail
  return jpeg[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def test_jpeg_with_bytes_after_its_end_is_accepted():
  face = _faces(1)[0]
  jpeg = _jpeg(face)
  motion_photo = jpeg + b"\x00\x00\x00\x18ftypmp42" + os.urandom(5000)  # a video appended, as phones do
  np.testing.assert_array_equal(images.decode_image(motion_photo), images.decode_image(jpeg))
  assert images.jpeg_end(motion_photo) == len(jpeg)
  progressive = cv2.imencode(".jpg", face[..., ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
  assert images.jpeg_end(progressive + b"trailer") == len(progressive)
  # Still truncated: an end marker inside the header (an EXIF thumbnail) is not the end.
  with_thumb = _with_exif_thumbnail(jpeg, _jpeg(face[::4, ::4]))
  assert images.jpeg_end(with_thumb) == len(with_thumb)
  with pytest.raises(images.Reject) as e:
    images.decode_image(with_thumb[: len(with_thumb) - len(jpeg) // 2])
  assert e.value.reason == "truncated"


# ---------------------------------------------------------------- names that are not UTF-8


def test_non_utf8_file_name_is_processed_with_a_stable_unique_id(tmp_path):
  faces = _faces(5)
  src = os.fsencode(tmp_path / "src")
  os.makedirs(src)
  names = [b"caf\xe9.png", b"caf\xc3\xa9.png", b"b.png", b"c.png", b"\xff\xfe.png"]  # Latin-1, UTF-8, ..
  for name, face in zip(names, faces, strict=True):
    with open(os.path.join(src, name), "wb") as f:
      f.write(_png(face))
  runs = []
  for k in range(2):
    out = tmp_path / f"out{k}"
    info = _preprocess(os.fsdecode(src), out)
    runs.append((sorted(_stored_ids(out, info)), info["shards"]))
  ids, _ = runs[0]
  assert ids == sorted(names)  # every file, under its own bytes: unique
  assert runs[0] == runs[1]  # stable: same ids, same split


# ---------------------------------------------------------------- a real TFDS build

_BUILDER = '''
"""A tiny TFDS dataset built from procedural faces (no download)."""
import numpy as np
import tensorflow_datasets as tfds

from preprocessing import synthetic


class KeypatchTinyFaces(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = tfds.features.FeaturesDict(
      {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(num_classes=4)}
    )
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(12)}

  def _generate_examples(self, count):
    for i in range(count):
      face, label = synthetic.make_face(21, i)
      yield i, {"image": face, "label": label}
'''


@pytest.mark.slow
def test_tfds_source_builds_a_real_local_dataset(tmp_path, monkeypatch):
  """`--source tfds:NAME` prepares a dataset that is not built yet, as on a fresh install (the builder lives
  in a package, like TFDS's own, so TFDS takes its package-resource path)."""
  package = tmp_path / "tiny_tfds_pkg"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "keypatch_tiny_faces.py").write_text(textwrap.dedent(_BUILDER))
  monkeypatch.syspath_prepend(str(tmp_path))
  import tiny_tfds_pkg.keypatch_tiny_faces  # noqa: F401 - registers the builder

  data_dir, out = tmp_path / "tfds", tmp_path / "out"
  argv = ["--source", "tfds:keypatch_tiny_faces:train", "--tfds-data-dir", str(data_dir), "--output", str(out)]
  assert cli.main([*argv, "--image-size", "32", "--test-count", "2", "--workers", "1", "--quiet"]) == 0
  assert (data_dir / "keypatch_tiny_faces" / "1.0.0").is_dir()  # built by TFDS itself
  info = json.loads((out / features.INFO_FILE).read_text())
  assert info["num_source_images"] == 12 and info["num_labels"] == 4
  status = _accounted(out, info)
  assert len(status) == 12 and sum(s == "ok" for s in status.values()) >= 9
  assert b"keypatch_tiny_faces/train/0" in status
  assert "--tfds-data-dir" in info["command"]


# ---------------------------------------------------------------- --center-crop larger than the images


def test_center_crop_is_square_or_a_counted_reject():
  face = np.zeros((109, 89, 3), np.uint8)
  assert images.center_crop(face, 54).shape == (54, 54, 3)
  assert images.center_crop(face, 89).shape == (89, 89, 3)
  for side in (90, 108):  # taller than wide: the old code kept an 89-wide, non-square crop
    with pytest.raises(images.Reject) as r:
      images.center_crop(face, side)
    assert r.value.reason == "smaller_than_crop"


def test_center_crop_larger_than_every_image_is_one_line_before_the_run(tmp_path, capsys):
  src = tmp_path / "half_size"
  src.mkdir()
  for i, face in enumerate(_faces(3)):
    (src / f"{i:06d}.png").write_bytes(_png(cv2.resize(face, (89, 109))))
  argv = ["--source", f"folder:{src}", "--output", str(tmp_path / "out"), "--center-crop", "108", "--workers", "1"]
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "--center-crop 108" in err and "000000.png is 89x109" in err and "--center-crop 89 or less" in err
  assert not (tmp_path / "out").exists()  # refused before anything was written


def test_images_smaller_than_the_crop_in_a_mixed_folder_are_counted_rejects(tmp_path):
  src = tmp_path / "mixed"
  src.mkdir()
  faces = _faces(4)
  for i, face in enumerate(faces[:3]):
    (src / f"big{i}.png").write_bytes(_png(face))  # 128 x 128
  (src / "small.png").write_bytes(_png(cv2.resize(faces[3], (100, 120))))
  out = tmp_path / "out"
  info = _preprocess(src, out, "--center-crop", "110")
  assert info["rejects"] == {"smaller_than_crop": 1}
  assert [(r["id"], r["reason"]) for r in _rejects(out, info)] == [("small.png", "smaller_than_crop")]
  assert info["counts"]["train"] + info["counts"]["test"] == 3
