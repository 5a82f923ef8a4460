"""`python -m keypatch_jax.probe`: the linear probe on a real checkpoint, and unlabelled data."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

from keypatch_jax import dataset_meta, features, input_pipeline, probe


@pytest.mark.slow
def test_probe_reports_both_accuracies(trained_workdir, tiny_data, capsys):
  argv = ["--workdir", trained_workdir, "--data", tiny_data, "--steps", "100"]
  assert probe.main(argv) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["num_classes"] == 4 and result["num_train"] == 80 and result["num_test"] == 16
  for key in ("embedding_test_accuracy", "pixels_test_accuracy", "embedding_train_accuracy"):
    assert 0.0 <= result[key] <= 1.0
  assert result["pixels_train_accuracy"] > result["chance_accuracy"]  # the probe does learn


def _unlabelled_copy(tiny_data: str, path) -> str:
  """The tiny dataset with every `label` rewritten to -1."""
  os.makedirs(path)
  info = features.read_dataset_info(tiny_data)
  n, s = info["num_patches"], info["image_size"]
  for split in ("train", "test"):
    for name in features.split_files(tiny_data, split):
      copy = os.path.join(path, os.path.basename(name))
      with tf.io.TFRecordWriter(copy) as writer:
        for record in tf.data.TFRecordDataset(name):
          ex = features.parse_example(record, n, s)
          writer.write(features.encode_example(ex["image"].numpy(), ex["boxes"].numpy(), "x", label=-1))
      info["shard_files"][os.path.basename(name)]["bytes"] = os.path.getsize(copy)  # rewritten: a new size
  with open(os.path.join(path, features.INFO_FILE), "w") as f:
    json.dump(info, f)
  return str(path)


@pytest.mark.slow
def test_unlabelled_dataset_is_one_line_error(trained_workdir, tiny_data, tmp_path, capsys):
  data = _unlabelled_copy(tiny_data, tmp_path / "unlabelled")
  assert probe.main(["--workdir", trained_workdir, "--data", data, "--limit", "8"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("keypatch_jax.probe: error: ") and "no labels" in err[0], err


@pytest.mark.slow
def test_labels_file_overrides_records(trained_workdir, tiny_data, tmp_path, capsys):
  meta = dataset_meta.load_meta(tiny_data)
  ids = [
    bytes(i).decode()
    for split in ("train", "test")
    for b in input_pipeline.eval_batches(meta, split, 64, 16)
    for i in b["id"]
  ]
  labels = tmp_path / "labels.csv"
  labels.write_text("".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))
  argv = ["--workdir", trained_workdir, "--data", tiny_data, "--labels", str(labels), "--limit", "16", "--steps", "20"]
  assert probe.main(argv) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["num_classes"] == 2 and result["num_train"] == 16 and result["num_test"] == 16
