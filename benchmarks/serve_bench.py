"""Request latency of the interactive page (`keypatch_jax.serve`): one generation, over HTTP.

  python benchmarks/serve_bench.py [--sizes demo,64] [--repeats 10] [--workdir-demo DIR]

For each size: a checkpoint of that config (configs/demo.py at 32x32, or
configs/default.py, the paper's widths, at 64x64; freshly initialised and
saved with the checkpoint module unless --workdir-demo / --workdir-64 name a
trained one: the latency does not depend on the weights), restored and
compiled as the server does (`interactive.Demo`), served by uvicorn in this process.
One synthetic 256x256 photo is uploaded (detection timed once), then
`--repeats` POST /api/generate requests with its first N boxes and a new noise
seed each are timed on the client: crop + generator + mask/paste + PNG
encoding + HTTP. Prints figures; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
import urllib.request

import jax
import numpy as np

from configs import default, demo
from keypatch_jax import checkpoint, cli, inference, interactive, state, web_app
from preprocessing import synthetic


def config_for(size: str):
  """configs/demo.py ("demo") or configs/default.py at S ("64", "128", ...)."""
  if size == "demo":
    return demo.get_config()
  config = default.get_config()
  config.image_size = int(size)
  return config


def fresh_workdir(config, workdir: str) -> str:
  """A workdir with a freshly initialised state saved at step 0 (as training writes it)."""
  train_state = jax.jit(lambda r: state.create_train_state(config, r))(jax.random.key(0))
  checkpoint.write_config(workdir, config)
  mngr = checkpoint.manager(workdir)
  meta = {"step": 0, "epoch": 0, "batches_into_epoch": 0, "steps_per_epoch": 1}
  checkpoint.save(
    mngr, train_state, meta | {"image_size": config.image_size, "num_patches": config.num_patches}, force=True
  )
  mngr.wait_until_finished()
  mngr.close()
  return workdir


def serve_in_thread(app) -> tuple[str, object]:
  """Starts uvicorn on a free localhost port; (base URL, server)."""
  import uvicorn

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  threading.Thread(target=server.run, daemon=True).start()
  while not server.started:
    time.sleep(0.05)
  return f"http://127.0.0.1:{port}", server


def post_json(url: str, body: dict) -> dict:
  request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=600) as r:
    return json.loads(r.read())


def bench(size: str, workdir: str | None, repeats: int) -> dict:
  config = config_for(size)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = workdir or fresh_workdir(config, os.path.join(tmp, "work"))
    run = inference.load_run(workdir, None)
    s, n = run.config.image_size, run.config.num_patches
    page = interactive.Demo(run, max_patches=n)
    compile_s = page.compile()
    photo = synthetic.make_face(0, 1, 256)[0]
    import cv2

    start = time.perf_counter()
    reply = page.add_photo(cv2.imencode(".png", photo[..., ::-1])[1].tobytes(), "face.png")
    detect_s = time.perf_counter() - start
    boxes = reply["boxes"][:n]
    url, server = serve_in_thread(web_app.create_app(page))
    try:
      latencies, model = [], []
      for seed in range(repeats + 1):
        start = time.perf_counter()
        out = post_json(url + "/api/generate", {"image_id": reply["image_id"], "boxes": boxes, "seed": seed})
        if seed > 0:  # the first request is timed apart
          latencies.append(time.perf_counter() - start)
          model.append(out["seconds"])
        else:
          first = time.perf_counter() - start
    finally:
      server.should_exit = True
  result = {
    "size": size,
    "image_size": s,
    "num_patches": len(boxes),
    "conv_dim": run.config.model.conv_dim,
    "compile_s": compile_s,
    "detect_ms": 1e3 * detect_s,
    "first_request_ms": 1e3 * first,
    "request_ms_median": 1e3 * float(np.median(latencies)),
    "request_ms_min": 1e3 * float(np.min(latencies)),
    "generator_ms_median": 1e3 * float(np.median(model)),
  }
  print(
    f"{size:>5}: {s}x{s}, N={len(boxes)}, conv_dim {result['conv_dim']}: compile {compile_s:.1f} s; "
    f"detection {result['detect_ms']:.0f} ms; first request {result['first_request_ms']:.0f} ms; "
    f"request median {result['request_ms_median']:.0f} ms (min {result['request_ms_min']:.0f}), "
    f"of which the generator {result['generator_ms_median']:.0f} ms",
    flush=True,
  )
  return result


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", default="demo,64", help="comma-separated: demo and/or image sizes of configs/default.py")
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--workdir-demo", default=None, help="a trained configs/demo.py workdir (default: fresh init)")
  p.add_argument("--workdir-64", default=None, help="a trained 64x64 workdir (default: fresh init)")
  args = p.parse_args()
  cli.quiet_logs()
  results = []
  for size in args.sizes.split(","):
    results.append(bench(size, getattr(args, f"workdir_{size}", None), args.repeats))
  print(json.dumps({"backend": jax.default_backend(), "results": results}))


if __name__ == "__main__":
  main()
