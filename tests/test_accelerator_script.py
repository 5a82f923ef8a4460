"""benchmarks/accelerator.py --dry-run: every part of the one-lease accelerator script runs (tiny, CPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import timeout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_peak_table_matches_device_kinds():
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  import accelerator

  assert accelerator.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
  assert accelerator.peak_flops("NVIDIA H100 PCIe", "float32") == 378e12
  assert accelerator.peak_flops("NVIDIA H200", "float32") == 494.7e12
  assert accelerator.peak_flops("TPU v5 lite", "float32") == 197e12
  assert accelerator.peak_flops("cpu", "float32") is None


@pytest.mark.slow
def test_dry_run_runs_every_part_and_ends_with_json(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run(
    [sys.executable, os.path.join(REPO, "benchmarks", "accelerator.py"), "--dry-run"],
    capture_output=True,
    text=True,
    env=env,
    cwd=tmp_path,
    timeout=timeout(600),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["dry_run"] and result["backend"] == "cpu"
  parts = ["step_S16_float32", "step_other_forms", "sampling", "hed_edges", "page", "quick_tests"]
  for part in parts:
    assert "error" not in result[part], (part, result[part])
  assert result["step_S16_float32"]["compiles"] == 1 and result["step_S16_float32"]["mfu"] > 0
  assert result["hed_edges"]["frames_per_s"] > 0
  assert result["page"]["median_ms"] > 0 and result["quick_tests"]["returncode"] == 0
  assert result["tensorflow_imported"] is False
  if importlib.util.find_spec("torch") is not None:  # the 3.12 quick loop has no torch
    assert result["torch_reference"]["images_per_s"] > 0
