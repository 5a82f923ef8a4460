"""The Flax FID Inception against pytorch-fid's InceptionV3 on the same random weights.

pytorch-fid (test-only) builds its network from torchvision and then loads
the FID weights from the web; here the same architecture is built without
that download (`_reference_network`), given random weights and random
BatchNorm statistics, saved with `torch.save` in the weights file's format
(torchvision Inception3 names, `fc.*` included), and read back through
`inception.load_weights`, which needs no PyTorch.
"""

from __future__ import annotations

import pickle

import jax
import numpy as np
import pytest

from keypatch_jax import inception, pth

torch = pytest.importorskip(
  "torch", reason="the PyTorch reference (torch, pytorch-fid of the `test` extra) is not installed"
)


def _reference_network():
  """pytorch-fid's `fid_inception_v3()` without its `load_state_dict_from_url`: random weights."""
  from pytorch_fid import inception as pfi

  net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
  net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = pfi.FIDInceptionE_1(1280)
  net.Mixed_7c = pfi.FIDInceptionE_2(2048)
  return net


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(pytorch-fid InceptionV3 with random weights, its weights saved as .pth, the state_dict)."""
  from pytorch_fid import inception as pfi

  torch.manual_seed(0)
  built = []

  def build():
    built.append(_reference_network())
    return built[-1]

  original = pfi.fid_inception_v3
  pfi.fid_inception_v3 = build  # InceptionV3 would otherwise download the FID weights
  try:
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
  finally:
    pfi.fid_inception_v3 = original
  # BatchNorm statistics that keep activations O(1) (one batch's, momentum 1), then randomised.
  norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for m in norms:
    m.momentum = 1.0
  model.train()
  with torch.no_grad():
    model(torch.rand(3, 3, 75, 75))
    g = torch.Generator().manual_seed(1)
    for m in norms:
      n = m.num_features
      m.weight.copy_(torch.rand(n, generator=g) + 0.5)
      m.bias.copy_(torch.rand(n, generator=g) - 0.5)
      m.running_mean.add_(0.1 * torch.randn(n, generator=g))
      m.running_var.mul_(torch.rand(n, generator=g) + 0.5)
  model.eval()
  state_dict = built[0].state_dict()
  path = tmp_path_factory.mktemp("inception") / inception.WEIGHTS_FILE
  torch.save(state_dict, path)
  return model, str(path), state_dict


def _reference_features(model, images: np.ndarray) -> np.ndarray:
  """pytorch-fid's pool3 features of NHWC images in [0, 1]."""
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))[0][:, :, 0, 0].numpy()


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
  """1e-4 relative, the tolerance scaled by the feature magnitude for entries near 0."""
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.slow
def test_features_match_pytorch_fid(reference):
  """pool3 features equal pytorch-fid's at several input sizes (2 images each)."""
  model, path, _ = reference
  variables = inception.load_weights(path)
  for size in (32, 64, 299):
    images = np.random.default_rng(size).random((2, size, size, 3), dtype=np.float32)
    ref = _reference_features(model, images)
    assert ref.std() > 1e-3 * np.abs(ref).max()  # the features vary: a wrong layer cannot hide
    if size == 32:  # the module resizing its input itself, as the reference does
      ours = jax.jit(inception.FIDInceptionV3().apply)(variables, images)
    else:  # the resize and the 299x299 network jitted apart, as feature_fn runs them
      ours = inception._apply(variables, inception.resize_bilinear(images), resize=False)
    _assert_close(np.asarray(ours), ref)


@pytest.mark.slow
def test_feature_fn_quantises_and_pads_batches(reference):
  """feature_fn on [-1, 1] images: 8-bit quantised, chunked with a padded last chunk, equal to the reference."""
  model, path, _ = reference
  extract = inception.feature_fn(inception.load_weights(path), batch_size=2)
  images = np.random.default_rng(3).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  ours = extract([images[:1], images[1:]])
  quantised = np.round((images + 1) * 127.5) / 255
  _assert_close(ours, _reference_features(model, quantised.astype(np.float32)))


def test_npz_weights_equal_pth_weights(reference, tmp_path):
  _, path, state_dict = reference
  npz = tmp_path / "inception.npz"
  np.savez(npz, **{k: v.numpy() for k, v in state_dict.items()})
  a, b = inception.load_weights(path), inception.load_weights(str(npz))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  conv = a["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  torch_conv = state_dict["Mixed_6b.branch7x7_2.conv.weight"].numpy()
  np.testing.assert_array_equal(conv, torch_conv.transpose(2, 3, 1, 0))  # OIHW -> HWIO, (1, 7) kernel
  np.testing.assert_array_equal(
    a["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"], state_dict["Mixed_7c.branch_pool.bn.running_var"]
  )
  back = inception.to_state_dict(a)  # the inverse: every network key, fc.* and num_batches_tracked left out
  assert set(back) == {k for k in state_dict if not k.startswith("fc.") and "num_batches_tracked" not in k}
  for k, v in back.items():
    np.testing.assert_array_equal(v, state_dict[k].numpy(), err_msg=k)


def test_wrong_or_missing_weights_are_one_line_errors(reference, tmp_path):
  _, _, state_dict = reference
  with pytest.raises(inception.WeightsError, match=r"--inception needs .*pt_inception-2015-12-05-6726825d\.pth.*https"):
    inception.load_weights(None)
  with pytest.raises(inception.WeightsError, match="no such file.*github.com/mseitzer/pytorch-fid"):
    inception.load_weights(str(tmp_path / "absent.pth"))
  partial = {k: v for k, v in state_dict.items() if not k.startswith("Mixed_7c.branch_pool")}
  torch.save(partial, tmp_path / "partial.pth")
  with pytest.raises(inception.WeightsError, match=r"partial\.pth has no 'Mixed_7c\.branch_pool\.(conv|bn)\."):
    inception.load_weights(str(tmp_path / "partial.pth"))
  (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(inception.WeightsError, match="junk.pth"):
    inception.load_weights(str(tmp_path / "junk.pth"))


@pytest.mark.parametrize("zipped", [True, False])
def test_pth_reader_reads_both_torch_save_formats(tmp_path, zipped):
  """zip (PyTorch >= 1.6) and legacy files: dtypes, shapes, strides, 0-d tensors, shared storages."""
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state = {
    "conv.weight": torch.randn(4, 3, 3, 3),
    "transposed": base.t(),  # non-contiguous view
    "slice": base[1:3, 2:],  # offset into a shared storage
    "half": torch.randn(5).half(),
    "double": torch.randn(2, 2, dtype=torch.float64),
    "long": torch.tensor([1, -2, 3]),
    "bool": torch.tensor([True, False]),
    "bn.num_batches_tracked": torch.tensor(7),
  }
  path = tmp_path / "w.pth"
  torch.save(state, path, _use_new_zipfile_serialization=zipped)
  out = pth.load_state_dict(str(path))
  assert set(out) == set(state)
  for k, v in state.items():
    assert out[k].dtype == v.numpy().dtype, k
    np.testing.assert_array_equal(out[k], v.numpy(), err_msg=k)


def test_pth_reader_runs_no_code_from_the_file(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))

  path = tmp_path / "evil.pth"
  with open(path, "wb") as f:
    pickle.dump({"w": Evil()}, f)
  with pytest.raises(pth.PthFormatError, match=r"evil\.pth: it pickles builtins\.print"):
    pth.load_state_dict(str(path))


@pytest.mark.parametrize("size", [16, 64, 299, 331])
def test_resize_matches_torch_interpolate(size):
  """Up- and down-sampling to 299 as `F.interpolate(bilinear, align_corners=False)` (no antialiasing)."""
  images = np.random.default_rng(size).random((2, size, size, 3), dtype=np.float32)
  ref = torch.nn.functional.interpolate(
    torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), size=(299, 299), mode="bilinear", align_corners=False
  )
  ours = np.asarray(inception.resize_bilinear(images))
  np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)
