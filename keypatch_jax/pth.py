"""Read a PyTorch `state_dict` file (`torch.save`) as numpy arrays, without PyTorch.

Both formats `torch.save` has written since PyTorch 0.4 are read:

  zip (PyTorch >= 1.6)  `<name>/data.pkl` (the pickled dict; each tensor storage
                        a persistent id) and `<name>/data/<key>` (raw storage bytes)
  legacy                magic number, protocol version, system info, the pickled
                        dict, the sorted storage keys, then each storage as an
                        int64 element count and its raw bytes

The pickle is read with a restricted unpickler that knows only the classes a
state_dict of tensors needs (`collections.OrderedDict`, tensor rebuild
functions, typed storages); anything else is refused, so loading a file never
runs code from it. Source of the format: `torch/serialization.py`
(`_save`, `_load`, `_legacy_save`, `_legacy_load`) and `torch/_utils.py`.
"""

from __future__ import annotations

import collections
import dataclasses
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION

STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class PthFormatError(ValueError):
  """The file is not a PyTorch state_dict this reader understands (one-line message)."""


@dataclasses.dataclass
class _Storage:
  """A storage named in the pickle; its bytes are filled in after the pickle is read."""

  key: str
  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None


@dataclasses.dataclass
class _Tensor:
  """A strided view of a storage, turned into an array once all storages are read."""

  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]

  def array(self) -> np.ndarray:
    data = self.storage.data
    if not self.size:
      return np.array(data[self.offset])
    if 0 in self.size:
      return np.zeros(self.size, data.dtype)
    end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
    if self.offset < 0 or end >= data.size:
      raise PthFormatError(f"a tensor of shape {self.size} reaches past its storage of {data.size} elements")
    view = np.lib.stride_tricks.as_strided(
      data[self.offset :], self.size, tuple(s * data.itemsize for s in self.stride), writeable=False
    )
    return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, offset, size, stride):
  return _Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


_CLASSES = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Unpickles only what a state_dict of tensors contains; storages become `_Storage`s."""

  def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
    super().__init__(file)
    self.storages = storages

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch" and name in STORAGE_DTYPES:
      return np.dtype(STORAGE_DTYPES[name])
    if (module, name) in _CLASSES:
      return _CLASSES[(module, name)]
    raise PthFormatError(f"it pickles {module}.{name}, which a state_dict of tensors does not contain")

  def persistent_load(self, pid: Any) -> Any:
    # zip: ('storage', type, key, location, numel); legacy: (..., numel, view_metadata)
    if not isinstance(pid, tuple) or len(pid) < 5 or _str(pid[0]) != "storage":
      raise PthFormatError(f"unknown persistent id {pid!r:.60}")
    dtype, key, numel = pid[1], _str(pid[2]), int(pid[4])
    if not isinstance(dtype, np.dtype):
      raise PthFormatError(f"storage {key} has unknown type {dtype!r:.60}")
    if len(pid) > 5 and pid[5] is not None:
      raise PthFormatError("storage views (PyTorch < 1.0 files) are not supported; re-save with a newer PyTorch")
    if key not in self.storages:
      self.storages[key] = _Storage(key, dtype, numel)
    return self.storages[key]


def _str(x: Any) -> str:
  return x.decode("ascii") if isinstance(x, bytes) else str(x)


def _materialize(obj: Any) -> Any:
  if isinstance(obj, _Tensor):
    return obj.array()
  if isinstance(obj, dict):
    return {k: _materialize(v) for k, v in obj.items()}
  return obj


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise PthFormatError("a zip without one <name>/data.pkl is not a torch.save file")
    prefix = pkl[0][: -len("data.pkl")]
    order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
    storages: dict[str, _Storage] = {}
    with z.open(pkl[0]) as f:
      result = _Unpickler(f, storages).load()
    for s in storages.values():
      name = f"{prefix}data/{s.key}"
      if name not in names:
        raise PthFormatError(f"storage {name} is missing")
      dtype = s.dtype.newbyteorder("<" if order == "little" else ">")
      s.data = np.frombuffer(z.read(name), dtype).astype(s.dtype)
      if s.data.size != s.numel:
        raise PthFormatError(f"storage {name} has {s.data.size} elements, expected {s.numel}")
  return result


def _read_legacy(path: str) -> Any:
  storages: dict[str, _Storage] = {}
  with open(path, "rb") as f:
    if _Unpickler(f, storages).load() != LEGACY_MAGIC:
      raise PthFormatError("not a torch.save file (no zip, no legacy magic number)")
    protocol = _Unpickler(f, storages).load()
    if protocol != LEGACY_PROTOCOL:
      raise PthFormatError(f"legacy protocol {protocol}, expected {LEGACY_PROTOCOL}")
    sys_info = _Unpickler(f, storages).load()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    result = _Unpickler(f, storages).load()
    keys = _Unpickler(f, storages).load()
    for key in keys:
      s = storages.get(_str(key))
      if s is None:
        raise PthFormatError(f"storage {key} is listed but not used")
      (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
      dtype = s.dtype.newbyteorder("<" if little else ">")
      raw = f.read(numel * dtype.itemsize)
      if numel != s.numel or len(raw) != numel * dtype.itemsize:
        raise PthFormatError(f"storage {key} is truncated or has the wrong size")
      s.data = np.frombuffer(raw, dtype).astype(s.dtype)
  return result


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a `torch.save`d state_dict (or a `.npz` of the same keys) as numpy arrays.

  Args:
    path: a `.pth`/`.pt` file written by `torch.save(state_dict)` (zip or
      legacy format), or a `.npz` whose names are the state_dict keys.

  Returns:
    {key: array}, with each tensor's dtype and shape (contiguous copies).

  Raises:
    PthFormatError: the file is not such a state_dict (one-line message
      naming the file). OSError: the file cannot be read.
  """
  try:
    if path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    if not isinstance(obj, dict):
      raise PthFormatError(f"it holds a {type(obj).__name__}, not a state_dict")
    out = _materialize(obj)
  except PthFormatError as e:
    raise PthFormatError(f"{path}: {e}") from None
  except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, ValueError) as e:
    raise PthFormatError(f"{path}: not a readable torch.save state_dict ({type(e).__name__}: {e})") from None
  return {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
