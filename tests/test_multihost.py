"""Multi-host: 2 processes on localhost (CPU, 2 simulated devices each) train a few steps."""

import os
import re
import socket
import subprocess
import sys

import pytest
from conftest import timeout

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_in_sync_and_checkpoint(tiny_data, tmp_path):
  address = f"localhost:{_free_port()}"
  workdir = str(tmp_path / "work")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", TF_CPP_MIN_LOG_LEVEL="3")
  procs = [
    subprocess.Popen(
      [sys.executable, os.path.join(HERE, "multihost_worker.py"), address, str(i), tiny_data, workdir],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=timeout(1200)) for p in procs]
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  results = [
    re.search(r"RESULT process=(\d) step=(\d+) restored=(\d+) checksum=(\S+)", out).groups() for out, _ in outputs
  ]
  assert sorted(r[0] for r in results) == ["0", "1"]
  assert all(r[1] == "4" and r[2] == "4" for r in results)
  assert results[0][3] == results[1][3]  # the parameters are identical on both processes
