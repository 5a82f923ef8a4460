"""Tests of keypatch_jax.models (docs/design.md §3): invariance, shapes, parameter counts,
the conv forms inside the networks, compile counts and the discriminators."""

from __future__ import annotations

import functools
import itertools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import timeout
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import default
from keypatch_jax import conv_forms, models

# A small generator that keeps compile and run times low on CPU.
SMALL = dict(image_size=16, conv_dim=8, embed_dim=16, z_dim=8)
BATCH = 2


def _inputs(key: jax.Array, batch: int, n: int, size: int, z_dim: int):
  """Random patches [B, N, S, S, 3] in [-1, 1] and z [B, z_dim] in [-1, 1]."""
  kp, kz = jax.random.split(key)
  patches = jax.random.uniform(kp, (batch, n, size, size, 3), minval=-1.0, maxval=1.0)
  z = jax.random.uniform(kz, (batch, z_dim), minval=-1.0, maxval=1.0)
  return patches, z


def _init(module: nn.Module, *args, **kwargs):
  """Jitted `module.init` (eager init dispatches and compiles op by op: slow)."""
  return jax.jit(functools.partial(module.init, **kwargs))(jax.random.key(0), *args)


def _apply(module: nn.Module, variables, *args, train: bool):
  """Jitted forward; in train mode returns (outputs, updated batch_stats)."""
  mutable = ["batch_stats"] if train else False
  return jax.jit(functools.partial(module.apply, train=train, mutable=mutable))(variables, *args)


@functools.cache
def _small_generator(n: int):
  """(variables, forward), built and compiled once per N.

  `forward(permuted, z)` runs eval and train mode on patches with a leading
  permutation axis [P, B, N, S, S, 3], all P orders in one compiled call, and
  returns ((mask, image), ((mask, image), batch_stats)) stacked over P.
  """
  gen = models.Generator(**SMALL)
  patches, z = _inputs(jax.random.key(n), BATCH, n, SMALL["image_size"], SMALL["z_dim"])

  @jax.jit
  def build(patches, z):
    variables = gen.init(jax.random.key(0), patches, z, train=False)
    # Non-trivial running averages, so eval mode does not just see mean 0 / var 1.
    _, updated = gen.apply(variables, patches * 0.5 + 0.2, z, train=True, mutable=["batch_stats"])
    return {"params": variables["params"], **updated}

  variables = build(patches, z)

  def both_modes(p, z):
    eval_out = gen.apply(variables, p, z, train=False)
    train_out, state = gen.apply(variables, p, z, train=True, mutable=["batch_stats"])
    return eval_out, (train_out, state["batch_stats"])

  return variables, jax.jit(jax.vmap(both_modes, in_axes=(0, None)))


def _assert_same_over_axis0(tree, atol: float = 1e-5):
  """Every leaf's slices along axis 0 equal slice 0."""
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    np.testing.assert_allclose(leaf, np.broadcast_to(leaf[:1], leaf.shape), atol=atol, rtol=0)


# ---------------------------------------------------------------------------
# Permutation invariance (the canonical test; docs/design.md §3.2).


@pytest.mark.parametrize("n", [1, 2, pytest.param(3, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow)])
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 3.0))
def test_generator_is_invariant_to_patch_order(n: int, seed: int, scale: float):
  """Every permutation of the N patches gives the same mask, image and BN stats."""
  _, forward = _small_generator(n)
  patches, z = _inputs(jax.random.key(seed), BATCH, n, SMALL["image_size"], SMALL["z_dim"])
  patches = np.asarray(patches) * scale
  perms = list(itertools.permutations(range(n)))
  permuted = np.stack([patches[:, list(p)] for p in perms])  # [N!, B, N, S, S, 3]

  (mask, image), train_out = forward(permuted, z)
  assert mask.shape == (len(perms), BATCH, SMALL["image_size"], SMALL["image_size"], 1)
  _assert_same_over_axis0((mask, image))  # eval mode
  _assert_same_over_axis0(train_out)  # train mode: mask, image, new running averages


def test_generator_output_depends_on_patches():
  """Guards the invariance test: replacing one patch does change the outputs."""
  _, forward = _small_generator(2)
  patches, z = _inputs(jax.random.key(7), BATCH, 2, SMALL["image_size"], SMALL["z_dim"])
  other = patches.at[:, 1].set(-patches[:, 1])
  eval_out, (train_out, _) = forward(jnp.stack([patches, other]), z)
  for leaf in (*eval_out, *train_out):
    assert float(jnp.abs(leaf[0] - leaf[1]).max()) > 1e-3


# ---------------------------------------------------------------------------
# Shapes and value ranges.


def _check_ranges(mask: jax.Array, image: jax.Array):
  assert mask.dtype == jnp.float32 and image.dtype == jnp.float32
  assert np.all(np.isfinite(mask)) and np.all(np.isfinite(image))
  assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
  assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0


@pytest.mark.slow
def test_full_generator_at_64_shapes_ranges_and_spec_feature_maps():
  """A real forward at S=64, batch 2, full widths; the feature-map shapes of docs/design.md §3.4."""
  gen = models.Generator(image_size=64)
  patches, z = _inputs(jax.random.key(1), 2, 3, 64, 128)

  @jax.jit
  def init_and_run(patches, z):  # one compilation for init and both modes
    variables = gen.init(jax.random.key(0), patches, z, train=False)
    eval_out = gen.apply(variables, patches, z, train=False)
    train_out, _ = gen.apply(variables, patches, z, train=True, mutable=["batch_stats"])
    return variables, eval_out, train_out

  variables, eval_out, train_out = init_and_run(patches, z)
  for mask, image in (eval_out, train_out):
    assert mask.shape == (2, 64, 64, 1) and image.shape == (2, 64, 64, 3)
    _check_ranges(mask, image)

  def features(module: models.Generator, patches, z):
    feats = module.encode(patches, False)
    emb, skips = feats[-1], feats[-2::-1]
    _, mask_feats = module.mask_decoder(emb, skips, False)
    zz = jnp.broadcast_to(z[:, None, None, :], emb.shape[:3] + z.shape[-1:])
    _, image_feats = module.image_decoder(jnp.concatenate([emb, zz], -1), mask_feats, False)
    return feats, mask_feats, image_feats

  shapes = jax.eval_shape(functools.partial(gen.apply, method=features), variables, patches, z)
  hwc = [[tuple(x.shape[1:]) for x in group] for group in shapes]
  assert hwc[0] == [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512), (1, 1, 128)]
  assert hwc[1] == [(4, 4, 1024), (8, 8, 512), (16, 16, 256), (32, 32, 128)]
  assert hwc[2] == [(4, 4, 1536), (8, 8, 768), (16, 16, 384), (32, 32, 192)]


@pytest.mark.parametrize("size", [64, 128, 256])
def test_output_shapes_abstract(size: int):
  """Abstract (eval_shape) train and eval forwards at every supported size."""
  gen, disc = models.Generator(image_size=size), models.KindsDiscriminator(image_size=size)
  patches = jax.ShapeDtypeStruct((2, 3, size, size, 3), jnp.float32)
  z = jax.ShapeDtypeStruct((2, 128), jnp.float32)
  kinds = jax.ShapeDtypeStruct((6, 2, size, size, 3), jnp.float32)
  gv = jax.eval_shape(functools.partial(gen.init, train=False), jax.random.key(0), patches, z)
  dv = jax.eval_shape(functools.partial(disc.init, train=False), jax.random.key(0), kinds)
  mask, image = jax.eval_shape(functools.partial(gen.apply, train=False), gv, patches, z)
  assert (mask.shape, image.shape) == ((2, size, size, 1), (2, size, size, 3))
  (mask, image), _ = jax.eval_shape(functools.partial(gen.apply, train=True, mutable=["batch_stats"]), gv, patches, z)
  assert (mask.shape, image.shape) == ((2, size, size, 1), (2, size, size, 3))
  logits = jax.eval_shape(functools.partial(disc.apply, train=False), dv, kinds)
  assert logits.shape == (6, 2) and logits.dtype == jnp.float32


# ---------------------------------------------------------------------------
# Parameter counts (docs/design.md §3.4).


def conv_params(k: int, cin: int, cout: int) -> int:
  """A k x k (transposed) convolution with bias: k*k*cin*cout + cout."""
  return k * k * cin * cout + cout


def bn_params(c: int) -> int:
  """BatchNorm scale and offset: 2*c."""
  return 2 * c


def expected_counts(size: int, conv_dim: int = 64, embed: int = 128, z: int = 128) -> dict:
  """Hand-derived parameter counts of the official code's unet (docs/design.md §3.4) at resolution `size`."""
  levels = int(np.log2(size)) - 2
  width = [min(conv_dim * 2 ** min(3, level), 512) for level in range(levels)]

  def conv_stack(last_out: int) -> int:
    # Conv 5x5 s2 per level (BN on levels >= 1), then a 4x4 VALID conv.
    total, cin = 0, 3
    for level, c in enumerate(width):
      total += conv_params(5, cin, c) + (bn_params(c) if level > 0 else 0)
      cin = c
    return total + conv_params(4, width[-1], last_out)

  def decoder(cin: int, skip_mult: int, out: int) -> int:
    # 4x4 VALID up to width[-1], then 5x5 s2 per level; each BN; concat skips
    # carrying `skip_mult` * width channels; last 5x5 s2 to `out` channels.
    total = 0
    for i, c in enumerate(reversed(width)):
      total += conv_params(4 if i == 0 else 5, cin, c) + bn_params(c)
      cin = c + skip_mult * c
    return total + conv_params(5, cin, out)

  return {
    "encoder": conv_stack(embed),
    "mask_decoder": decoder(embed, 1, 1),  # skips: the encoder maps
    "image_decoder": decoder(embed + z, 2, 3),  # skips: mask-decoder features (own + encoder)
    "discriminator": conv_stack(1),
  }


OFFICIAL = {
  64: dict(encoder=5_357_056, mask_decoder=9_656_257, image_decoder=15_016_835, discriminator=4_316_545),
  128: dict(encoder=11_912_192, mask_decoder=22_764_993, image_decoder=34_679_171, discriminator=10_871_681),
  # Not published; the figures these formulas give, recorded as a regression check.
  256: dict(encoder=18_467_328, mask_decoder=35_873_729, image_decoder=54_341_507, discriminator=17_426_817),
}


def _abstract_counts(size: int) -> dict:
  gen, disc = models.Generator(image_size=size), models.KindsDiscriminator(image_size=size)
  patches = jax.ShapeDtypeStruct((1, 3, size, size, 3), jnp.float32)
  z = jax.ShapeDtypeStruct((1, 128), jnp.float32)
  kinds = jax.ShapeDtypeStruct((2, 1, size, size, 3), jnp.float32)
  gp = jax.eval_shape(functools.partial(gen.init, train=False), jax.random.key(0), patches, z)
  dp = jax.eval_shape(functools.partial(disc.init, train=False), jax.random.key(0), kinds)
  gp = gp["params"]
  return {
    "encoder": models.count_params(gp["encoder"]),
    "mask_decoder": models.count_params(gp["mask_decoder"]),
    "image_decoder": models.count_params(gp["image_decoder"]),
    "discriminator": models.count_params(dp["params"]),
  }


@pytest.mark.parametrize("size", [64, 128, 256])
def test_parameter_counts(size: int):
  """Model counts == hand-derived formula == the official figures."""
  counts = _abstract_counts(size)
  assert counts == expected_counts(size)
  assert counts == OFFICIAL[size]


# ---------------------------------------------------------------------------
# The conv forms inside the networks (each form alone: tests/test_conv_forms.py).


@pytest.mark.slow
def test_generator_subpixel_and_transpose_agree():
  """The whole generator gives the same outputs with either UpConv form."""
  patches, z = _inputs(jax.random.key(3), BATCH, 3, SMALL["image_size"], SMALL["z_dim"])
  native, subpixel, matmul = (models.Generator(**SMALL, upsample=f) for f in conv_forms.UPSAMPLE)

  @jax.jit
  def run(patches, z):  # one compilation for init and all four forwards
    variables = native.init(jax.random.key(0), patches, z, train=False)
    return [
      (
        gen.apply(variables, patches, z, train=False),
        gen.apply(variables, patches, z, train=True, mutable=["batch_stats"]),
      )
      for gen in (native, subpixel, matmul)
    ]

  outs = run(patches, z)
  for other in outs[1:]:
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(other), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_models_polyphase_and_native_agree():
  """Generator and discriminator give the same outputs with every DownConv form."""
  patches, z = _inputs(jax.random.key(5), BATCH, 3, SMALL["image_size"], SMALL["z_dim"])
  gens = [models.Generator(**SMALL, downsample=f) for f in conv_forms.DOWNSAMPLE]
  discs = [models.KindsDiscriminator(image_size=16, conv_dim=8, downsample=f) for f in conv_forms.DOWNSAMPLE]
  images = patches[:, :2].transpose(1, 0, 2, 3, 4)  # [K=2, B, S, S, 3]

  @jax.jit
  def run(patches, z, images):
    gv = gens[0].init(jax.random.key(0), patches, z, train=False)
    dv = discs[0].init(jax.random.key(1), images, train=False)
    return [
      (g.apply(gv, patches, z, train=True, mutable=["batch_stats"]), d.apply(dv, images, train=False))
      for g, d in zip(gens, discs, strict=True)
    ]

  outs = run(patches, z, images)
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Compilation.


@pytest.mark.slow
def test_jitted_forward_compiles_once():
  """Three calls with different values and a fixed shape trace/compile once."""
  gen = models.Generator(**SMALL)
  patches, z = _inputs(jax.random.key(0), BATCH, 3, SMALL["image_size"], SMALL["z_dim"])
  variables = _init(gen, patches, z, train=False)
  traces = []

  def forward(variables, patches, z):
    traces.append(1)  # Python side effect: runs once per trace
    return gen.apply(variables, patches, z, train=True, mutable=["batch_stats"])

  jitted = jax.jit(forward)
  for i in range(3):
    patches, z = _inputs(jax.random.key(i + 10), BATCH, 3, SMALL["image_size"], SMALL["z_dim"])
    (mask, _), variables_update = jitted(variables, patches, z)
    variables = {"params": variables["params"], **variables_update}
  assert len(traces) == 1
  assert jitted._cache_size() == 1


# ---------------------------------------------------------------------------
# Discriminators.


@pytest.mark.slow
def test_discriminator_shapes():
  disc = models.Discriminator(image_size=32, conv_dim=8)
  kinds = models.KindsDiscriminator(image_size=32, conv_dim=8)
  stacked = jax.random.normal(jax.random.key(0), (4, 3, 32, 32, 3))

  @jax.jit
  def run(stacked):
    dv = disc.init(jax.random.key(1), stacked[0], train=False)
    kv = kinds.init(jax.random.key(1), stacked, train=False)
    return (
      disc.apply(dv, stacked[0], train=False),
      kinds.apply(kv, stacked, train=False),
      kinds.apply(kv, stacked, train=True, mutable=["batch_stats"]),
    )

  plain_logits, kinds_logits, (train_logits, state) = run(stacked)
  assert plain_logits.shape == (3,) and plain_logits.dtype == jnp.float32
  assert kinds_logits.shape == train_logits.shape == (4, 3)
  assert kinds_logits.dtype == train_logits.dtype == jnp.float32
  # One set of running averages per kind.
  assert all(leaf.shape[0] == 4 for leaf in jax.tree.leaves(state["batch_stats"]))


@pytest.mark.slow
def test_kinds_discriminator_has_per_kind_batch_statistics():
  """Train mode: kind k's logits == a plain Discriminator on kind k alone."""
  size, k, b = 32, 3, 4
  kinds = models.KindsDiscriminator(image_size=size, conv_dim=8)
  plain = models.Discriminator(image_size=size, conv_dim=8)
  # Kinds with very different statistics, so pooling them would show.
  offsets = jnp.arange(k, dtype=jnp.float32)[:, None, None, None, None]
  images = jax.random.normal(jax.random.key(0), (k, b, size, size, 3)) * (1 + offsets) + offsets
  train = functools.partial(nn.Module.apply, train=True, mutable=["batch_stats"])

  @jax.jit
  def run(images):  # one compilation for everything below
    variables = kinds.init(jax.random.key(1), images, train=False)
    # Distinct running averages per kind, so slicing the right one matters.
    stats = jax.tree.map(
      lambda s: s + jnp.arange(k, dtype=s.dtype).reshape((k,) + (1,) * (s.ndim - 1)),
      variables["batch_stats"]["disc"],
    )
    params = variables["params"]["disc"]
    together = train(kinds, {"params": variables["params"], "batch_stats": {"disc": stats}}, images)
    per_kind = [
      train(plain, {"params": params, "batch_stats": jax.tree.map(lambda s, i=i: s[i], stats)}, x)
      for i, x in enumerate(images)
    ]
    first = jax.tree.map(lambda s: s[0], stats)
    pooled = train(plain, {"params": params, "batch_stats": first}, images.reshape(k * b, *images.shape[2:]))
    return together, per_kind, pooled[0].reshape(k, b)

  (logits, state), per_kind, pooled = run(images)
  for i, (alone, new) in enumerate(per_kind):
    np.testing.assert_allclose(logits[i], alone, rtol=1e-5, atol=1e-5)
    for a, c in zip(
      jax.tree.leaves(jax.tree.map(lambda s, i=i: s[i], state["batch_stats"]["disc"])),
      jax.tree.leaves(new["batch_stats"]),
      strict=True,
    ):
      np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
  # Pooling all kinds into one batch is a different model: the logits differ.
  assert float(jnp.abs(pooled - logits).max()) > 1e-3


# ---------------------------------------------------------------------------
# Config, imports, ablation, dtypes.


def test_build_models_from_default_config():
  """build_models(default config) gives the generator and discriminator of the official sizes."""
  config = default.get_config()
  gen, disc = models.build_models(config)
  assert isinstance(gen, models.Generator) and isinstance(disc, models.KindsDiscriminator)
  assert gen.image_size == disc.image_size == config.image_size == 64
  assert gen.upsample == disc.downsample == "auto"
  s = config.image_size
  patches = jax.ShapeDtypeStruct((2, config.num_patches, s, s, 3), jnp.float32)
  z = jax.ShapeDtypeStruct((2, config.model.z_dim), jnp.float32)
  kinds = jax.ShapeDtypeStruct((1 + len(config.loss.fakes), 2, s, s, 3), jnp.float32)
  gv = jax.eval_shape(functools.partial(gen.init, train=False), jax.random.key(0), patches, z)
  dv = jax.eval_shape(functools.partial(disc.init, train=False), jax.random.key(0), kinds)
  official = OFFICIAL[64]
  assert models.count_params(gv["params"]) == (
    official["encoder"] + official["mask_decoder"] + official["image_decoder"]
  )
  assert models.count_params(dv["params"]) == official["discriminator"]


@pytest.mark.parametrize("backend, down, up", [("cpu", "im2col", "subpixel_matmul"), ("gpu", "native", "transpose")])
def test_build_models_resolves_auto_once_per_layer(monkeypatch, backend, down, up):
  """ "auto" becomes one concrete form per layer when the models are built; tracing reads no backend."""
  config = default.get_config()
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  gen, disc = models.build_models(config, train=True, batch_size=8)
  levels = models.num_levels(config.image_size)
  assert gen.forms == disc.forms
  assert gen.forms.down == (down,) * levels
  assert gen.forms.mask_up == gen.forms.image_up == (up,) * levels

  def no_backend():
    raise AssertionError("jax.default_backend() read while tracing")

  monkeypatch.setattr(jax, "default_backend", no_backend)
  s = config.image_size
  patches = jax.ShapeDtypeStruct((8, config.num_patches, s, s, 3), jnp.float32)
  z = jax.ShapeDtypeStruct((8, config.model.z_dim), jnp.float32)
  variables = jax.eval_shape(functools.partial(gen.init, train=False), jax.random.key(0), patches, z)
  jax.eval_shape(functools.partial(gen.apply, train=True, mutable=["batch_stats"]), variables, patches, z)


def test_forward_only_models_pick_forward_forms(monkeypatch):
  """For sampling (train=False) CPU "auto" uses im2col only on the 3-channel first level."""
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  gen, _ = models.build_models(default.get_config(), train=False)
  assert gen.forms.down == ("im2col", "polyphase", "polyphase", "polyphase")


@pytest.mark.slow
def test_models_module_imports_in_a_fresh_interpreter():
  result = subprocess.run(
    [sys.executable, "-c", "from keypatch_jax import models; print(models.Generator.__name__)"],
    capture_output=True,
    text=True,
    timeout=timeout(120),
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "Generator"


@pytest.mark.slow
def test_generator_without_mask_network():
  """Ablation: mask is None, the image has the right shape and range."""
  gen = models.Generator(**SMALL, use_mask_net=False)
  patches, z = _inputs(jax.random.key(4), BATCH, 3, SMALL["image_size"], SMALL["z_dim"])
  variables = _init(gen, patches, z, train=False)
  assert "mask_decoder" not in variables["params"]
  mask, image = _apply(gen, variables, patches, z, train=False)
  assert mask is None
  assert image.shape == (BATCH, SMALL["image_size"], SMALL["image_size"], 3)
  assert float(jnp.abs(image).max()) <= 1.0


@pytest.mark.slow
def test_bfloat16_forward_is_finite_with_float32_outputs():
  config = default.get_config()
  config.image_size = SMALL["image_size"]
  config.model.conv_dim, config.model.embed_dim = SMALL["conv_dim"], SMALL["embed_dim"]
  config.model.z_dim = SMALL["z_dim"]
  config.model.dtype = "bfloat16"
  gen, disc = models.build_models(config)
  assert gen.dtype == jnp.bfloat16
  patches, z = _inputs(jax.random.key(5), BATCH, 3, SMALL["image_size"], SMALL["z_dim"])
  gv = _init(gen, patches, z, train=False)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(gv["params"]))
  for train in (False, True):
    out = _apply(gen, gv, patches, z, train=train)
    mask, image = out[0] if train else out
    _check_ranges(mask, image)
  kinds = jnp.stack([image, image * 0.5])
  dv = _init(disc, kinds, train=False)
  logits, _ = _apply(disc, dv, kinds, train=True)
  assert logits.dtype == jnp.float32 and logits.shape == (2, BATCH)
  assert np.all(np.isfinite(logits))
