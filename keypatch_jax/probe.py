"""Unsupervised feature learning (paper Table 1): a linear probe on the frozen part encoder.

  python -m keypatch_jax.probe --workdir WORK --data DATA [--labels ids.csv] \
      [--steps 500] [--output probe.json]

The generator's part encoder is frozen; its embedding summed over the N key
patches ([E], order invariant) is the feature. A linear softmax classifier
(optax Adam, full batch, features standardised on the train split) is trained
on the train split and its accuracy reported on the test split, next to the
same probe on raw pixels: the N patches summed over patches and flattened
(the same order-invariant input). Labels are the records' `label` feature, or
`--labels FILE` with lines `id,label`.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import sys
from collections.abc import Sequence

import numpy as np

from keypatch_jax import cli, preflight

PROG = "keypatch_jax.probe"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = cli.run_parser(PROG, __doc__, data_help="preprocessed dataset with labels", data_required=True, generation=False)
  p.add_argument("--labels", default=None, help="CSV of `id,label` lines overriding the records' labels")
  p.add_argument("--steps", type=int, default=500, help="Adam steps of the linear classifier")
  p.add_argument("--learning-rate", type=float, default=1e-2, help="Adam learning rate")
  p.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty on the classifier weights")
  p.add_argument("--limit", type=int, default=None, help="use at most this many images per split")
  p.add_argument("--output", default=None, help="JSON file to write")
  return p.parse_args(argv)


def read_labels(path: str) -> dict[bytes, int]:
  """`id,label` lines -> {id: label}, ids as the bytes the records store (`features.id_bytes`).

  Read as bytes, so ids that are not valid UTF-8 match; a UTF-8 byte-order
  mark, CRLF line ends, an `id,label` header line, blank lines and quotes
  around an id are accepted. Labels are integers >= -1 (-1: unlabelled).

  Raises:
    DataConfigError: one line naming the file and line of a malformed entry,
      or an id given two different labels.
  """
  from keypatch_jax import dataset_meta

  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise dataset_meta.DataConfigError(f"--labels {path!r}: {e.strerror}") from None
  out: dict[bytes, int] = {}
  for number, line in enumerate(data.removeprefix(codecs.BOM_UTF8).splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    key, comma, value = line.rpartition(b",")
    key = key.strip()
    if len(key) >= 2 and key[:1] == key[-1:] == b'"':
      key = key[1:-1]
    try:
      label = int(value)
    except ValueError:
      if number == 1 and comma:  # a header line such as `id,label`
        continue
      label = None
    if not comma or not key or label is None or label < -1:
      raise dataset_meta.DataConfigError(
        f"{path}:{number}: expected `id,label` with an integer label >= -1, got {line.decode(errors='replace')!r}"
      )
    if out.get(key, label) != label:
      raise dataset_meta.DataConfigError(f"{path}:{number}: id {key!r} has two labels, {out[key]} and {label}")
    out[key] = label
  return out


def features(run, split: str, limit: int | None, labels: dict[bytes, int] | None):
  """(embeddings [M, E], summed patch pixels [M, S*S*3], labels [M], ids [M]) of a split of `run` (an inference.Run)."""
  import jax

  from keypatch_jax import dataset_meta, input_pipeline

  encode = jax.jit(
    lambda variables, p: run.generator.apply(variables, p, False, method=run.generator.encode)[-1].reshape(
      p.shape[0], -1
    )
  )
  emb, pix, lab, ids = [], [], [], []
  for batch in input_pipeline.eval_batches(run.meta, split, batch_size=64, limit=limit):
    emb.append(np.asarray(encode(run.variables, batch["patches"])))
    pix.append(batch["patches"].sum(axis=1).reshape(batch["patches"].shape[0], -1))
    ids.extend(bytes(i) for i in batch["id"])
    if labels is None:
      lab.append(batch["label"])
    else:
      lab.append(np.array([labels.get(bytes(i), -1) for i in batch["id"]], np.int64))
  if not emb:
    raise dataset_meta.DataConfigError(f"{run.meta.data_dir}: the {split} split is empty")
  return np.concatenate(emb), np.concatenate(pix), np.concatenate(lab), ids


def fit_linear(x, y, *, num_classes: int, steps: int, learning_rate: float, weight_decay: float):
  """Softmax regression by full-batch Adam, jitted (one compile per feature width, classes and steps).

  Args:
    x: standardised features [M, F]; y: labels [M] in [0, num_classes).

  Returns:
    (weights [F, C], bias [C]).
  """
  return _fit_linear_jit()(
    x, y, num_classes=num_classes, steps=steps, learning_rate=learning_rate, weight_decay=weight_decay
  )


@functools.cache
def _fit_linear_jit():
  """`_fit_linear` under `jax.jit`, made on first use (importing this module does not import JAX)."""
  import jax

  return jax.jit(_fit_linear, static_argnames=("num_classes", "steps"))


def _fit_linear(x, y, *, num_classes: int, steps: int, learning_rate: float, weight_decay: float):
  import jax
  import jax.numpy as jnp
  import optax

  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    logits = x @ p[0] + p[1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + weight_decay * jnp.sum(p[0] ** 2)

  def step(carry, _):
    p, opt = carry
    grads = jax.grad(loss_fn)(p)
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return params


def probe_accuracy(train_x, train_y, test_x, test_y, num_classes: int, args) -> tuple[float, float]:
  """(train accuracy, test accuracy) of a linear classifier on standardised features."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  w, b = fit_linear(
    (train_x - mean) / std,
    train_y,
    num_classes=num_classes,
    steps=args.steps,
    learning_rate=args.learning_rate,
    weight_decay=args.weight_decay,
  )

  def accuracy(x, y):
    return float((np.argmax(((x - mean) / std) @ np.asarray(w) + np.asarray(b), axis=1) == y).mean())

  return accuracy(train_x, train_y), accuracy(test_x, test_y)


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  preflight.run_and_data(args, output_suffixes=(".json",))  # before anything slow

  from keypatch_jax import dataset_meta, inference

  run = inference.load_run(args.workdir, args.data, step=args.step, ema=not args.raw)
  labels = read_labels(args.labels) if args.labels else None
  train_e, train_p, train_y, train_ids = features(run, "train", args.limit, labels)
  test_e, test_p, test_y, test_ids = features(run, "test", args.limit, labels)
  keep_train, keep_test = train_y >= 0, test_y >= 0
  if labels is not None and not set(labels) & set(train_ids + test_ids):
    raise dataset_meta.DataConfigError(
      f"--labels {args.labels!r}: none of its {len(labels)} ids is an id of {args.data!r} "
      f"(ids look like {train_ids[0].decode(errors='replace')!r})"
    )
  if not keep_train.any() or not keep_test.any():
    raise dataset_meta.DataConfigError(
      f"{args.data!r} has no labels (every `label` is -1); the probe needs a labelled dataset or --labels FILE"
    )
  for split, keep in (("train", keep_train), ("test", keep_test)):
    if not keep.all():  # said, not dropped silently
      source = f"in --labels {args.labels}" if labels is not None else "(label -1)"
      print(
        f"{PROG}: note: {int((~keep).sum())} of {keep.size} {split} images have no label {source}; left out",
        file=sys.stderr,
      )
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  result = {"num_classes": num_classes, "num_train": int(keep_train.sum()), "num_test": int(keep_test.sum())}
  for name, (tr, te) in {"embedding": (train_e, test_e), "pixels": (train_p, test_p)}.items():
    acc_train, acc_test = probe_accuracy(
      tr[keep_train], train_y[keep_train], te[keep_test], test_y[keep_test], num_classes, args
    )
    result[f"{name}_train_accuracy"], result[f"{name}_test_accuracy"] = acc_train, acc_test
  result["chance_accuracy"] = float(np.bincount(test_y[keep_test], minlength=num_classes).max() / keep_test.sum())
  result["step"] = int(run.step)
  print(f"{'features':<12}{'dim':>8}{'train acc':>12}{'test acc':>12}")
  for name, dim in (("embedding", train_e.shape[1]), ("pixels", train_p.shape[1])):
    print(f"{name:<12}{dim:>8}{result[f'{name}_train_accuracy']:>12.4f}{result[f'{name}_test_accuracy']:>12.4f}")
  print(f"{'majority':<12}{'':>8}{'':>12}{result['chance_accuracy']:>12.4f}")
  cli.report_json(result, args.output)
  return 0


main, run = cli.command(PROG, _main)

if __name__ == "__main__":
  run()
