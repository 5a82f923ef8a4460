"""FID and KID between two sets of Inception features, and the cached real-data features.

  FID  Fréchet distance between Gaussians fitted to the two feature sets
       (Heusel et al. 2017), computed exactly as pytorch-fid's
       `calculate_frechet_distance`: scipy's matrix square root, eps*I added
       to both covariances when the product's root is not finite, a small
       imaginary part dropped and a large one an error.
  KID  squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
       unbiased estimator, mean and standard deviation over random subsets
       (Binkowski et al. 2018), as torch-fidelity's `kid_features_to_metric`
       computes it (same subset draws for the same seed), in float64.

FID is biased upward at small sample sizes (its bias shrinks like 1/n, and
with fewer images than the 2048 feature dimensions the covariances are
singular); KID is unbiased, so its value at 128 images estimates the same
quantity as at 50,000, only with a larger standard deviation.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable

import numpy as np
from scipy import linalg


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [d], covariance [d, d]) of features [n, d], float64 (`np.cov`, rows are samples)."""
  features = np.asarray(features, np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
  """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)): pytorch-fid's FID.

  Args:
    mu1, mu2: means [d]; sigma1, sigma2: covariances [d, d].
    eps: added to both diagonals when the square root of the product is not
      finite (a near-singular product, e.g. fewer samples than dimensions).

  Raises:
    ValueError: shapes differ, or the root has an imaginary diagonal above
      1e-3 (the covariances are not positive semi-definite).
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"feature statistics differ in shape: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
  diff = mu1 - mu2
  with warnings.catch_warnings():  # singular whenever there are fewer images than dimensions: expected
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    print(f"FID: singular product of covariances; adding {eps} to their diagonals", file=sys.stderr)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in the covariance square root")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(features1: np.ndarray, features2: np.ndarray) -> float:
  """FID between two feature sets [n1, d] and [n2, d]."""
  return frechet_distance(*statistics(features1), *statistics(features2))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of equal-size samples x, y [m, d] under k(a, b) = (a.b / d + 1)^3 (Binkowski et al. eq. 4)."""
  d, m = x.shape[1], x.shape[0]

  def k(a, b):
    return (a @ b.T / d + 1.0) ** 3

  k_xx, k_yy, k_xy = k(x, x), k(y, y), k(x, y)
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(
  features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 2020
) -> tuple[float, float]:
  """(mean, std) of `polynomial_mmd2` over `num_subsets` random subsets of each set.

  Subsets are drawn without replacement, `subset_size` from each set
  (clipped to the smaller set, as clean-fid does), first from set 1 then from
  set 2, by `np.random.RandomState(seed)`: torch-fidelity's draws (whose
  defaults are 100 subsets of 1000 and seed 2020).

  Raises:
    ValueError: fewer than 2 features in a set, or feature sizes differ.
  """
  x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"KID needs two feature arrays [n, d] of equal d, got {x.shape} and {y.shape}")
  m = min(subset_size, len(x), len(y))
  if m < 2:
    raise ValueError(f"KID needs at least 2 images in each set, got {len(x)} and {len(y)}")
  rng = np.random.RandomState(seed)
  mmds = np.zeros(num_subsets)
  for i in range(num_subsets):
    a = x[rng.choice(len(x), m, replace=False)]
    b = y[rng.choice(len(y), m, replace=False)]
    mmds[i] = polynomial_mmd2(a, b)
  return float(mmds.mean()), float(mmds.std())


def weights_id(path: str) -> str:
  """A short id of a weights file: SHA-256 of its size, mtime and first MiB (changes when the file does)."""
  st = os.stat(path)
  h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
  with open(path, "rb") as f:
    h.update(f.read(1 << 20))
  return h.hexdigest()[:16]


def cached_features(
  cache_dir: str, key: dict, compute: Callable[[], np.ndarray], log: Callable[[str], None] = print
) -> np.ndarray:
  """Features [n, d] stored in `cache_dir` under `key` (a JSON-able dict), computed by `compute()` on a miss.

  The file is `cache_dir/inception_<hash of key>.npz` with the key beside the
  features, written atomically; an unwritable `cache_dir` only costs the
  recomputation next time (a warning is logged).
  """
  name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f"inception_{name}.npz")
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as z:
      if json.loads(str(z["key"])) == key:
        return z["features"]
  features = compute()
  tmp = f"{path}.tmp{os.getpid()}.npz"
  try:
    np.savez(tmp, features=features, key=json.dumps(key, sort_keys=True))
    os.replace(tmp, path)
    log(f"cached real-image Inception features in {path}")
  except OSError as e:
    log(f"warning: could not cache real-image Inception features in {cache_dir} ({e})")
  return features


def fid_undefined(num_real: int, num_fake: int, dim: int) -> str | None:
  """Why FID is not defined for sets of `num_real` and `num_fake` features of size `dim`, or None.

  A covariance of n samples has rank at most n - 1: below dim + 1 images it is
  singular, the matrix square root of the product is not a real matrix, and
  the number FID would print depends on the eps offset, not on the images.
  """
  if min(num_real, num_fake) > dim:
    return None
  return (
    f"FID not reported: it needs at least {dim + 1} images per set (more than the {dim} Inception features, "
    f"else the covariances are singular), here {num_real} real and {num_fake} generated; KID is unbiased at "
    "any size"
  )


def kid_undefined(num_real: int, num_fake: int) -> str | None:
  """Why KID is not defined for these set sizes (fewer than 2 images in one), or None."""
  if min(num_real, num_fake) >= 2:
    return None
  return f"KID not reported: it needs at least 2 images per set, here {num_real} real and {num_fake} generated"


def distribution_metrics(
  real: np.ndarray, fake: np.ndarray, kid_subsets: int = 100, kid_subset_size: int = 1000
) -> tuple[dict[str, float], list[str]]:
  """({'fid', 'kid', 'kid_std'} between real and generated features [n, d], [why each missing one is missing]).

  FID is left out below d + 1 images per set (`fid_undefined`) or when the
  covariances' root is not real (`frechet_distance`'s ValueError); KID below 2.
  """
  out, missing = {}, []
  why = kid_undefined(len(real), len(fake))
  if why is None:
    out["kid"], out["kid_std"] = kid(real, fake, kid_subsets, kid_subset_size)
  else:
    missing.append(why)
  why = fid_undefined(len(real), len(fake), real.shape[1])
  if why is None:
    try:
      out["fid"] = fid(real, fake)
    except ValueError as e:
      why = f"FID not reported: {e}"
  if why is not None:
    missing.append(why)
  return out, missing


def real_features(
  meta,
  extract: Callable,
  weights_path: str,
  *,
  split: str = "test",
  limit: int | None = None,
  batch_size: int = 64,
  log: Callable[[str], None] = print,
) -> np.ndarray:
  """Inception features [n, 2048] of (the first `limit` images of) a split, cached beside the dataset.

  Args:
    meta: the dataset's `dataset_meta.DatasetMeta`; the cache file is
      written into its directory.
    extract: `inception.feature_fn(...)` of the weights in `weights_path`.
    weights_path: the Inception weights file (its `weights_id` keys the cache).

  The cache key holds the weights id, a hash of `dataset_info.json`, the
  image size, split and image count, so another weights file, a re-made
  dataset, another resolution or `limit` computes (and caches) anew.
  """
  from keypatch_jax import input_pipeline

  count = meta.info.get("counts", {}).get(split)
  key = {
    "weights": weights_id(weights_path),
    "dataset": hashlib.sha256(json.dumps(meta.info, sort_keys=True, default=str).encode()).hexdigest()[:16],
    "image_size": meta.image_size,
    "split": split,
    "num_images": count if limit is None else min(limit, count or limit),
    "input": "8-bit, bilinear to 299 (pytorch-fid)",
  }

  def compute() -> np.ndarray:
    batches = input_pipeline.eval_batches(meta, split, batch_size=batch_size, limit=limit)
    return extract(b["image"] for b in batches)

  return cached_features(meta.data_dir, key, compute, log)
