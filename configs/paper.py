"""The paper's seven datasets (paper §4.1), one table: `--config=configs/paper.py:NAME`.

Every dataset is the default config (configs/default.py: the paper's networks,
losses and schedule) with its own image size S and number of epochs, read
from `data/NAME`. Its commands, with the preprocessing flags of the table:

  python -m preprocessing --source SOURCE FLAGS --image-size S --output data/NAME
  python -m keypatch_jax.main --config=configs/paper.py:NAME --workdir work/NAME --config.data_dir=data/NAME
  python -m keypatch_jax.sample --workdir work/NAME --data data/NAME --output work/NAME/samples.png
  python -m keypatch_jax.evaluate --workdir work/NAME --data data/NAME --output work/NAME/metrics.json

NAME           S    epochs  SOURCE and FLAGS of `python -m preprocessing`
celeba         64   25      folder:/data/celeba/img_align_celeba --center-crop 108 --min-side 128
                            (or, with TFDS's manual download in place, tfds:celeb_a:train)
celeba_hq      256  100     folder:/data/celeba_hq --min-side 256
compcars_128   128  50      folder:/data/compcars/image --min-side 128
compcars_256   256  300     folder:/data/compcars_30k --min-side 256 (the paper's 30,000-image subset)
stanford_cars  64   400     tfds:cars196:train --min-side 128 (labels kept for the probe)
flowers        64   800     tfds:oxford_flowers102:train --min-side 128 (labels kept for the probe)
waterfall      64   100     folder:/data/waterfall --min-side 128 --max-box-height 0.7 (tall water streams)
ceramic        64   800     folder:/data/ceramic --min-side 128

CelebA: the official code center-crops 108x108 from the 178x218 aligned
image before resizing (docs/design.md §2.1). `python -m configs.paper NAME`
prints the four commands of one dataset.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

import ml_collections

from configs import default


class Dataset(NamedTuple):
  image_size: int  # S
  num_epochs: int  # paper §4.1
  preprocess: str  # `python -m preprocessing` source and flags (before --image-size/--output)


DATASETS = {
  "celeba": Dataset(64, 25, "--source folder:/data/celeba/img_align_celeba --center-crop 108 --min-side 128"),
  "celeba_hq": Dataset(256, 100, "--source folder:/data/celeba_hq --min-side 256"),
  "compcars_128": Dataset(128, 50, "--source folder:/data/compcars/image --min-side 128"),
  "compcars_256": Dataset(256, 300, "--source folder:/data/compcars_30k --min-side 256"),
  "stanford_cars": Dataset(64, 400, "--source tfds:cars196:train --min-side 128"),
  "flowers": Dataset(64, 800, "--source tfds:oxford_flowers102:train --min-side 128"),
  "waterfall": Dataset(64, 100, "--source folder:/data/waterfall --min-side 128 --max-box-height 0.7"),
  "ceramic": Dataset(64, 800, "--source folder:/data/ceramic --min-side 128"),
}


def get_config(name: str) -> ml_collections.ConfigDict:
  """The config of dataset `name` (a key of DATASETS).

  Raises:
    ValueError: an unknown name, listing the known ones.
  """
  if name not in DATASETS:
    raise ValueError(f"configs/paper.py:{name!r} is not a dataset; use one of {', '.join(DATASETS)}")
  dataset = DATASETS[name]
  config = default.get_config()
  config.data_dir = f"data/{name}"  # Output of the preprocessing command (`commands(name)`).
  config.image_size = dataset.image_size
  config.num_epochs = dataset.num_epochs
  return config


def commands(name: str) -> list[str]:
  """The preprocess, train, sample and evaluate commands of dataset `name`."""
  dataset, data, work = DATASETS[name], f"data/{name}", f"work/{name}"
  return [
    f"python -m preprocessing {dataset.preprocess} --image-size {dataset.image_size} --output {data}",
    f"python -m keypatch_jax.main --config=configs/paper.py:{name} --workdir {work} --config.data_dir={data}",
    f"python -m keypatch_jax.sample --workdir {work} --data {data} --output {work}/samples.png",
    f"python -m keypatch_jax.evaluate --workdir {work} --data {data} --output {work}/metrics.json",
  ]


if __name__ == "__main__":
  for line in commands(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] in DATASETS else [__doc__]:
    print(line)
