"""Offline key-patch preprocessing: EdgeBoxes to sharded TFRecords.

  python -m preprocessing --source synthetic --num-images 2000 --output DATA --image-size 64

Modules:
  __main__   the CLI (argparse, option checks, one-line errors with exit code 2).
  sources    folder:PATH / tfds:NAME[:split] / synthetic, as lazy item streams.
  synthetic  the built-in procedural faces (deterministic per seed and index).
  images     decoding untrusted files to uint8 RGB, or a reject reason.
  detect     edge maps, OpenCV EdgeBoxes, the paper §4 filters and the ranking priors (pure NumPy).
  boxes_file boxes from a file (`--boxes`): the authors' .mat layout, CSV, JSON lines.
  worker     per-image work in the worker processes (no TensorFlow).
  writer     shard plan, hash split, atomic shards, resume, dataset_info.json.
  run        the job: worker pool, progress bar, shard assembly, preview PNGs.

Output directory: `train-XXXXX-of-YYYYY.tfrecord`, `test-...` (records as
defined by `keypatch_jax.features`), `dataset_info.json`, `rejects.jsonl`
(every rejected item by id, path and reason), `_chunks/` (per-shard stats and
the option fingerprint used to resume) and `preview/` (--preview).
"""
