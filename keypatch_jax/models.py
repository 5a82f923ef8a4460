"""KeyPatchGAN networks in Flax linen (paper §3 and Fig. 2; the official code's "unet"; docs/design.md §3).

Shapes use B = batch, N = number of patches, S = image size (64, 128, 256),
L = log2(S) - 2 encoder levels. Layout is NHWC; images are in [-1, 1].

Generator:   patches [B, N, S, S, 3], z [B, z_dim] -> mask [B, S, S, 1] in
             [0, 1], image [B, S, S, 3] in [-1, 1].
Discriminator: images [B, S, S, 3] -> logits [B].

The part encoder is one `PartEncoder` lifted with `nn.vmap` over the patch
axis (weights shared), and every level is summed over the patches, which makes
the generator invariant to the order of the patches. Its BatchNorm pools the
statistics over the batch and all N patches through the vmap's axis name
(docs/design.md §9, item 1: the one deliberate difference from the official
code, which keeps per-slot batch statistics and so loses order invariance in
eval mode).

The stride-2 layers (`conv_forms.DownConv` / `UpConv`) hold the parameters of
`nn.Conv` / `nn.ConvTranspose`; `build_models` picks, once, the form each of
them is computed in (`ConvForms`).

Initialisation: Flax defaults (LeCun-normal kernels, zero biases). The
official code uses PyTorch's defaults; neither uses the DCGAN N(0, 0.02) init.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from keypatch_jax.conv_forms import ConvForms, DownConv, UpConv, plan_forms

Dtype = Any
PATCH_AXIS = "patches"
LEAK = 0.2


def sample_z(key: jax.Array, z_dim: int, batch: int | None = None) -> jax.Array:
  """The generator's noise z ~ U(-1, 1) (docs/design.md §3.2): [z_dim], or [batch, z_dim]."""
  shape = (z_dim,) if batch is None else (batch, z_dim)
  return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)


def num_levels(image_size: int) -> int:
  """L = log2(S) - 2: the number of stride-2 levels (64 -> 4, 128 -> 5, 256 -> 6)."""
  levels = int(np.log2(image_size)) - 2
  if image_size < 16 or 2 ** (levels + 2) != image_size:
    raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
  return levels


def level_width(level: int, conv_dim: int) -> int:
  """Channels at encoder level `level` (0-based): conv_dim * 2**min(3, l), at most 512."""
  return min(conv_dim * 2 ** min(3, level), 512)


def _batch_norm(train: bool, axis_name: Any, dtype: Dtype, param_dtype: Dtype):
  """The networks' BatchNorm (PyTorch's momentum 0.1 and eps 1e-5), as a partial taking `name`."""
  return functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=axis_name,
    dtype=dtype,
    param_dtype=param_dtype,
  )


class PartEncoder(nn.Module):
  """Encodes one patch (docs/design.md §3.2). Shared by all N patches via `nn.vmap`.

  x [B, S, S, 3] -> L + 1 maps: level l is [B, S / 2**(l+1), same, width(l)]
  for l < L, and the embedding [B, 1, 1, embed_dim].
  """

  image_size: int
  conv_dim: int = 64
  embed_dim: int = 128
  bn_axis_name: Any = None
  downsample: Sequence[str] = ()  # one conv_forms.DOWNSAMPLE form per level
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
    conv = functools.partial(DownConv, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)
    feats = []
    for level in range(num_levels(self.image_size)):
      x = conv(level_width(level, self.conv_dim), self.downsample[level], name=f"conv{level}")(x)
      if level > 0:
        x = norm(name=f"bn{level}")(x)
      x = nn.leaky_relu(x, LEAK)
      feats.append(x)
    x = nn.Conv(self.embed_dim, (4, 4), padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype, name="embed")(
      x
    )
    feats.append(nn.leaky_relu(x, LEAK))
    return feats


class UNetDecoder(nn.Module):
  """U-net decoder from the 1x1 embedding up to S x S (docs/design.md §3.2).

  Level order is coarse to fine: a 4x4 VALID transposed conv to 4x4, then one
  `UpConv` per level, each followed by BatchNorm + ReLU and a concat of
  `skips[i]` ([decoder, skip] channel order); the last `UpConv` gives
  `out_features` channels without normalisation.

  Args of __call__:
    x: [B, 1, 1, C] embedding (with z concatenated for the image decoder).
    skips: L maps, coarse to fine: [B, 4, 4, *], [B, 8, 8, *], ...,
      [B, S/2, S/2, *].

  Returns:
    (output [B, S, S, out_features] before the final activation,
     the L concatenated features, coarse to fine).
  """

  image_size: int
  out_features: int
  conv_dim: int = 64
  upsample: Sequence[str] = ()  # one conv_forms.UPSAMPLE form per UpConv, coarse to fine
  bn_axis_name: Any = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skips: Sequence[jax.Array], train: bool):
    levels = num_levels(self.image_size)
    if len(skips) != levels:
      raise ValueError(f"expected {levels} skip maps, got {len(skips)}")
    norm = _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)

    def up(features: int, i: int) -> UpConv:
      return UpConv(
        features, upsample=self.upsample[i - 1], dtype=self.dtype, param_dtype=self.param_dtype, name=f"up{i}"
      )

    width = level_width(levels - 1, self.conv_dim)
    x = nn.ConvTranspose(width, (4, 4), padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype, name="up0")(x)
    feats = []
    for i, skip in enumerate(skips):
      if i > 0:
        x = up(level_width(levels - 1 - i, self.conv_dim), i)(x)
      x = nn.relu(norm(name=f"bn{i}")(x))
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      feats.append(x)
    out = up(self.out_features, levels)(x)
    return out, feats


class Generator(nn.Module):
  """Mask prediction + doubled U-net image generation from N unordered patches.

  patches [B, N, S, S, 3] in [-1, 1], z [B, z_dim] ->
    (mask [B, S, S, 1] in [0, 1], image [B, S, S, 3] in [-1, 1]).

  Any N >= 1 and S in {64, 128, 256, ...} work with the same code. With
  `use_mask_net=False` (ablation "no mask network") the mask decoder is absent,
  the image decoder sees only the encoder skips, and `mask` is None.
  """

  image_size: int = 64
  conv_dim: int = 64
  embed_dim: int = 128
  z_dim: int = 128
  upsample: str = "transpose"  # config.model.upsample: a conv_forms.UPSAMPLE form, or "auto" with `forms`
  downsample: str = "native"  # config.model.downsample: a conv_forms.DOWNSAMPLE form, or "auto" with `forms`
  forms: ConvForms | None = None  # per-layer forms (build_models); None: the settings above for every layer
  use_mask_net: bool = True
  bn_axis_name: str | None = None  # device axis for synchronised BatchNorm
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    forms = self.forms or ConvForms.uniform(self.upsample, self.downsample, num_levels(self.image_size))
    bn_axes = (PATCH_AXIS,) if self.bn_axis_name is None else (PATCH_AXIS, self.bn_axis_name)
    encoders = nn.vmap(
      PartEncoder,
      variable_axes={"params": None, "batch_stats": None},
      split_rngs={"params": False},
      in_axes=(1, None),
      out_axes=1,
      axis_name=PATCH_AXIS,
    )
    self.encoder = encoders(
      self.image_size, self.conv_dim, self.embed_dim, bn_axes, forms.down, self.dtype, self.param_dtype
    )
    decoder = functools.partial(
      UNetDecoder,
      self.image_size,
      conv_dim=self.conv_dim,
      bn_axis_name=self.bn_axis_name,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    if self.use_mask_net:
      self.mask_decoder = decoder(out_features=1, upsample=forms.mask_up)
    self.image_decoder = decoder(out_features=3, upsample=forms.image_up)

  def encode(self, patches: jax.Array, train: bool) -> list[jax.Array]:
    """patches [B, N, S, S, 3] -> L + 1 maps summed over the N patches."""
    if patches.ndim != 5:
      raise ValueError(f"patches must be [B, N, S, S, 3], got shape {patches.shape}")
    return [f.sum(axis=1) for f in self.encoder(patches, train)]

  def __call__(self, patches: jax.Array, z: jax.Array, *, train: bool):
    feats = self.encode(patches, train)
    embedding, skips = feats[-1], feats[-2::-1]  # skips coarse to fine
    mask = None
    if self.use_mask_net:
      mask_logits, skips = self.mask_decoder(embedding, skips, train)
      mask = nn.sigmoid(mask_logits.astype(jnp.float32))
    z = z.astype(embedding.dtype)[:, None, None, :]
    image, _ = self.image_decoder(jnp.concatenate([embedding, z], axis=-1), skips, train)
    return mask, jnp.tanh(image.astype(jnp.float32))


class Discriminator(nn.Module):
  """DCGAN discriminator (docs/design.md §3.2): images [B, S, S, 3] -> logits [B]."""

  image_size: int = 64
  conv_dim: int = 64
  bn_axis_name: str | None = None
  downsample: str = "native"  # config.model.downsample, as in Generator
  forms: ConvForms | None = None  # per-layer forms (only `down` is read), as in Generator
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    forms = self.forms or ConvForms.uniform("transpose", self.downsample, num_levels(self.image_size))
    conv = functools.partial(DownConv, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    for level in range(num_levels(self.image_size)):
      x = conv(level_width(level, self.conv_dim), forms.down[level], name=f"conv{level}")(x)
      if level > 0:
        x = _batch_norm(train, self.bn_axis_name, self.dtype, self.param_dtype)(name=f"bn{level}")(x)
      x = nn.leaky_relu(x, LEAK)
    x = nn.Conv(1, (4, 4), padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype, name="logit")(x)
    return x.reshape(x.shape[0]).astype(jnp.float32)


class KindsDiscriminator(nn.Module):
  """The discriminator applied to K kinds of images (real, G, composites) at once.

  images [K, B, S, S, 3] -> logits [K, B]. One `Discriminator` lifted with
  `nn.vmap` over the kinds: parameters shared, BatchNorm statistics per kind
  (`batch_stats` mapped over axis 0), which is what the official code does by
  calling D once per kind, computed as one batched call (docs/design.md §9, item 2).
  """

  image_size: int = 64
  conv_dim: int = 64
  bn_axis_name: str | None = None
  downsample: str = "native"
  forms: ConvForms | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    vmapped = nn.vmap(
      _PositionalDiscriminator,
      variable_axes={"params": None, "batch_stats": 0},
      split_rngs={"params": False},
      in_axes=(0, None),
      out_axes=0,
    )
    disc = vmapped(
      self.image_size,
      self.conv_dim,
      self.bn_axis_name,
      self.downsample,
      self.forms,
      self.dtype,
      self.param_dtype,
      name="disc",
    )
    return disc(images, train)


class _PositionalDiscriminator(Discriminator):
  """`Discriminator` with a positional `train` flag (`nn.vmap` drops keywords)."""

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:  # type: ignore[override]
    return super().__call__(x, train=train)


def build_models(
  config, *, axis_name: str | None = None, train: bool = False, batch_size: int | None = None
) -> tuple[Generator, KindsDiscriminator]:
  """Builds (Generator, KindsDiscriminator) from a config; the one place model settings are read.

  Reads `config.image_size` and `config.model.{conv_dim, embed_dim, z_dim,
  upsample, downsample, dtype, param_dtype, sync_batchnorm, use_mask_net}`
  (their defaults and comments: configs/default.py). Resolves "auto" conv
  forms to one form per layer here, once (`conv_forms.plan_forms`).

  Args:
    config: the run's config.
    axis_name: the device axis of the surrounding `pmap`; BatchNorm
      statistics are averaged over it when `config.model.sync_batchnorm` is set.
    train: whether the networks' gradients will be taken (the train step);
      False for initialisation, sampling and evaluation.
    batch_size: the images one device's call sees (default `config.batch_size`).

  Raises:
    ValueError: an unknown conv form or image size.
  """
  m = config.model
  dtype = jnp.dtype(m.dtype)
  forms = plan_forms(
    m.upsample,
    m.downsample,
    image_size=config.image_size,
    widths=[level_width(level, m.conv_dim) for level in range(num_levels(config.image_size))],
    batch=config.batch_size if batch_size is None else batch_size,
    train=train,
    itemsize=dtype.itemsize,
    backend=jax.default_backend(),
  )
  common = dict(
    image_size=config.image_size,
    conv_dim=m.conv_dim,
    bn_axis_name=axis_name if m.sync_batchnorm else None,
    downsample=m.downsample,
    forms=forms,
    dtype=dtype,
    param_dtype=jnp.dtype(m.param_dtype),
  )
  generator = Generator(
    embed_dim=m.embed_dim, z_dim=m.z_dim, upsample=m.upsample, use_mask_net=m.use_mask_net, **common
  )
  return generator, KindsDiscriminator(**common)


def count_params(params) -> int:
  """Total number of scalars in a parameter tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
