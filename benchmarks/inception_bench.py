"""FID Inception feature extraction rate, and the share of a demo training run spent evaluating.

1. Feature extraction: images/s of `inception.feature_fn` (8-bit quantise,
   resize to 299x299, the 2048-d pool3 network) on the default device, timed
   after the compile. Random weights unless `--inception FILE` (the rate does
   not depend on the values).
2. With `--demo-steps K` (> 0): a demo-config training run (`configs/demo.py`)
   of K steps on a synthetic 32x32 dataset, evaluating every
   `--eval-every` steps with KID from random Inception weights, and the
   evaluation's share of that run as the loop reports it; then the share of
   the full demo run (its step count from the dataset) extrapolated from the
   measured train step and evaluation times.

  python benchmarks/inception_bench.py                          # extraction only
  python benchmarks/inception_bench.py --demo-steps 120 --eval-every 60 --json

Prints figures and, with --json, one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import numpy as np

from keypatch_jax import inception


def random_variables(seed: int = 0) -> dict:
  """FIDInceptionV3 variables with random weights (batch statistics: mean 0, variance 1)."""
  images = np.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3), np.float32)
  return jax.jit(inception.FIDInceptionV3(resize=False).init)(jax.random.key(seed), images)


def extraction_rate(variables: dict, image_size: int, batch_size: int, repeats: int) -> dict:
  """Images/s of `feature_fn(variables, batch_size)` on batches of [batch_size, S, S, 3] images (median)."""
  extract = inception.feature_fn(variables, batch_size=batch_size)
  images = np.random.default_rng(0).uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
  t = time.perf_counter()
  extract([images])
  first_s = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    extract([images])
    times.append(time.perf_counter() - t)
  median = statistics.median(times)
  return {
    "image_size": image_size,
    "batch_size": batch_size,
    "backend": jax.default_backend(),
    "batch_s": median,
    "images_per_s": batch_size / median,
    "first_call_s": first_s,  # compile + one batch
  }


def demo_share(data_dir: str | None, steps: int, eval_every: int, weights: str, workdir: str) -> dict:
  """Evaluation time and share of a demo-config run of `steps` steps evaluating every `eval_every` (with KID).

  Also times one evaluation without KID (the demo's default: mask IoU and
  masked PSNR only) on the trained generator, and extrapolates both to the
  full demo run (`configs/demo.py`: its epochs over this dataset, an
  evaluation every 200 steps, no `eval_max_share` cap).
  """
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  from configs import demo
  from keypatch_jax import checkpoint, dataset_meta, inference, periodic_eval, train, validation

  if data_dir is None:
    from preprocessing.__main__ import main as preprocess

    data_dir = os.path.join(workdir, "data")
    argv = ["--source", "synthetic", "--num-images", "2000", "--image-size", "32", "--output", data_dir, "--quiet"]
    if preprocess(argv) != 0:
      raise SystemExit("preprocessing failed")
  config = demo.get_config()
  config.data_dir, config.num_train_steps, config.eval_every_steps = data_dir, steps, eval_every
  config.inception_weights, config.eval_max_share = weights, 1.0  # measure, do not cap
  config.image_every_steps = config.checkpoint_every_steps = steps
  run_dir = os.path.join(workdir, "run")
  summary = train.train_and_evaluate(config, run_dir)
  acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  eval_s = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("eval/seconds")]

  meta = dataset_meta.load_meta(data_dir)
  plain = demo.get_config()
  plain.data_dir = data_dir
  generator, variables, _, _ = checkpoint.restore_generator(run_dir)
  evaluator = periodic_eval.PeriodicEvaluator(plain, meta, inference.generate_fn(generator), log=lambda _: None)
  evaluator(variables, 1.0)  # compile
  plain_s = evaluator(variables, 1.0)["seconds"]

  full_steps = validation.num_train_steps(plain, dataset_meta.steps_per_epoch(meta, plain.batch_size))
  evals = full_steps // plain.eval_every_steps
  train_s = full_steps / summary["steps_per_s"]
  kid_s = eval_s[-1]  # steady state: the first evaluation also computes the real features and compiles
  return {
    "run_steps": summary["step"],
    "run_eval_every": eval_every,
    "run_steps_per_s": summary["steps_per_s"],
    "run_eval_seconds": eval_s,
    "run_eval_share": summary["eval_share"],
    "eval_with_kid_s": kid_s,
    "eval_without_kid_s": plain_s,
    "eval_images": plain.eval_batches * plain.batch_size,
    "demo_steps": full_steps,
    "demo_evals": evals,
    "demo_train_s": train_s,
    "demo_share_without_kid": evals * plain_s / (train_s + evals * plain_s),
    "demo_share_with_kid": evals * kid_s / (train_s + evals * kid_s),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--inception", default=None, help="pytorch-fid weights file (default: random weights)")
  parser.add_argument("--image-size", type=int, default=32, help="generated image size before the resize to 299")
  parser.add_argument("--batch", type=int, default=32, help="images per network call")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--demo-steps", type=int, default=0, help="> 0: also time evaluation in a demo-config run")
  parser.add_argument("--eval-every", type=int, default=60, help="evaluation interval of that run")
  parser.add_argument("--data", default=None, help="demo dataset (default: 2000 synthetic 32x32 images, made here)")
  parser.add_argument("--json", action="store_true", help="last line: one JSON object")
  args = parser.parse_args()

  variables = inception.load_weights(args.inception) if args.inception else random_variables()
  result = extraction_rate(variables, args.image_size, args.batch, args.repeats)
  print(
    f"FID Inception features, {args.image_size}x{args.image_size} -> 299x299, batch {args.batch} on "
    f"{result['backend']}: {result['images_per_s']:.2f} images/s ({result['batch_s']:.2f} s/batch; "
    f"first call incl. compile {result['first_call_s']:.1f} s)"
  )
  if args.demo_steps > 0:
    with tempfile.TemporaryDirectory() as tmp:
      weights = args.inception
      if weights is None:
        weights = os.path.join(tmp, "random_inception.npz")
        np.savez(weights, **inception.to_state_dict(variables))
      d = demo_share(args.data, args.demo_steps, args.eval_every, weights, tmp)
    result["demo"] = d
    print(
      f"demo-config run, {d['run_steps']} steps at {d['run_steps_per_s']:.2f} steps/s, evaluation every "
      f"{d['run_eval_every']} steps on {d['eval_images']} test images with KID: "
      + ", ".join(f"{s:.1f}" for s in d["run_eval_seconds"])
      + f" s per evaluation, {d['run_eval_share']:.1%} of the run"
    )
    print(
      f"full demo run ({d['demo_steps']} steps, {d['demo_train_s']:.0f} s training, {d['demo_evals']} evaluations): "
      f"evaluation without KID {d['eval_without_kid_s']:.2f} s each = {d['demo_share_without_kid']:.1%} of the run; "
      f"with KID {d['eval_with_kid_s']:.1f} s each = {d['demo_share_with_kid']:.1%} (before the "
      f"eval_max_share cap of 10%)"
    )
  if args.json:
    print(json.dumps(result))


if __name__ == "__main__":
  main()
