"""FID and KID against the reference implementations on the same feature arrays.

References (test-only dependencies): pytorch-fid's `calculate_frechet_distance`
and torch-fidelity's `kid_features_to_metric`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.linalg

from keypatch_jax import fid

RTOL = 1e-5
# .ci/run's Python 3.12 quick loop installs no PyTorch (PyPI's torch there is a CUDA build of several GB);
# the Python 3.11 suite has the references and runs these tests.
NO_REFERENCE = "the PyTorch references (torch, pytorch-fid, torch-fidelity of the `test` extra) are not installed"


def _reference(module: str):
  return pytest.importorskip(module, reason=NO_REFERENCE)


def _features(seed: int, n: int, d: int, shift: float = 0.0) -> np.ndarray:
  """n samples of one correlated Gaussian in d dimensions (the seed draws the samples only), shifted."""
  mix = np.random.default_rng(1234).normal(size=(d, d)) / np.sqrt(d)
  return (np.random.default_rng(seed).normal(size=(n, d)) @ mix + shift).astype(np.float32)


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
  calculate_frechet_distance = _reference("pytorch_fid.fid_score").calculate_frechet_distance

  def stats(f):
    return np.mean(f, axis=0), np.cov(f, rowvar=False)

  return float(calculate_frechet_distance(*stats(a), *stats(b)))


@pytest.mark.parametrize(
  "n1, n2, d",
  [
    (300, 250, 16),  # well conditioned
    (20, 24, 64),  # fewer samples than dimensions: singular covariances, as 128 test images in 2048-d
  ],
)
def test_fid_matches_pytorch_fid(n1, n2, d):
  a, b = _features(0, n1, d), _features(1, n2, d, shift=0.3)
  ours = fid.fid(a, b)
  assert ours == pytest.approx(_reference_fid(a, b), rel=RTOL)
  assert ours > 0.5  # the shift is seen
  assert fid.fid(a, a) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(a, rowvar=False)))


def test_fid_eps_offset_when_the_root_is_not_finite(monkeypatch, capsys):
  """The non-finite branch: both implementations add eps*I to both covariances and agree."""
  a, b = _features(2, 12, 32), _features(3, 12, 32, shift=0.1)
  real_sqrtm = scipy.linalg.sqrtm
  calls = []

  def sqrtm(m, disp=True, **_):
    calls.append(m)
    out = real_sqrtm(m)
    if len(calls) % 2 == 1:  # the first call of each FID: the un-offset product
      out = np.full_like(out, np.nan)
    return out if disp else (out, 0.0)

  monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm)
  ours = fid.fid(a, b)
  reference = _reference_fid(a, b)
  assert len(calls) == 4
  np.testing.assert_allclose(calls[1], calls[3], rtol=1e-12)  # the same offset product
  assert not np.allclose(calls[0], calls[1])
  assert ours == pytest.approx(reference, rel=RTOL)
  assert "adding 1e-06" in capsys.readouterr().err


def test_fid_large_imaginary_part_raises_like_the_reference():
  calculate_frechet_distance = _reference("pytorch_fid.fid_score").calculate_frechet_distance

  mu = np.zeros(2)
  s1, s2 = np.eye(2), np.diag([-1.0, 1.0])  # not a covariance: the root of the product is imaginary
  with pytest.raises(ValueError, match="Imaginary component"):
    calculate_frechet_distance(mu, s1, mu, s2)
  with pytest.raises(ValueError, match="imaginary component"):
    fid.frechet_distance(mu, s1, mu, s2)


@pytest.mark.parametrize("subsets, size, seed", [(10, 40, 2020), (7, 50, 3)])
def test_kid_matches_torch_fidelity(subsets, size, seed):
  torch = _reference("torch")
  kid = _reference("torch_fidelity.metric_kid")

  a, b = _features(4, 60, 32), _features(5, 50, 32, shift=0.5)
  ref = kid.kid_features_to_metric(
    torch.from_numpy(a.astype(np.float64)),
    torch.from_numpy(b.astype(np.float64)),
    kid_subsets=subsets,
    kid_subset_size=size,
    rng_seed=seed,
    verbose=False,
  )
  mean, std = fid.kid(a, b, num_subsets=subsets, subset_size=size, seed=seed)
  assert mean == pytest.approx(ref[kid.KEY_METRIC_KID_MEAN], rel=RTOL)
  assert std == pytest.approx(ref[kid.KEY_METRIC_KID_STD], rel=RTOL)
  assert mean > 3 * std  # the shift is seen


def test_kid_subset_size_is_clipped_to_the_smaller_set():
  a, b = _features(6, 30, 8), _features(7, 20, 8)
  assert fid.kid(a, b, num_subsets=5, subset_size=1000) == fid.kid(a, b, num_subsets=5, subset_size=20)
  with pytest.raises(ValueError, match="at least 2"):
    fid.kid(a, b[:1])


def test_kid_is_unbiased_near_zero_for_one_distribution():
  """Same distribution: the mean over subsets straddles 0 (a biased estimator stays positive)."""
  a, b = _features(8, 400, 16), _features(9, 400, 16)
  mean, std = fid.kid(a, b, num_subsets=50, subset_size=50)
  shifted, _ = fid.kid(a, _features(9, 400, 16, shift=0.5), num_subsets=50, subset_size=50)
  assert abs(mean) < std
  assert shifted > 10 * std


def test_cached_features_computed_once_per_key(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return np.arange(6, dtype=np.float32).reshape(2, 3) + len(calls)

  key = {"weights": "abc", "image_size": 16}
  first = fid.cached_features(str(tmp_path), key, compute, log=lambda _: None)
  second = fid.cached_features(str(tmp_path), key, compute, log=lambda _: None)
  np.testing.assert_array_equal(first, second)
  assert len(calls) == 1
  other = fid.cached_features(str(tmp_path), {**key, "image_size": 32}, compute, log=lambda _: None)
  assert len(calls) == 2 and not np.array_equal(other, first)
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".npz")]) == 2


def test_cached_features_survive_an_unwritable_directory(tmp_path):
  logs = []
  missing = str(tmp_path / "no" / "such")
  out = fid.cached_features(missing, {"k": 1}, lambda: np.ones((2, 2)), log=logs.append)
  np.testing.assert_array_equal(out, np.ones((2, 2)))
  assert "could not cache" in logs[0]


def test_weights_id_changes_with_the_file(tmp_path):
  path = tmp_path / "w.pth"
  path.write_bytes(b"a" * 100)
  first = fid.weights_id(str(path))
  path.write_bytes(b"b" * 100)
  os.utime(path, ns=(1, 1))
  assert fid.weights_id(str(path)) != first


def test_distribution_metrics_leave_out_fid_below_the_feature_dimension():
  """n <= d: the covariances are singular and FID is left out with the count it needs; KID stays."""
  a, b = _features(0, 20, 32), _features(1, 20, 32, shift=0.1)
  scores, missing = fid.distribution_metrics(a, b, kid_subsets=5)
  assert set(scores) == {"kid", "kid_std"} and len(missing) == 1 and "at least 33 images" in missing[0]
  scores, missing = fid.distribution_metrics(_features(0, 40, 32), _features(1, 40, 32), kid_subsets=5)
  assert set(scores) == {"fid", "kid", "kid_std"} and not missing
  scores, missing = fid.distribution_metrics(a[:1], b, kid_subsets=5)
  assert scores == {} and [m.split(":")[0] for m in missing] == ["KID not reported", "FID not reported"]
