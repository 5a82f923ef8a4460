"""Throughput of `preprocessing` against raw OpenCV EdgeBoxes on the same images.

  python benchmarks/preprocess_bench.py [--num-images 400] [--json]
  python benchmarks/preprocess_bench.py --folder ../shared/data/celeba_train --center-crop 54 --json
  python benchmarks/preprocess_bench.py --edges gradient ...    # the pipeline with the other edge map

Measures, on the built-in synthetic faces at --min-side 128:
  * raw: gradient edge map + `cv2.ximgproc` EdgeBoxes `getBoundingBoxes` on
    pre-generated images, one thread, in this process;
  * pipeline: the whole `preprocessing` run (generate, detect, filter, resize,
    encode, write TFRecords) with 1 and 2 worker processes, TensorFlow already
    imported (its import is a one-off ~5 s that this does not count), with
    --edges (default: preprocessing's default, HED; its edge maps run in the
    parent process on its JAX device, see docs/design.md §2.1).
Targets (--edges gradient): pipeline >= 80% of raw per worker, >= 1.8x on 2
workers. Each figure is the best of --repeats runs (the machine is shared and noisy).

Per core: images per CPU second of the whole run (workers and the writing
process together), which does not depend on how busy the machine is; with
--folder, the first --num-images files of a real image folder (e.g. CelebA's
aligned faces with the paper's --center-crop) instead of synthetic faces.
From it, the projected wall time for CelebA (202,599 images) on one 96-core
host, assuming the per-core rate holds on every core (the measured 2-worker
scaling is the evidence; one host runs all cores as workers, or split the job
with --num-tasks).
With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from preprocessing import __main__ as cli  # noqa: E402
from preprocessing import detect, run, sources, synthetic, worker  # noqa: E402
from preprocessing import images as imgs  # noqa: E402


def raw_edgeboxes_rate(images: list[np.ndarray], settings: worker.Settings) -> float:
  """Images/s of edge map + EdgeBoxes alone on RGB [128, 128, 3] images."""
  cv2.setNumThreads(1)
  f = settings.box_filter
  eb = cv2.ximgproc.createEdgeBoxes(
    maxBoxes=worker.MAX_CANDIDATES, minBoxArea=f.min_area * 128 * 128, maxAspectRatio=f.max_aspect
  )
  t0 = time.perf_counter()
  for image in images:
    edges, orientation = detect.gradient_edges(image)
    eb.getBoundingBoxes(edges, orientation)
  return len(images) / (time.perf_counter() - t0)


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


CELEBA_IMAGES = 202_599
HOST_CORES = 96


def pipeline_rate(
  num_images: int, workers: int, folder: str | None = None, crop: int = 0, edges: str = "hed"
) -> tuple[float, float]:
  """(images per wall second, images per CPU second) of a whole `preprocessing` run.

  CPU seconds include the worker processes (reaped when the run ends), so the
  second figure shows the per-core efficiency even on a busy machine.
  """
  spec = "synthetic" if folder is None else f"folder:{folder}"
  argv = ["--source", spec, "--num-images", str(num_images), "--image-size", "64", "--center-crop", str(crop)]
  argv += ["--min-side", "128", "--workers", str(workers), "--quiet", "--output", "unused", "--test-count", "8"]
  argv += ["--edges", edges]
  args = cli.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    options = vars(args) | {"output": tmp}
    source = sources.open_source(spec, num_images=num_images, seed=args.seed)
    if folder is not None:
      num_images = min(num_images, len(source.ids))
      source.ids = source.ids[:num_images]
    t0, c0 = time.perf_counter(), _cpu_seconds()
    run.run(options, source, cli.make_settings(args))
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return num_images / wall, num_images / cpu


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num-images", type=int, default=400)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--folder", default=None, help="measure on the first --num-images files of this image folder")
  p.add_argument("--center-crop", type=int, default=0, help="with --folder: the preprocessing --center-crop")
  p.add_argument("--edges", choices=detect.EDGE_MAPS, default=cli.preset_values("parts")["edges"])
  p.add_argument("--json", action="store_true")
  a = p.parse_args()
  run._init_tf()  # the one-off TensorFlow import, outside the timings
  settings = worker.Settings(center_crop=a.center_crop)
  if a.folder is None:
    images = [synthetic.make_face(0, i)[0] for i in range(a.num_images)]
  else:
    source = sources.open_source(f"folder:{a.folder}", num_images=0, seed=0)
    images = [sources.load_item(item)[0] for item in source.items(set(range(min(a.num_images, len(source.ids)))))]
    if a.center_crop:
      images = [imgs.center_crop(image, a.center_crop) for image in images]
    images = [detect.resize_short_side(image, 128) for image in images]
  raw, one, two, cpu_one, cpu_two = 0.0, 0.0, 0.0, 0.0, 0.0
  for _ in range(a.repeats):
    raw = max(raw, raw_edgeboxes_rate(images, settings))
    r1, c1 = pipeline_rate(a.num_images, 1, a.folder, a.center_crop, a.edges)
    r2, c2 = pipeline_rate(a.num_images, 2, a.folder, a.center_crop, a.edges)
    one, two, cpu_one, cpu_two = max(one, r1), max(two, r2), max(cpu_one, c1), max(cpu_two, c2)
  per_core = cpu_one
  hours = CELEBA_IMAGES / (per_core * HOST_CORES) / 3600
  result = {
    "source": a.folder or "synthetic",
    "num_images": len(images),
    "edges": a.edges,
    "cpu_count": os.cpu_count(),
    "raw_edgeboxes_images_per_s": round(raw, 2),
    "images_per_s_1worker": round(one, 2),
    "images_per_s_2workers": round(two, 2),
    "images_per_s_per_worker_2workers": round(two / 2, 2),
    "scaling": round(two / one, 3),
    "fraction_of_raw_per_worker": round(one / raw, 3),
    "overhead_fraction": round(1 - one / raw, 3),
    "images_per_cpu_s_1worker": round(cpu_one, 2),
    "images_per_cpu_s_2workers": round(cpu_two, 2),
    "images_per_s_per_core": round(per_core, 2),
    "celeba_projected_minutes_96_cores": round(60 * hours, 1),
    "load_average_1min": round(os.getloadavg()[0], 2),
  }
  print(f"raw EdgeBoxes (edge map + getBoundingBoxes), 1 thread: {raw:.1f} images/s")
  print(f"pipeline (--edges {a.edges}), 1 worker:  {one:.1f} images/s ({one / raw:.0%} of raw gradient EdgeBoxes)")
  print(f"pipeline (--edges {a.edges}), 2 workers: {two:.1f} images/s ({two / one:.2f}x)")
  print(
    f"per CPU second: 1 worker {cpu_one:.1f}, 2 workers {cpu_two:.1f} images; load average "
    f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (scaling needs idle cores)"
  )
  print(
    f"per core: {per_core:.1f} images/s -> CelebA ({CELEBA_IMAGES:,} images) on one {HOST_CORES}-core host: "
    f"{60 * hours:.1f} min (projected, linear in cores)"
  )
  if a.json:
    print(json.dumps(result))


if __name__ == "__main__":
  main()
