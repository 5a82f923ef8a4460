"""Everything worth timing on one accelerator lease, in one call: the train step, PyTorch, sampling, the page.

For a bare GPU image with Python 3.12, JAX + its CUDA plugin, flax, optax,
orbax-checkpoint, numpy, OpenCV and PyTorch, but no TensorFlow, clu or
ml-collections and no network (README "Benchmarks"). ml-collections (pure
Python) travels as a wheel: put it in `.whl/` (README "On a GPU") and this
script imports it from there when it is not installed.

  python benchmarks/accelerator.py            # ~5-10 min on an H100/H200, figures + a JSON last line
  python benchmarks/accelerator.py --dry-run  # tiny shapes and widths on the CPU, seconds (CI)

What it runs, each part on its own so that one failure keeps the others:
  1. the train step (1 D + 2 G updates) at S=64 and S=128, batch 64, float32
     and bfloat16 (`model.dtype`): compile seconds, images/s and MFU = XLA's
     cost-analysis FLOPs of the step (native convolutions) / step time / the
     device's peak (PEAK_FLOPS; on a CPU: the matmul rate measured here);
  2. the native convolution forms against the CPU forms (`conv_forms`:
     im2col / subpixel_matmul) at S=64 float32, where `auto` chooses;
  3. the PyTorch reference of the same networks, losses and update order
     (benchmarks/torch_reference.py) on the same device: the JAX/PyTorch ratio;
  4. sampling images/s (`sample_bench.measure_sampling`);
  5. HED edge maps (`preprocessing.hed.EdgeModel`, the default key patches'
     edges; random weights of the real shapes) on 128 x 128 frames: frames/s;
  6. the page's generate request (`interactive.Demo.result`: crop, generate,
     paste, PNGs) latency, through HTTP too when FastAPI is installed;
  7. the quick tests of models, losses, the step and the conv forms on the device.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _carried_wheels(folder: str) -> None:
  """Pure-Python wheels in `folder` (e.g. ml_collections) on sys.path when not installed (zipimport)."""
  import importlib.util

  if importlib.util.find_spec("ml_collections") is None:
    sys.path.extend(sorted(glob.glob(os.path.join(folder, "*-py3-none-any.whl"))))


_carried_wheels(os.path.join(REPO, ".whl"))
sys.path[:0] = [REPO, os.path.dirname(os.path.abspath(__file__))]

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

# Dense peak FLOP/s per chip by `device_kind` substring: (float32 as JAX runs it, bfloat16). JAX's default
# matmul precision runs float32 as TF32 on NVIDIA tensor cores and as bfloat16 passes on TPU MXUs. Vendor
# figures without sparsity: H100/H200 SXM, H100 PCIe, A100, L4; TPU v4, v5e ("v5 lite"), v5p, v6e ("v6 lite").
PEAK_FLOPS = {
  "H200": (494.7e12, 989.4e12),
  "H100 PCIe": (378e12, 756e12),
  "H100": (494.7e12, 989.4e12),
  "A100": (156e12, 312e12),
  "L4": (60e12, 121e12),
  "TPU v4": (275e12, 275e12),
  "TPU v5 lite": (197e12, 197e12),
  "TPU v5p": (459e12, 459e12),
  "TPU v6 lite": (918e12, 918e12),
}
# A full run and a dry run (tiny widths, CPU): (S, batch) of the step, widths, repeats.
FULL = {
  "steps": [(64, 64), (128, 64)],
  "dtypes": ("float32", "bfloat16"),
  "widths": None,
  "repeats": 5,
  "warmup": 2,
  "sample_batch": 64,
  "hed": (128, (64, 128, 256, 512, 512), 20),  # frame side, VGG16-HED widths, batches timed
}
DRY = {"steps": [(16, 8)], "dtypes": ("float32",), "widths": (8, 16, 8), "repeats": 1, "warmup": 1, "sample_batch": 8}
DRY["hed"] = (32, (4, 4, 4, 4, 4), 2)
QUICK_TESTS = ["tests/test_models.py", "tests/test_losses.py", "tests/test_step.py", "tests/test_conv_forms.py"]


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The chip's dense peak FLOP/s for `dtype` from PEAK_FLOPS (first matching name), or None."""
  for name, (fp32, bf16) in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return bf16 if dtype == "bfloat16" else fp32
  return None


def config_for(image_size: int, batch: int, widths, **forms):
  """The paper's config (train_step_bench.bench_config), with (conv_dim, embed_dim, z_dim) = widths if given."""
  from train_step_bench import bench_config

  config = bench_config(image_size, batch, 3, **forms)
  if widths:
    config.model.conv_dim, config.model.embed_dim, config.model.z_dim = widths
  return config


def _part(results: dict, name: str, fn, *args, **kwargs):
  """Runs one part; its error (one line, traceback on stderr) goes into the results instead of stopping."""
  t = time.perf_counter()
  try:
    out = fn(*args, **kwargs)
  except Exception as e:  # noqa: BLE001 (a part's failure is reported, the next part still runs)
    traceback.print_exc()
    out = {"error": f"{type(e).__name__}: {e}"}
    print(f"[{name}] FAILED: {out['error']}", flush=True)
  results[name] = out
  print(f"[{name}] {time.perf_counter() - t:.1f} s", flush=True)
  return out


def train_step(image_size: int, batch: int, dtype: str, plan: dict, peak_fallback: float, **forms) -> dict:
  from train_step_bench import measure_jax

  config = config_for(image_size, batch, plan["widths"], dtype=dtype, **forms)
  r = measure_jax(config, plan["repeats"], plan["warmup"])
  kind = jax.devices()[0].device_kind
  peak = (peak_flops(kind, dtype) or peak_fallback) * r["devices"]
  r["peak_tflops"] = peak / 1e12
  r["mfu"] = r["step_gflops"] * 1e9 / r["step_s"] / peak
  print(
    f"train step S={image_size} batch={batch} {dtype} up={r['upsample']} down={r['downsample']}: compile "
    f"{r['compile_s']:.1f} s, {r['step_s'] * 1e3:.1f} ms/step, {r['images_per_s']:.1f} images/s, "
    f"{r['step_gflops']:.3g} GFLOP/step, MFU {100 * r['mfu']:.2f} % of {r['peak_tflops']:.3g} TFLOP/s",
    flush=True,
  )
  return r


def torch_reference(image_size: int, batch: int, plan: dict, jax_images_per_s: float | None) -> dict:
  import torch
  import torch_reference as ref

  device = "cuda" if torch.cuda.is_available() else "cpu"
  widths = plan["widths"] or (64, 128, 128)
  r = ref.measure_torch(
    image_size,
    batch,
    3,
    plan["repeats"],
    plan["warmup"],
    device=device,
    conv_dim=widths[0],
    embed_dim=widths[1],
    z_dim=widths[2],
  )
  r.update(torch=torch.__version__, device=device, tf32_convolutions=bool(torch.backends.cudnn.allow_tf32))
  if jax_images_per_s:
    r["jax_over_torch"] = jax_images_per_s / r["images_per_s"]
  ratio = f", JAX/PyTorch = {r['jax_over_torch']:.2f}" if jax_images_per_s else ""
  print(
    f"PyTorch {torch.__version__} on {device}, S={image_size} batch={batch}: {r['images_per_s']:.1f} images/s{ratio}"
  )
  return r


def sampling(image_size: int, plan: dict) -> dict:
  from sample_bench import measure_sampling

  config = config_for(image_size, plan["sample_batch"], plan["widths"])
  r = measure_sampling(config, plan["sample_batch"], plan["repeats"])
  print(f"sampling S={image_size} batch={plan['sample_batch']}: {r['images_per_s']:.1f} images/s")
  return r


def hed_edges(plan: dict) -> dict:
  """Frames/s of HED edge maps, `hed.BATCH` frames a call, after one compiling call."""
  import jax.numpy as jnp

  from preprocessing import hed

  side, widths, batches = plan["hed"]
  model = hed.HED(widths=widths)
  params = model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)))
  edges = hed.EdgeModel(params, model.depths, widths)
  frames = list(np.random.default_rng(0).integers(0, 256, (hed.BATCH, side, side, 3), np.uint8))
  t = time.perf_counter()
  edges(frames)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(batches):
    edges(frames)
  per_s = batches * len(frames) / (time.perf_counter() - t)
  print(f"HED edge maps {side}x{side}, batch {hed.BATCH}: compile {compile_s:.1f} s, {per_s:.1f} frames/s", flush=True)
  return {"frame_side": side, "batch": hed.BATCH, "compile_s": compile_s, "frames_per_s": per_s}


def page(image_size: int, plan: dict, requests: int) -> dict:
  """Latency of the page's generate request on a random-init generator (no checkpoint needed)."""
  from keypatch_jax import inference, interactive, models, uploads

  config = config_for(image_size, 1, plan["widths"])
  generator, _ = models.build_models(config)
  s, n = image_size, config.num_patches
  patches, z = np.zeros((1, n, s, s, 3), np.float32), np.zeros((1, config.model.z_dim), np.float32)
  variables = jax.jit(lambda: generator.init(jax.random.key(0), patches, z, train=False))()
  run = inference.Run(generator=generator, variables=dict(variables), config=config, step=0, meta=None)
  demo = interactive.Demo(run, max_patches=n)
  compile_s = demo.compile()
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 256, (4 * s, 4 * s, 3), dtype=np.uint8)
  image_id = demo.pictures.put(uploads.Picture(photo, photo[::4, ::4].copy()))
  boxes = [[8.0 * i, 4.0 * i, 1.5 * s, 1.2 * s] for i in range(n)]
  times = []
  for seed in range(requests):
    t = time.perf_counter()
    demo.result(image_id, boxes, [], seed, None)
    times.append(time.perf_counter() - t)
  r = {"compile_s": compile_s, "median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * min(times)}
  try:
    from fastapi.testclient import TestClient

    from keypatch_jax import web_app
  except (ImportError, RuntimeError) as e:  # starlette's TestClient raises RuntimeError without httpx
    r["http"] = f"not measured: {e}"
  else:
    client, http = TestClient(web_app.create_app(demo)), []
    body = {"image_id": image_id, "boxes": boxes, "seed": 0}
    for seed in range(requests):
      t = time.perf_counter()
      assert client.post("/api/generate", json=dict(body, seed=seed)).status_code == 200
      http.append(time.perf_counter() - t)
    r["http_median_ms"] = 1e3 * float(np.median(http))
  http = r.get("http_median_ms", r.get("http"))
  print(f"page generate request S={s} N={n}: median {r['median_ms']:.1f} ms (compile {compile_s:.1f} s), http {http}")
  return r


def quick_tests(dry_run: bool) -> dict:
  """The quick tests of models, losses, the step and the conv forms on this machine's default device."""
  argv = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", *QUICK_TESTS]
  if dry_run:
    argv.append("--collect-only")  # the command works; CI runs the tests themselves
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, *[p for p in sys.path if p.endswith(".whl")]]))
  proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env)
  last = (proc.stdout.strip().splitlines() or [""])[-1]
  print(f"quick tests ({'collected' if dry_run else 'run'} on {jax.default_backend()}): {last}", flush=True)
  if proc.returncode != 0:
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
  return {"returncode": proc.returncode, "summary": last}


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dry-run", action="store_true", help="tiny shapes and widths (CPU, CI)")
  p.add_argument("--skip", default="", help="comma-separated parts to skip: step,forms,torch,sample,hed,page,tests")
  p.add_argument("--requests", type=int, default=20, help="page requests timed")
  args = p.parse_args(argv)
  plan, skip = DRY if args.dry_run else FULL, set(filter(None, args.skip.split(",")))
  device = jax.devices()[0]
  results: dict = {
    "date": time.strftime("%Y-%m-%d"),
    "device_kind": device.device_kind,
    "backend": jax.default_backend(),
    "devices": jax.device_count(),
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "dry_run": args.dry_run,
  }
  for name in ("flax", "optax", "orbax.checkpoint", "torch"):
    try:
      results[name.split(".")[0]] = __import__(name, fromlist=["__version__"]).__version__
    except ImportError:
      results[name.split(".")[0]] = None
  print(" ".join(f"{k}={v}" for k, v in results.items()), flush=True)
  known_peak = peak_flops(device.device_kind, "float32")
  fallback = known_peak or common.matmul_gflops(256 if args.dry_run else 2048) * 1e9
  results["peak_source"] = "table" if known_peak else "measured float32 matmul"
  first, steps = plan["steps"][0], {}
  if "step" not in skip:
    for s, b in plan["steps"]:
      for dtype in plan["dtypes"]:
        steps[f"S{s}_{dtype}"] = _part(results, f"step_S{s}_{dtype}", train_step, s, b, dtype, plan, fallback)
  if "forms" not in skip:
    native = jax.default_backend() != "cpu"  # what auto chose; the other forms are forced
    forms = {"upsample": "subpixel_matmul", "downsample": "im2col"} if native else {}
    forms = forms or {"upsample": "transpose", "downsample": "native"}
    other = _part(results, "step_other_forms", train_step, *first, "float32", plan, fallback, **forms)
    auto = steps.get(f"S{first[0]}_float32", {})
    if "images_per_s" in auto and "images_per_s" in other:
      results["auto_over_other_forms"] = auto["images_per_s"] / other["images_per_s"]
      print(f"auto forms / {forms}: {results['auto_over_other_forms']:.2f}x")
  if "torch" not in skip:
    jax_rate = steps.get(f"S{first[0]}_float32", {}).get("images_per_s")
    _part(results, "torch_reference", torch_reference, *first, plan, jax_rate)
  if "sample" not in skip:
    _part(results, "sampling", sampling, first[0], plan)
  if "hed" not in skip:
    _part(results, "hed_edges", hed_edges, plan)
  if "page" not in skip:
    _part(results, "page", page, first[0], plan, 3 if args.dry_run else args.requests)
  if "tests" not in skip:
    _part(results, "quick_tests", quick_tests, args.dry_run)
  # TensorFlow is never needed here (and crashes beside torch's triton): check nothing pulled it in.
  results["tensorflow_imported"] = "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None
  print(json.dumps(results, default=float))
  return results


if __name__ == "__main__":
  main()
