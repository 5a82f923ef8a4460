"""Precomputed key-patch boxes from a file (`--boxes FILE`), used instead of detection.

Formats, chosen by the file's extension:

  .mat          the authors' layout (KeyPatchGAN's `celebA_allbbs.mat`,
                `compcar_allbbs.mat`): a variable `allbbs` [R, N, 4] of
                (x, y, w, h). Row r belongs to the image at position r of the
                sorted full image folder. MATLAB v7.3 (HDF5) files are read
                with h5py.
  .csv / .txt   one line per image: `id,x1,y1,w1,h1,x2,y2,w2,h2,...`; an
                optional header line starting with `id`; `#` comments.
  .jsonl/.json  one JSON object per line: {"id": ..., "boxes": [[x, y, w, h], ...]}.

Which image a box row belongs to:
  text formats  the `id` is the source id: the path relative to the
                `folder:PATH` source with `/` separators (a flat folder: the
                file name), the TFDS key `NAME/SPLIT/INDEX`, or the synthetic id.
  .mat          `--boxes-row number`: a file named `<digits>.<ext>` (e.g.
                CelebA's `000123.jpg`) gets row `digits - 1`, so any subset of
                a numbered folder gets its own rows; `--boxes-row index`: the
                row is the image's position in the source order (the sorted
                folder listing), right only for the full folder the file was
                made for; `--boxes-row auto` (default): `number` when every
                id's file name is numbered and no number repeats, else `index`.

Frame (`--boxes-scale F`): boxes are (x, y, w, h) in an F x F frame spanning
the image after `--center-crop` (the authors' CelebA file: F = 128 over the
108 px crop; their CompCars file: F = 1, fractions of the sides); without
`--boxes-scale`, in pixels of that image. Rows with more than N boxes give
their first N (best first).

Rejects, counted by reason like every other reject: `no_boxes` (an image
without a row), `too_few_boxes` (a row with fewer than N boxes),
`box_outside_image` (a box not inside the frame, or of zero or negative size).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from keypatch_jax import errors

FORMATS = {".mat": "mat", ".csv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
ROW_RULES = ("auto", "number", "index")
NO_BOXES = "no_boxes"
TOO_FEW = "too_few_boxes"
OUTSIDE = "box_outside_image"
MAT_KEY = "allbbs"
_NUMBERED = re.compile(r"(\d+)\.[^./]+")


class BoxesFileError(errors.UsageError):
  """`--boxes` cannot be used; the message names the file and the problem in one line (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class BoxesFile:
  """A parsed boxes file.

  Attributes:
    path: the file as given.
    format: 'mat' | 'csv' | 'jsonl'.
    rows: 'mat' only: float64 [R, N, 4].
    by_id: text formats only: id -> float64 [n, 4] (n may differ per id).
    sha256: hex digest of the file's bytes.
    size_bytes: the file's size.
  """

  path: str
  format: str
  rows: np.ndarray | None
  by_id: dict[str, np.ndarray] | None
  sha256: str
  size_bytes: int


def _read_bytes(path: str) -> bytes:
  try:
    if "://" in path:
      import tensorflow as tf

      with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except (OSError, ValueError) as e:
    raise BoxesFileError(f"--boxes {path}: cannot read ({type(e).__name__})") from None
  except Exception as e:  # noqa: BLE001 - tf.errors.NotFoundError and friends
    raise BoxesFileError(f"--boxes {path}: cannot read ({type(e).__name__})") from None


def _mat_rows(path: str, data: bytes) -> np.ndarray:
  """The `allbbs` [R, N, 4] array of a MATLAB file (v4-v7 via scipy, v7.3 via h5py)."""
  import scipy.io

  try:
    mat = scipy.io.loadmat(io.BytesIO(data), variable_names=[MAT_KEY])
  except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
    try:
      import h5py
    except ImportError:
      raise BoxesFileError(
        f"--boxes {path}: a MATLAB v7.3 file; pip install h5py, or re-save it with save(..., '-v7')"
      ) from None
    with h5py.File(io.BytesIO(data), "r") as f:
      if MAT_KEY not in f:
        raise BoxesFileError(f"--boxes {path}: no variable {MAT_KEY!r} (has {sorted(f.keys())})") from None
      mat = {MAT_KEY: np.asarray(f[MAT_KEY]).T}  # HDF5 stores MATLAB arrays transposed
  except Exception as e:  # noqa: BLE001 - scipy raises several types for a bad file
    raise BoxesFileError(f"--boxes {path}: not a readable .mat file ({e})") from None
  if MAT_KEY not in mat:
    raise BoxesFileError(f"--boxes {path}: no variable {MAT_KEY!r} [num_images, N, 4]")
  rows = np.asarray(mat[MAT_KEY])
  if rows.ndim == 2 and rows.shape[1] == 4:  # N = 1 saved from MATLAB loses the middle axis
    rows = rows[:, None, :]
  if rows.ndim != 3 or rows.shape[2] != 4 or not np.issubdtype(rows.dtype, np.number):
    raise BoxesFileError(f"--boxes {path}: {MAT_KEY} has shape {rows.shape}, expected [num_images, N, 4]")
  return rows.astype(np.float64)


def _parse_boxes(path: str, line_no: int, values: Sequence[Any]) -> np.ndarray:
  try:
    flat = np.asarray([float(v) for v in values], np.float64)
  except (TypeError, ValueError):
    raise BoxesFileError(f"--boxes {path}: line {line_no}: box values must be numbers") from None
  if flat.size % 4:
    raise BoxesFileError(f"--boxes {path}: line {line_no}: {flat.size} values, not a multiple of 4 (x, y, w, h)")
  return flat.reshape(-1, 4)


def _add(by_id: dict[str, np.ndarray], path: str, line_no: int, key: str, boxes: np.ndarray) -> None:
  if not key:
    raise BoxesFileError(f"--boxes {path}: line {line_no}: empty id")
  if key in by_id:
    raise BoxesFileError(f"--boxes {path}: line {line_no}: id {key!r} appears twice")
  by_id[key] = boxes


def _csv_rows(path: str, text: str) -> dict[str, np.ndarray]:
  by_id: dict[str, np.ndarray] = {}
  for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
    if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
      continue
    if line_no == 1 and row[0].strip().lower() == "id":
      continue
    _add(by_id, path, line_no, row[0].strip(), _parse_boxes(path, line_no, [v for v in row[1:] if v.strip()]))
  return by_id


def _jsonl_rows(path: str, text: str) -> dict[str, np.ndarray]:
  by_id: dict[str, np.ndarray] = {}
  for line_no, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise BoxesFileError(f"--boxes {path}: line {line_no}: not JSON ({e.msg})") from None
    if not isinstance(obj, dict) or "id" not in obj or not isinstance(obj.get("boxes"), list):
      raise BoxesFileError(f'--boxes {path}: line {line_no}: expected {{"id": ..., "boxes": [[x, y, w, h], ...]}}')
    values = [v for box in obj["boxes"] for v in (box if isinstance(box, list) else [box])]
    _add(by_id, path, line_no, str(obj["id"]), _parse_boxes(path, line_no, values))
  return by_id


def load(path: str) -> BoxesFile:
  """Reads and parses a boxes file (local path or any `tf.io.gfile` URL).

  Raises:
    BoxesFileError: unknown extension, unreadable file, or a malformed line or
      variable (the message names the file and the line).
  """
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise BoxesFileError(f"--boxes {path}: unknown extension {ext!r}; use .mat, .csv or .jsonl")
  fmt = FORMATS[ext]
  data = _read_bytes(path)
  rows = by_id = None
  if fmt == "mat":
    rows = _mat_rows(path, data)
  else:
    try:
      text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
      raise BoxesFileError(f"--boxes {path}: not UTF-8 text") from None
    by_id = _csv_rows(path, text) if fmt == "csv" else _jsonl_rows(path, text)
    if not by_id:
      raise BoxesFileError(f"--boxes {path}: no boxes in the file")
  return BoxesFile(path, fmt, rows, by_id, hashlib.sha256(data).hexdigest(), len(data))


def numbered_row(example_id: str) -> int | None:
  """Row `k - 1` of an id whose file name is `<k>.<ext>` (e.g. 'sub/000123.jpg' -> 122), else None."""
  m = _NUMBERED.fullmatch(example_id.rsplit("/", 1)[-1])
  return int(m.group(1)) - 1 if m else None


def resolve_row_rule(ids: Sequence[str], rule: str) -> str:
  """'number' or 'index' for `--boxes-row rule` over the source ids (see the module docstring)."""
  if rule != "auto":
    return rule
  numbers = [numbered_row(i) for i in ids]
  if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
    return "number"
  return "index"


@dataclasses.dataclass(frozen=True)
class Assignment:
  """The boxes of every source image.

  Attributes:
    given: per source index, float64 [N, 4] boxes in the file's frame, or a
      reject reason (`NO_BOXES`, `TOO_FEW`, `OUTSIDE`).
    info: what `dataset_info.json` records under `boxes_file`.
  """

  given: list[np.ndarray | str]
  info: dict[str, Any]


def outside(boxes: np.ndarray, width: float, height: float) -> bool:
  """Whether any (x, y, w, h) box of [N, 4] leaves [0, width] x [0, height] or has w or h <= 0.

  A relative tolerance of 1e-6 absorbs rounding in fractions.
  """
  b = np.asarray(boxes, np.float64)
  tw, th = 1e-6 * width, 1e-6 * height
  ok = np.isfinite(b).all(axis=1) & (b[:, 2] > 0) & (b[:, 3] > 0)
  ok &= (b[:, 0] >= -tw) & (b[:, 1] >= -th)
  ok &= (b[:, 0] + b[:, 2] <= width + tw) & (b[:, 1] + b[:, 3] <= height + th)
  return not bool(ok.all())


def assign(
  boxes: BoxesFile, ids: Sequence[str], num_patches: int, row_rule: str = "auto", scale: float | None = None
) -> Assignment:
  """Matches the file's boxes to the source ids.

  Args:
    boxes: the parsed file.
    ids: all source ids, in source order.
    num_patches: N, boxes per image.
    row_rule: 'auto' | 'number' | 'index' (.mat only).
    scale: F of the frame, or None for pixels (then the outside check waits
      for the image, in the worker).

  Returns:
    the `Assignment`.

  Raises:
    BoxesFileError: a .mat file with fewer than N boxes per row, or a file none
      of whose boxes belong to a source image (e.g. ids that are not the source's).
  """
  given: list[np.ndarray | str] = []
  info: dict[str, Any] = {
    "path": boxes.path,
    "format": boxes.format,
    "scale": "pixels" if scale is None else scale,
    "sha256": boxes.sha256,
    "size_bytes": boxes.size_bytes,
  }
  if boxes.rows is not None:
    r, n = boxes.rows.shape[:2]
    if n < num_patches:
      raise BoxesFileError(f"--boxes {boxes.path}: {n} boxes per row, fewer than --num-patches {num_patches}")
    rule = resolve_row_rule(ids, row_rule)
    rows = [numbered_row(i) for i in ids] if rule == "number" else list(range(len(ids)))
    given = [NO_BOXES if k is None or not 0 <= k < r else boxes.rows[k, :num_patches] for k in rows]
    info.update(num_rows=r, boxes_per_row=n, row_rule=rule)
  else:
    assert boxes.by_id is not None
    for i in ids:
      b = boxes.by_id.get(i)
      given.append(NO_BOXES if b is None else TOO_FEW if len(b) < num_patches else b[:num_patches])
    info.update(num_rows=len(boxes.by_id))
  if scale is not None:
    given = [g if isinstance(g, str) or not outside(g, scale, scale) else OUTSIDE for g in given]
  if all(isinstance(g, str) and g == NO_BOXES for g in given):
    example = next(iter(boxes.by_id)) if boxes.by_id else "row numbers"
    raise BoxesFileError(
      f"--boxes {boxes.path}: none of its boxes belong to the {len(ids)} source images "
      f"(file has e.g. {example!r}, source has e.g. {ids[0]!r})"
    )
  return Assignment(given, info)
