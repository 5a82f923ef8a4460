"""SHA-256 digests of a checkpoint's arrays: recorded when a step is saved, checked when it is restored
(docs/design.md §7.3).

Orbax (0.12) writes arrays through TensorStore; it checks the shard index of
its files (crc32c) but not the array bytes, so a byte flipped inside a
parameter file restores silently as another value (one such flip gave EMA
weights of 3e38). The digests are of the arrays, not of the files: one per
leaf, over its dtype, shape and bytes, so a partial restore (only the
discriminator, only the generator) checks exactly the leaves it read, and the
check does not depend on how Orbax lays the arrays out on disk.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


def leaf_digest(x: Any) -> str:
  """SHA-256 (hex) of one array's dtype, shape and bytes (little-endian as stored in memory)."""
  a = np.ascontiguousarray(np.asarray(x))
  h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
  h.update(a.reshape(-1).view(np.uint8).data)
  return h.hexdigest()


def tree_digests(tree: Any) -> dict[str, str]:
  """{leaf path ("['params']['Conv_0']['kernel']"): `leaf_digest`} of every array of `tree`."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): leaf_digest(x) for path, x in leaves}


def mismatches(tree: Any, recorded: dict[str, str]) -> list[str]:
  """The leaf paths of `tree` whose digest differs from `recorded` (leaves not recorded are not checked)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
  out = []
  for path, x in leaves:
    key = jax.tree_util.keystr(path)
    if key in recorded and recorded[key] != leaf_digest(x):
      out.append(key)
  return out
