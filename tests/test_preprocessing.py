"""Tests of `preprocessing/`: filters, bad inputs, CLI errors, round trip, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import timeout

from keypatch_jax import features
from preprocessing import __main__ as cli
from preprocessing import detect, images, synthetic, worker, writer

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- filters


def test_shape_mask_area_and_aspect():
  f = detect.BoxFilter(min_area=0.05, max_area=0.25, max_aspect=3.0)
  boxes = np.array(
    [
      [0, 0, 40, 40],  # 0.098: ok
      [0, 0, 20, 20],  # 0.024: too small
      [0, 0, 70, 70],  # 0.30: too large
      [0, 0, 90, 20],  # aspect 4.5: too wide
      [0, 0, 20, 61],  # aspect 1/3.05: too tall
      [0, 0, 60, 20],  # aspect 3, area 0.073: ok (boundary)
    ],
    np.float32,
  )
  np.testing.assert_array_equal(detect.shape_mask(boxes, 128, 128, f), [True, False, False, False, False, True])


def test_max_box_height_allows_tall_boxes_only():
  f = detect.BoxFilter(max_area=0.25, max_aspect=3.0, max_box_height=0.7)
  boxes = np.array(
    [
      [0, 0, 40, 89],  # tall, 0.70 of height, area 0.217: ok
      [0, 0, 50, 89],  # tall, area 0.27 > max_area but height <= 0.7: ok
      [0, 0, 89, 50],  # wide, area 0.27: too large
      [0, 0, 50, 100],  # taller than 0.7: rejected
    ],
    np.float32,
  )
  np.testing.assert_array_equal(detect.shape_mask(boxes, 128, 128, f), [True, True, False, False])


def test_nms_keeps_best_and_drops_overlaps():
  boxes = np.array([[0, 0, 40, 40], [2, 2, 40, 40], [60, 60, 40, 40], [0, 60, 40, 40]], np.float32)
  scores = np.array([0.5, 0.9, 0.7, 0.1], np.float32)
  np.testing.assert_array_equal(detect.greedy_nms(boxes, scores, 0.3, 10), [1, 2, 3])
  np.testing.assert_array_equal(detect.greedy_nms(boxes, scores, 0.3, 2), [1, 2])
  # IoU of boxes 0 and 1 is ~0.82: a 0.9 threshold keeps both.
  np.testing.assert_array_equal(detect.greedy_nms(boxes, scores, 0.9, 10), [1, 2, 0, 3])


def test_select_boxes_filters_then_ranks_and_clips():
  f = detect.BoxFilter(num_patches=2)
  boxes = np.array([[0, 0, 100, 100], [10, 10, 40, 40], [12, 12, 40, 40], [100, 100, 40, 40]], np.float32)
  scores = np.array([1.0, 0.5, 0.6, 0.4], np.float32)
  # Box 3 is clipped to 28 x 28 (0.048 < 0.05): dropped; box 0 is too large.
  out = detect.select_boxes(boxes, scores, 128, 128, f)
  np.testing.assert_array_equal(out, [[12, 12, 40, 40]])


def test_priors_rank_centre_over_border_and_are_one_flag_away():
  boxes = np.array([[0, 0, 40, 40], [44, 44, 40, 40], [80, 40, 40, 40]], np.float32)
  scores = np.array([0.9, 0.5, 0.6], np.float32)
  f = detect.BoxFilter(num_patches=1, centre_weight=3.0, border_weight=5.0)
  # The corner box touches the border, the right box's centre is off-centre: the middle box wins.
  np.testing.assert_array_equal(detect.select_boxes(boxes, scores, 128, 128, f), boxes[[1]])
  paper = detect.BoxFilter(num_patches=1, centre_weight=0.0, border_weight=0.0)
  np.testing.assert_array_equal(detect.prior_scores(boxes, scores, 128, 128, paper), scores)
  np.testing.assert_array_equal(detect.select_boxes(boxes, scores, 128, 128, paper), boxes[[0]])
  ranked = detect.prior_scores(boxes, scores, 128, 128, detect.BoxFilter(centre_weight=3.0, border_weight=0.0))
  assert ranked[1] > ranked[2] > ranked[0]  # without the border prior: by centre distance, then score


def test_coverage_selection_spreads_boxes_over_the_consensus_and_nms_is_one_flag_away():
  # Many proposals agree on a 64 x 40 band (two 40 x 40 halves and boxes across them); one isolated
  # box in the corner region of the band's left half scores best, and its near-copies score next.
  band = [[24, 44, 40, 40], [64, 44, 40, 40], [44, 44, 40, 40], [34, 44, 40, 40], [54, 44, 40, 40]]
  copies = [[20, 40, 40, 40], [21, 41, 40, 40], [22, 42, 40, 40]]
  boxes = np.array(band + copies, np.float32)
  scores = np.array([0.3, 0.3, 0.3, 0.3, 0.3, 0.9, 0.85, 0.8], np.float32)
  f = detect.BoxFilter(num_patches=2, centre_weight=1e-3, border_weight=0.0, nms_iou=0.9, selection="coverage")
  by_score = detect.select_boxes(boxes, scores, 128, 128, dataclasses.replace(f, selection="nms"))
  np.testing.assert_array_equal(by_score, boxes[[5, 7]])  # near-copies of one spot (6 overlaps 5 by 0.91)
  covered = detect.select_boxes(boxes, scores, 128, 128, f)
  assert len(covered) == 2 and detect.iou(covered[0], covered[1:])[0] < 0.3  # spread apart
  votes = detect.vote_map(boxes, detect.prior_scores(boxes, scores, 128, 128, f), 128, 128)
  assert votes.shape == (128, 128) and votes[:40, :].max() == 0 and votes[100, 100] == 0 < votes[64, 100]
  assert votes.sum() == pytest.approx(np.average(boxes[:, 2] * boxes[:, 3], weights=np.sqrt(scores)), rel=1e-2)
  # NMS stays a filter: no chosen box overlaps another by more than nms_iou.
  strict = detect.select_boxes(boxes, scores, 128, 128, dataclasses.replace(f, nms_iou=0.0))
  assert all(detect.iou(b, strict[i + 1 :]).max(initial=0) == 0 for i, b in enumerate(strict))
  # Zero prior weights are the paper: EdgeBoxes' order and NMS, whatever the selection.
  paper = dataclasses.replace(f, centre_weight=0.0)
  np.testing.assert_array_equal(detect.select_boxes(boxes, scores, 128, 128, paper), by_score)


def test_scale_boxes_to_square_frame():
  boxes = np.array([[32, 16, 64, 32]], np.float32)
  out = detect.scale_boxes(boxes, 128, 256, 64)
  np.testing.assert_allclose(out, [[8, 8, 16, 16]])
  assert out.dtype == np.float32


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_varied():
  a, la = synthetic.make_face(3, 7)
  b, lb = synthetic.make_face(3, 7)
  c, _ = synthetic.make_face(3, 8)
  d, _ = synthetic.make_face(4, 7)
  np.testing.assert_array_equal(a, b)
  assert la == lb and 0 <= la < synthetic.NUM_LABELS
  assert a.shape == (128, 128, 3) and a.dtype == np.uint8
  assert not np.array_equal(a, c) and not np.array_equal(a, d)
  labels = {synthetic.make_face(0, i)[1] for i in range(40)}
  assert labels == set(range(synthetic.NUM_LABELS))


def test_synthetic_faces_yield_boxes():
  settings = worker.Settings()
  ok = 0
  for i in range(30):
    image, _ = synthetic.make_face(1, i)
    boxes, _ = worker.detect_boxes(image, settings)
    ok += len(boxes) == 3
  assert ok >= 27


def test_synthetic_aligned_pose_keeps_the_faces_and_narrows_the_placement():
  varied = np.stack([synthetic.make_face(2, i)[0] for i in range(30)]).astype(np.float32)
  aligned = np.stack([synthetic.make_face(2, i, pose="aligned")[0] for i in range(30)]).astype(np.float32)
  assert [synthetic.make_face(2, i, pose="aligned")[1] for i in range(30)] == [
    synthetic.make_face(2, i)[1] for i in range(30)
  ]
  np.testing.assert_array_equal(aligned[0], synthetic.make_face(2, 0, pose="aligned")[0])

  def centre_x(face):  # mean column of the near-black pixels (outlines, pupils, mouth line)
    return np.nonzero(face.max(axis=-1) < 60)[1].mean()

  # Same backgrounds, colours and parts; the heads move less from image to image.
  assert np.std([centre_x(f) for f in aligned]) < 0.5 * np.std([centre_x(f) for f in varied])
  settings = worker.Settings()
  found = sum(len(worker.detect_boxes(face.astype(np.uint8), settings)[0]) == 3 for face in aligned)
  assert found >= 27
  with pytest.raises(ValueError, match="pose"):
    synthetic.make_face(2, 0, pose="tilted")


def test_synthetic_source_pose_spec(tmp_path):
  from preprocessing import sources

  src = sources.open_source("synthetic:aligned", num_images=4, seed=2)
  _, _, ref = next(iter(src.items({1})))
  image, _ = sources.load_item((1, src.ids[1], ref))
  np.testing.assert_array_equal(image, synthetic.make_face(2, 1, pose="aligned")[0])
  with pytest.raises(sources.SourceError, match="synthetic:tilted"):
    sources.open_source("synthetic:tilted", num_images=4, seed=2)


# ---------------------------------------------------------------- bad inputs


def _png(image: np.ndarray) -> bytes:
  return cv2.imencode(".png", image)[1].tobytes()


def _palette_png(width: int, height: int) -> bytes:
  """A colour-type-3 (palette) PNG written by hand."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  palette = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
  rows = b"".join(b"\x00" + bytes((x // 8 + y // 8) % 4 for x in range(width)) for y in range(height))
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
  return (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", ihdr)
    + chunk(b"PLTE", palette)
    + chunk(b"IDAT", zlib.compress(rows))
    + chunk(b"IEND", b"")
  )


def test_decode_converts_formats_to_rgb8():
  bgr = np.zeros((40, 50, 3), np.uint8)
  bgr[..., 0] = 200  # blue in BGR
  rgb = images.decode_image(_png(bgr))
  assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8 and rgb[0, 0, 2] == 200
  gray = images.decode_image(_png(np.full((40, 50), 77, np.uint8)))
  assert gray.shape == (40, 50, 3) and (gray == 77).all()
  rgba = np.dstack([bgr, np.full((40, 50), 128, np.uint8)])
  assert images.decode_image(_png(rgba)).shape == (40, 50, 3)
  deep = images.decode_image(_png(np.full((40, 50, 3), 65535, np.uint16)))
  assert deep.dtype == np.uint8 and (deep == 255).all()
  pal = images.decode_image(_palette_png(48, 40))
  assert pal.shape == (40, 48, 3) and pal.dtype == np.uint8
  assert tuple(pal[0, 0]) == (255, 0, 0)


def _reason(data: bytes, **kw) -> str:
  with pytest.raises(images.Reject) as e:
    images.decode_image(data, **kw)
  return e.value.reason


def test_decode_rejects_bad_files_with_reasons():
  jpeg = cv2.imencode(".jpg", synthetic.make_face(0, 0)[0])[1].tobytes()
  assert _reason(b"hello, I am text") == "not_an_image"
  assert _reason(jpeg[: len(jpeg) // 2]) == "truncated"
  assert _reason(b"\x89PNG\r\n\x1a\n" + os.urandom(200)) == "decode_error"
  huge_header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", 20000, 20000)
  assert _reason(huge_header + b"\x08\x02\x00\x00\x00" + bytes(40)) == "too_large"
  # A JPEG over the pixel limit is decoded at a reduced scale instead.
  reduced = images.decode_image(jpeg, max_pixels=128 * 128 // 4)
  assert reduced.shape == (64, 64, 3)


def _write_bad_folder(root: Path) -> dict[str, int]:
  """A folder of good and bad files; returns the expected reject counts."""
  (root / "sub").mkdir(parents=True)
  for i in range(6):
    cv2.imwrite(str(root / "sub" / f"face{i}.png"), synthetic.make_face(5, i)[0][..., ::-1])
  cv2.imwrite(str(root / "gray.png"), cv2.cvtColor(synthetic.make_face(5, 6)[0], cv2.COLOR_RGB2GRAY))
  cv2.imwrite(str(root / "deep.png"), synthetic.make_face(5, 7)[0].astype(np.uint16) * 257)
  rgba = np.dstack([synthetic.make_face(5, 8)[0], np.full((128, 128), 255, np.uint8)])
  cv2.imwrite(str(root / "alpha.png"), rgba)
  big = cv2.resize(synthetic.make_face(5, 9)[0], (1500, 1300))
  cv2.imwrite(str(root / "big.jpg"), big)
  jpeg = cv2.imencode(".jpg", synthetic.make_face(5, 10)[0])[1].tobytes()
  (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
  (root / "text.jpg").write_text("not an image at all")
  (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
  cv2.imwrite(str(root / "tiny.png"), np.zeros((20, 40, 3), np.uint8))
  cv2.imwrite(str(root / "flat.bmp"), np.full((100, 100, 3), 128, np.uint8))
  (root / "palette.png").write_bytes(_palette_png(96, 96))
  (root / "notes.txt").write_text("counted: a file that does not decode")
  return {"truncated": 1, "not_an_image": 2, "decode_error": 1, "too_small": 1}


def _read_split(out: Path, split: str) -> list[dict]:
  import tensorflow as tf

  info = json.loads((out / features.INFO_FILE).read_text())
  files = [str(out / n) for n in info["shards"][split]]
  ds = tf.data.TFRecordDataset(files).map(lambda r: features.parse_example(r, info["num_patches"], info["image_size"]))
  return list(ds.as_numpy_iterator())


def test_folder_with_bad_inputs_never_stops_and_counts_reasons(tmp_path):
  src = tmp_path / "src"
  expected = _write_bad_folder(src)
  out = tmp_path / "out"
  argv = ["--source", f"folder:{src}", "--output", str(out), "--image-size", "32"]
  argv += ["--test-count", "2", "--workers", "1", "--quiet", "--preview", "2"]
  assert cli.main(argv) == 0
  info = json.loads((out / features.INFO_FILE).read_text())
  rejects = info["rejects"]
  for reason, n in expected.items():
    assert rejects.get(reason) == n, rejects
  # flat.bmp has no edges at all; palette.png (a checkerboard) may or may not yield 3 boxes.
  assert set(rejects) <= set(expected) | {"too_few_boxes"}
  assert 1 <= rejects["too_few_boxes"] <= 2
  total = info["counts"]["train"] + info["counts"]["test"] + sum(rejects.values())
  assert total == 17 and info["num_source_images"] == 17
  # Every reject is listed by path and reason beside dataset_info.json.
  listed = [json.loads(line) for line in (out / info["rejects_file"]).read_text().splitlines()]
  assert len(listed) == sum(rejects.values())
  by_id = {r["id"]: r for r in listed}
  assert by_id["notes.txt"]["reason"] == "not_an_image" and by_id["truncated.jpg"]["reason"] == "truncated"
  assert by_id["text.jpg"]["path"] == str(src / "text.jpg") and by_id["tiny.png"]["reason"] == "too_small"
  assert info["counts"]["train"] + info["counts"]["test"] >= 10  # faces, gray, deep, alpha, big
  ids = {e["id"].decode() for s in ("train", "test") for e in _read_split(out, s)}
  assert {"gray.png", "deep.png", "alpha.png", "big.jpg", "sub/face0.png"} <= ids
  assert len(list((out / "preview").glob("*.png"))) == 2


# ---------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("synth")
  argv = ["--source", "synthetic", "--num-images", "60", "--output", str(out)]
  argv += ["--image-size", "32", "--test-count", "8", "--shard-size", "25", "--workers", "1"]
  argv += ["--quiet", "--seed", "3"]
  assert cli.main(argv) == 0
  return out


def test_round_trip_boxes_inside_and_within_area(synthetic_run):
  info = features.read_dataset_info(str(synthetic_run))
  assert info["format"] == features.FORMAT_NAME and info["version"] == features.FORMAT_VERSION
  assert info["edge_method"] == "hed" and info["num_labels"] == synthetic.NUM_LABELS
  assert info["shards"]["train"] == [features.shard_name("train", k, 3) for k in range(3)]
  train, test = _read_split(synthetic_run, "train"), _read_split(synthetic_run, "test")
  assert len(train) == info["counts"]["train"] and len(test) == info["counts"]["test"]
  assert len(test) <= 8 and len(train) + len(test) + sum(info["rejects"].values()) == 60
  assert len(train) >= 45
  s = info["image_size"]
  for ex in train + test:
    assert ex["image"].shape == (s, s, 3)
    b = ex["boxes"]
    assert b.shape == (3, 4) and b.dtype == np.float32
    assert (b[:, :2] >= 0).all() and (b[:, 0] + b[:, 2] <= s + 1e-4).all()
    assert (b[:, 1] + b[:, 3] <= s + 1e-4).all()
    area = b[:, 2] * b[:, 3] / (s * s)
    assert ((area >= 0.05 - 1e-4) & (area <= 0.25 + 1e-4)).all(), area
    assert 0 <= ex["label"] < synthetic.NUM_LABELS
  # Stored image equals the generator's image resized to S.
  ex = train[0]
  index = int(ex["id"].decode().split("/")[-1])
  face, label = synthetic.make_face(3, index)
  assert ex["label"] == label
  np.testing.assert_array_equal(ex["image"], cv2.resize(face, (s, s), interpolation=cv2.INTER_AREA))
  # Train ids in source order, test ids disjoint.
  train_ids = [e["id"].decode() for e in train]
  assert train_ids == sorted(train_ids)
  assert not set(train_ids) & {e["id"].decode() for e in test}


def test_split_is_stable_and_order_independent():
  ids = [f"img{i}.jpg" for i in range(100)]
  test = writer.test_indices(ids, 10)
  rev = writer.test_indices(ids[::-1], 10)
  assert len(test) == 10 and {ids[i] for i in test} == {ids[::-1][i] for i in rev}
  shards = writer.plan_shards(ids, 10, 16)
  covered = sorted(i for s in shards for i in s.indices)
  assert covered == list(range(100))
  assert [s.name for s in shards[:6]] == [features.shard_name("train", k, 6) for k in range(6)]
  assert all(s.split == "train" for s in shards[:6]) and len(shards) == 7
  assert shards[-1].name == features.shard_name("test", 0, 1)


# ---------------------------------------------------------------- tfds


def test_tfds_source_with_mock_data(tmp_path):
  import tensorflow as tf
  import tensorflow_datasets as tfds

  def as_dataset(self, *args, **kwargs):
    def gen():
      for i in range(12):
        face, label = synthetic.make_face(9, i)
        yield {"image": face, "label": label, "file_name": f"f{i}.jpg"}

    return tf.data.Dataset.from_generator(
      gen, output_types=self.info.features.dtype, output_shapes=self.info.features.shape
    )

  out = tmp_path / "out"
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    argv = ["--source", "tfds:oxford_flowers102:train", "--output", str(out)]
    assert cli.main(argv + ["--image-size", "32", "--test-count", "2", "--workers", "1"]) == 0
  info = json.loads((out / features.INFO_FILE).read_text())
  assert info["num_source_images"] == 12 and info["num_labels"] == 102
  examples = _read_split(out, "train")
  assert len(examples) >= 8
  for ex in examples:
    i = int(ex["id"].decode().rsplit("/", 1)[1])
    assert ex["id"].decode() == f"oxford_flowers102/train/{i}"
    assert ex["label"] == synthetic.make_face(9, i)[1]


# ---------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "preprocessing", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout(180),
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  "args, option",
  [
    (["--source", "folder:/no/such/dir"], "--source"),
    (["--source", "synthetic", "--min-area", "0.3", "--max-area", "0.2"], "--min-area"),
    (["--source", "synthetic", "--num-patches", "0"], "--num-patches"),
    (["--source", "synthetic", "--sed-model", "/no/model.yml.gz"], "--sed-model"),
    (["--source", "bogus"], "--source"),
  ],
)
def test_cli_bad_option_is_one_line(tmp_path, args, option):
  r = _cli(*args, "--output", str(tmp_path / "out"))
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("preprocessing: error: "), r.stderr
  assert option in lines[0] and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_empty_folder(tmp_path):
  (tmp_path / "empty").mkdir()
  r = _cli("--source", f"folder:{tmp_path / 'empty'}", "--output", str(tmp_path / "out"))
  assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
  assert "--source" in r.stderr and "no files" in r.stderr


def test_cli_folder_without_images(tmp_path):
  """Files that all fail to decode: one line naming the source and where the rejects are listed."""
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "readme.txt").write_text("no images")
  out = tmp_path / "out"
  r = _cli("--source", f"folder:{tmp_path / 'docs'}", "--output", str(out), "--test-count", "0", "--quiet")
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 1 and lines[-1].startswith("preprocessing: error: --source"), r.stderr
  assert "no item gave a usable example" in lines[-1] and str(out / "rejects.jsonl") in lines[-1]
  kept = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
  assert kept == ["rejects.jsonl"] and "readme.txt" in (out / "rejects.jsonl").read_text()
  # Nothing of that run holds the output: other options start afresh.
  r = _cli("--source", f"folder:{tmp_path / 'docs'}", "--output", str(out), "--test-count", "0", "--image-size", "32")
  assert r.returncode == 1 and "no item gave a usable example" in r.stderr and "different options" not in r.stderr


def test_small_source_gets_a_test_split_by_default_and_preview_says_why_fewer(tmp_path, capsys):
  """10 images: --test-count defaults to 10% (1), said in one line; --preview 20 says why it wrote fewer."""
  out = tmp_path / "small"
  argv = ["--source", "synthetic", "--num-images", "10", "--image-size", "16", "--workers", "1", "--quiet"]
  assert cli.main([*argv, "--preview", "20", "--output", str(out)]) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  info = json.loads((out / features.INFO_FILE).read_text())
  assert info["options"]["test_count"] == 1
  assert printed[0] == "--test-count 1: 10% of the 10 source items (set it to choose)"
  train = info["counts"]["train"]
  assert info["counts"]["test"] + sum(info["rejects"].values()) + train == 10 and 0 < train < 20
  assert printed[-1].startswith(f"preview: {train} images with their boxes in ")
  assert printed[-1].endswith(f"(the train split has only {train} examples)")
  assert len(list((out / "preview").glob("*.png"))) == train
  first = (out / "preview" / "preview-000.png").read_bytes()
  assert cli.main([*argv, "--preview", "2", "--output", str(out)]) == 0  # a smaller preview: the folder holds 2
  assert sorted(p.name for p in (out / "preview").glob("*")) == ["preview-000.png", "preview-001.png"]
  assert (out / "preview" / "preview-000.png").read_bytes() == first


@pytest.mark.parametrize("num_images, expected", [(2, 1), (10, 1), (25, 2), (1279, 127), (1280, 128), (10**6, 128)])
def test_default_test_count_rule(num_images, expected):
  assert cli.default_test_count(num_images) == expected


# ---------------------------------------------------------------- resume


def _snapshot(out: Path) -> dict[str, bytes]:
  """All files under `out`; dataset_info.json without options.workers (a non-content option)."""
  files = {}
  for p in sorted(out.rglob("*")):
    if p.is_file():
      data = p.read_bytes()
      if p.name == features.INFO_FILE:
        info = json.loads(data)
        info["options"].pop("workers")
        data = json.dumps(info).encode()
      files[str(p.relative_to(out))] = data
  return files


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_is_one_line(tmp_path):
  """Ctrl-C reaches the whole process group: workers leave it to the parent, which says so in one line."""
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "preprocessing", "--source", "synthetic", "--num-images", "3000", "--image-size", "32"]
  cmd += ["--shard-size", "10", "--edges", "gradient", "--workers", "2", "--quiet", "--output", str(out)]
  proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + timeout(90)
    while len(list(out.glob("train-*.tfrecord"))) < 2 and proc.poll() is None:
      assert time.time() < deadline
      time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=timeout(60))
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  assert proc.returncode == 130, err.decode()
  assert err.decode().strip().splitlines() == ["preprocessing: interrupted; rerun the same command to resume"]


@pytest.mark.slow
def test_kill_and_resume_equals_clean_single_worker_run(tmp_path):
  common = ["--source", "synthetic", "--num-images", "160", "--image-size", "32"]
  common += ["--shard-size", "10", "--test-count", "10", "--quiet"]
  clean, resumed = tmp_path / "clean", tmp_path / "resumed"
  cmd = [sys.executable, "-m", "preprocessing", *common, "--workers", "2"]
  proc = subprocess.Popen(
    [*cmd, "--output", str(resumed)],
    cwd=REPO,
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  try:
    deadline = time.time() + timeout(90)
    while len(list(resumed.glob("train-*.tfrecord"))) < 2 and proc.poll() is None:
      assert time.time() < deadline
      time.sleep(0.05)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
  done = len(list(resumed.glob("train-*.tfrecord")))
  assert proc.returncode == -signal.SIGKILL and 2 <= done < 15, "the run was not interrupted"
  assert not (resumed / features.INFO_FILE).exists()
  r = subprocess.run([*cmd, "--output", str(resumed)], cwd=REPO, capture_output=True, timeout=timeout(180))
  assert r.returncode == 0, r.stderr[-2000:]
  # The clean run uses one in-process worker: the output must not depend on it.
  clean_cmd = [sys.executable, "-m", "preprocessing", *common, "--workers", "1"]
  r = subprocess.run([*clean_cmd, "--output", str(clean)], cwd=REPO, capture_output=True, timeout=timeout(180))
  assert r.returncode == 0, r.stderr[-2000:]
  a, b = _snapshot(clean), _snapshot(resumed)
  assert list(a) == list(b)
  assert [k for k in a if a[k] != b[k]] == []
  assert not [k for k in a if k.startswith(".tmp") or "/.tmp" in k]
  info = json.loads((resumed / features.INFO_FILE).read_text())
  assert len(info["shards"]["train"]) == 15 and len(info["shards"]["test"]) == 1
  assert info["counts"]["train"] + info["counts"]["test"] + sum(info["rejects"].values()) == 160


def test_key_patch_presets_fill_unset_flags_and_single_flags_override():
  from preprocessing import __main__ as cli

  parts = cli.make_settings(cli.parse_args(["--source", "synthetic", "--output", "x"]))
  assert parts.box_filter == detect.PRESETS["parts"].box_filter
  assert (parts.edge_smoothing, parts.edgeboxes_beta, parts.edges) == (1.0, 0.9, "hed")
  paper = cli.make_settings(cli.parse_args(["--source", "synthetic", "--output", "x", "--key-patches", "paper"]))
  assert paper.box_filter == detect.PAPER_FILTER  # paper §4: 5-25 %, aspect 3, NMS 0.3, EdgeBoxes' order
  assert (paper.edge_smoothing, paper.edgeboxes_beta, paper.edges) == (0.0, 0.75, "hed")
  gradient = cli.make_settings(cli.parse_args(["--source", "synthetic", "--output", "x", "--edges", "gradient"]))
  assert gradient.edges == "gradient" and gradient.box_filter == parts.box_filter
  mixed = cli.parse_args(["--source", "synthetic", "--output", "x", "--key-patches", "paper", "--max-area", "0.2"])
  assert (mixed.max_area, mixed.min_area, mixed.scoring) == (0.2, 0.05, "edgeboxes")
  bad = [("--edge-smoothing", "-1.0"), ("--edgeboxes-beta", "0.0"), ("--edgeboxes-beta", "1.5")]
  bad += [("--image-size", "100"), ("--image-size", "8")]  # the networks need a power of two >= 16
  bad += [("--output", __file__)]  # a file
  for flag, value in bad:
    msg = cli.check_options(cli.parse_args(["--source", "synthetic", "--output", "x", flag, value]))
    assert msg is not None and msg.startswith(f"{flag} {value}:")


def test_flags_the_others_leave_unused_are_one_line_warnings_each(tmp_path, capsys):
  from preprocessing import __main__ as cli

  def unused(*flags, source="synthetic"):
    return cli.unused_options(cli.build_parser().parse_args(["--source", source, "--output", "x", *flags]))

  assert unused("--edge-smoothing", "2") == [
    "--edge-smoothing 2.0 is unused with --edges hed: it blurs only for --edges gradient"
  ]
  assert unused("--hed-weights", "w.h5", "--edges", "gradient") == [
    "--hed-weights w.h5 is unused with --edges gradient: only --edges hed reads them"
  ]
  assert unused("--edges", "gradient", "--sed-model", "m.yml.gz") == [
    "--edges gradient is unused: --sed-model replaces the edge map"
  ]
  assert unused("--boxes", "b.csv", "--hed-weights", "w.h5", "--edge-smoothing", "3", "--min-area", "0.1") == [
    "--edge-smoothing 3.0 is unused with --boxes: it blurs only for --edges gradient",
    "--hed-weights w.h5 is unused with --boxes: only --edges hed reads them",
    "--min-area 0.1 is unused with --boxes: the file gives the boxes",
  ]
  assert unused("--num-images", "3", "--seed", "0", source="folder:photos") == [
    "--num-images 3 is unused with --source folder:photos: only the synthetic source reads it"
  ]
  fine = (["--edges", "gradient", "--edge-smoothing", "2"], ["--hed-weights", "w.h5"], ["--edge-smoothing", "1"])
  for flags in (*fine, ["--num-images", "3"], ["--key-patches", "paper", "--boxes", "b.csv", "--min-area", "0.05"]):
    assert unused(*flags) == [], flags
  # A dataset's recorded command lists every option (the preset's values too): it reruns without a warning.
  for source in ("synthetic", "folder:photos"):
    args = cli.parse_args(["--source", source, "--output", "x", "--boxes", "b.csv", "--key-patches", "paper"])
    command = shlex.split(cli.command_line(cli.content_options(args)))
    assert cli.unused_options(cli.build_parser().parse_args([*command[3:], "--output", "x"])) == []
  # The CLI prints each as one line and goes on (weights it does not use need not exist).
  out, weights = tmp_path / "out", tmp_path / "no.h5"
  argv = ["--source", "synthetic", "--num-images", "8", "--output", str(out), "--edges", "gradient"]
  argv += ["--hed-weights", str(weights), "--quiet", "--test-count", "0", "--workers", "1"]
  assert cli.main(argv) == 0
  warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
  assert warnings == [
    f"preprocessing: warning: --hed-weights {weights} is unused with --edges gradient: only --edges hed reads them"
  ]


def test_edge_smoothing_removes_fine_texture_and_keeps_contours():
  rng = np.random.default_rng(0)
  image = np.full((128, 128, 3), 128, np.uint8)
  image[32:96, 32:96] = 230  # one object contour
  noisy = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)  # fine texture
  plain, _ = detect.gradient_edges(noisy)
  smooth, _ = detect.gradient_edges(noisy, smoothing=1.0)
  inside = np.s_[40:88, 40:88]
  assert (smooth[inside] > 0).sum() < 0.5 * (plain[inside] > 0).sum()
  assert (smooth[30:35, 40:88] > 0).any() and (smooth[93:98, 40:88] > 0).any()  # the contour stays


def test_default_key_patches_are_parts_apart_on_faces():
  """The parts preset on the aligned synthetic faces: N part-sized boxes, apart, on the face (docs/design.md §2.1)."""
  from preprocessing import synthetic

  f = detect.PRESETS["parts"].box_filter
  areas, overlaps = [], []
  for i in range(12):
    image, _ = synthetic.make_face(0, i, pose="aligned")
    boxes, (h, w) = worker.detect_boxes(image, worker.Settings())
    assert len(boxes) == f.num_patches
    areas += list(boxes[:, 2] * boxes[:, 3] / (h * w))
    overlaps += [detect.iou(b, boxes[j + 1 :]).max(initial=0) for j, b in enumerate(boxes)]
  assert f.min_area - 0.01 <= min(areas) and max(areas) <= f.max_area + 0.01
  assert max(overlaps) <= f.nms_iou + 1e-6
  paper = worker.Settings(box_filter=detect.PAPER_FILTER, edge_smoothing=0.0, edgeboxes_beta=0.75)
  paper_areas = [
    b[2] * b[3] / (h * w)
    for i in range(12)
    for b in worker.detect_boxes(synthetic.make_face(0, i, pose="aligned")[0], paper)[0]
  ]
  assert np.mean(paper_areas) > np.mean(areas)  # the paper's filters let larger boxes through
