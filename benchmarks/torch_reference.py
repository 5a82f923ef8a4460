"""A PyTorch reference of one KeyPatchGAN train step, for a speed comparison.

The same architecture as keypatch_jax.models (docs/design.md §3, the official
code's "unet": Conv2d(k5, s2, p2), ConvTranspose2d(k5, s2, p2, output_padding=1),
ConvTranspose2d(k4) from 1x1, the same BatchNorm placement), the same losses
(docs/design.md §4: LS, LA, all five composite fakes, BCE with logits, L1 reduced as the
mean of per-image sums) and the same update order (1 D update, then 2 G
updates, Adam lr 2e-4, betas (0.5, 0.999)). The shared part encoder runs once
on the N patches folded into the batch (B*N) and sums per example, which is
what the JAX model's pooled BatchNorm means; D is called once per kind (real
and each fake), as in the official code.

Prints torch images/s, whether the parameter counts equal the JAX model's, and
the JAX train step's images/s (from benchmarks/train_step_bench.py) with the
ratio. Needs `pip install torch==2.13.0` (the `bench` extra). TensorFlow is never
imported here (nor by train_step_bench): triton, which torch loads, crashes beside it.

  python benchmarks/torch_reference.py --image-size 64 --batch 64 --json
"""

from __future__ import annotations

import functools
import json
import os
import sys

import common
import torch
import torch.nn.functional as F
from torch import nn

FAKES = ("G", "GR", "RG", "SR", "RS")
LEAK = 0.2


def width(level: int, conv_dim: int) -> int:
  """Channels at encoder level `level`: conv_dim * 2**min(3, l), at most 512."""
  return min(conv_dim * 2 ** min(3, level), 512)


def num_levels(image_size: int) -> int:
  """L = log2(S) - 2."""
  return image_size.bit_length() - 3


def down(cin: int, cout: int, norm: bool) -> nn.Sequential:
  """Conv 5x5 stride 2 padding 2 [-> BatchNorm] -> LeakyReLU(0.2)."""
  layers = [nn.Conv2d(cin, cout, 5, 2, 2)] + ([nn.BatchNorm2d(cout)] if norm else [])
  return nn.Sequential(*layers, nn.LeakyReLU(LEAK))


def down_stack(image_size: int, conv_dim: int) -> list[nn.Sequential]:
  """The L stride-2 levels shared by the part encoder and D (no norm on level 0)."""
  ws = [width(level, conv_dim) for level in range(num_levels(image_size))]
  return [down(c, w, i > 0) for i, (c, w) in enumerate(zip([3] + ws[:-1], ws, strict=True))]


class PartEncoder(nn.Module):
  """[B, 3, S, S] -> L maps (fine to coarse) and the [B, E, 1, 1] embedding."""

  def __init__(self, image_size: int, conv_dim: int, embed_dim: int):
    super().__init__()
    self.levels = nn.ModuleList(down_stack(image_size, conv_dim))
    last = width(num_levels(image_size) - 1, conv_dim)
    self.embed = nn.Sequential(nn.Conv2d(last, embed_dim, 4), nn.LeakyReLU(LEAK))

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    feats = []
    for level in self.levels:
      x = level(x)
      feats.append(x)
    return feats + [self.embed(x)]


class UNetDecoder(nn.Module):
  """Embedding [B, C, 1, 1] + skips (coarse to fine) -> output, concatenated features."""

  def __init__(self, image_size: int, conv_dim: int, cin: int, skip_mult: int, out: int):
    super().__init__()
    ws = [width(level, conv_dim) for level in reversed(range(num_levels(image_size)))]
    ups, norms = [], []
    for i, w in enumerate(ws):
      ups.append(nn.ConvTranspose2d(cin, w, 4) if i == 0 else self._up(cin, w))
      norms.append(nn.BatchNorm2d(w))
      cin = w + skip_mult * w  # [decoder, skip] concat
    self.ups, self.norms = nn.ModuleList(ups), nn.ModuleList(norms)
    self.last = self._up(cin, out)

  @staticmethod
  def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 5, 2, 2, output_padding=1)

  def forward(self, x: torch.Tensor, skips: list[torch.Tensor]):
    feats = []
    for up, norm, skip in zip(self.ups, self.norms, skips, strict=True):
      x = torch.cat([F.relu(norm(up(x))), skip], dim=1)
      feats.append(x)
    return self.last(x), feats


class Generator(nn.Module):
  """patches [B, N, 3, S, S], z [B, Z] -> mask [B, 1, S, S], image [B, 3, S, S]."""

  def __init__(self, image_size=64, conv_dim=64, embed_dim=128, z_dim=128):
    super().__init__()
    self.encoder = PartEncoder(image_size, conv_dim, embed_dim)
    self.mask_decoder = UNetDecoder(image_size, conv_dim, embed_dim, 1, 1)
    self.image_decoder = UNetDecoder(image_size, conv_dim, embed_dim + z_dim, 2, 3)

  def forward(self, patches: torch.Tensor, z: torch.Tensor):
    b, n = patches.shape[:2]
    feats = self.encoder(patches.flatten(0, 1))  # N folded into the batch
    feats = [f.view(b, n, *f.shape[1:]).sum(1) for f in feats]
    embedding, skips = feats[-1], feats[-2::-1]
    mask_logits, mask_feats = self.mask_decoder(embedding, skips)
    x = torch.cat([embedding, z[:, :, None, None]], dim=1)
    image, _ = self.image_decoder(x, mask_feats)
    return torch.sigmoid(mask_logits), torch.tanh(image)


class Discriminator(nn.Module):
  """DCGAN discriminator: images [B, 3, S, S] -> logits [B]."""

  def __init__(self, image_size=64, conv_dim=64):
    super().__init__()
    self.levels = nn.Sequential(*down_stack(image_size, conv_dim))
    self.logit = nn.Conv2d(width(num_levels(image_size) - 1, conv_dim), 1, 4)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.logit(self.levels(x)).flatten()


def l1(diff: torch.Tensor) -> torch.Tensor:
  """Sum of |diff| per image, mean over the batch (docs/design.md §4.2 reduction)."""
  return diff.abs().flatten(1).sum(1).mean()


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
  """Mean sigmoid cross-entropy against a constant target."""
  return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def composite_fakes(g, y, y2, m) -> list[torch.Tensor]:
  """G, GR, RG, SR, RS of eq. 4 (m: the true mask)."""
  return [g, m * g + (1 - m) * y, (1 - m) * g + m * y, m * y2 + (1 - m) * y, (1 - m) * y2 + m * y]


def train_step(gen, disc, opt_g, opt_d, batch, lam: float, g_steps: int = 2) -> None:
  """One D update (D called once per kind), then `g_steps` G updates."""
  patches, real, other, mask, z = batch
  with torch.no_grad():
    _, fake = gen(patches, z)
  opt_d.zero_grad(set_to_none=True)
  d_loss = bce(disc(real), 1.0) + sum(bce(disc(f), 0.0) for f in composite_fakes(fake, real, other, mask))
  d_loss.backward()
  opt_d.step()
  for _ in range(g_steps):
    opt_g.zero_grad(set_to_none=True)
    mask_pred, fake = gen(patches, z)
    g_loss = bce(disc(fake), 1.0) + lam * l1(mask_pred - mask) + lam * l1(fake * mask_pred - real * mask)
    g_loss.backward()
    opt_g.step()


def random_batch(batch: int, n: int, size: int, z_dim: int = 128):
  """Random patches, real, y', a box-like mask and z (NCHW)."""
  u = lambda *shape: torch.rand(*shape) * 2 - 1
  mask = torch.zeros(batch, 1, size, size)
  mask[:, :, size // 4 : size // 2, size // 8 : size // 2] = 1
  return u(batch, n, 3, size, size), u(batch, 3, size, size), u(batch, 3, size, size), mask, u(batch, z_dim)


def measure_torch(
  image_size: int,
  batch: int,
  num_patches: int,
  repeats: int,
  warmup: int,
  *,
  device: str = "cpu",
  conv_dim: int = 64,
  embed_dim: int = 128,
  z_dim: int = 128,
) -> dict:
  """Median seconds per torch train step and images/s on `device` ("cpu" or "cuda"), plus parameter counts."""
  if device == "cpu":
    torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  gen = Generator(image_size, conv_dim, embed_dim, z_dim).to(device)
  disc = Discriminator(image_size, conv_dim).to(device)
  adam = lambda m: torch.optim.Adam(m.parameters(), lr=2e-4, betas=(0.5, 0.999))
  opt_g, opt_d = adam(gen), adam(disc)
  data = tuple(t.to(device) for t in random_batch(batch, num_patches, image_size, z_dim))

  def one_step() -> None:
    train_step(gen, disc, opt_g, opt_d, data, 0.64)
    if device != "cpu":
      torch.cuda.synchronize()

  seconds = common.time_calls(one_step, repeats=repeats, warmup=warmup)
  count = lambda m: sum(p.numel() for p in m.parameters())
  return {
    "seconds_per_step": seconds,
    "images_per_s": batch / seconds,
    "params": {"generator": count(gen), "discriminator": count(disc)},
  }


def jax_param_counts(image_size: int) -> dict:
  """Parameter counts of the JAX models built from the default config."""
  import jax
  import jax.numpy as jnp

  from configs import default
  from keypatch_jax import models

  config = default.get_config()
  config.image_size = image_size
  gen, disc = models.build_models(config)
  s, key = image_size, jax.random.key(0)
  patches = jax.ShapeDtypeStruct((1, config.num_patches, s, s, 3), jnp.float32)
  z = jax.ShapeDtypeStruct((1, config.model.z_dim), jnp.float32)
  kinds = jax.ShapeDtypeStruct((2, 1, s, s, 3), jnp.float32)
  gv = jax.eval_shape(functools.partial(gen.init, train=False), key, patches, z)
  dv = jax.eval_shape(functools.partial(disc.init, train=False), key, kinds)
  return {
    "generator": models.count_params(gv["params"]),
    "discriminator": models.count_params(dv["params"]),
  }


def main() -> None:
  parser = common.parser(__doc__.splitlines()[0], repeats=3, warmup=1)
  parser.add_argument("--torch-only", action="store_true", help="skip the JAX timing")
  args = parser.parse_args()

  measure_jax = None
  if not args.torch_only:
    try:
      from train_step_bench import bench_config, measure_jax
    except ImportError as e:
      sys.exit(f"benchmarks/train_step_bench.py (measure_jax) is not available: {e}")

  params_jax = jax_param_counts(args.image_size)
  timing = (args.image_size, args.batch, args.num_patches, args.repeats, args.warmup)
  torch_result = measure_torch(*timing)
  params_equal = torch_result["params"] == params_jax
  print(f"S={args.image_size} batch={args.batch} N={args.num_patches} threads={torch.get_num_threads()}")
  print(f"params torch {torch_result['params']} jax {params_jax} params_equal={params_equal}")
  print(
    f"torch {torch.__version__}: {torch_result['seconds_per_step']:.2f} s/step, "
    f"{torch_result['images_per_s']:.2f} images/s",
    flush=True,
  )
  result = {"torch_images_per_s": torch_result["images_per_s"], "params_equal": params_equal}
  if measure_jax is not None:
    jax_result = measure_jax(bench_config(args.image_size, args.batch, args.num_patches), args.repeats, args.warmup)
    result["jax_images_per_s"] = jax_result["images_per_s"]
    result["ratio"] = jax_result["images_per_s"] / torch_result["images_per_s"]
    print(f"jax: {result['jax_images_per_s']:.2f} images/s, jax/torch = {result['ratio']:.2f}")
  if args.json:
    print(json.dumps(result))


if __name__ == "__main__":
  main()
