"""A dataset's content options, checked when a run resumes or merges into an output (docs/design.md §2.1).

The first run of an output records its fingerprint in `_chunks/run.json`; a
later run with the same `--output` must make the same content from the same
source items. Options that cannot change the content (where the output goes,
how many workers, the progress bar) are not part of it; the HED weights count
by their SHA-256, not by where the file was found.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from typing import Any

from keypatch_jax import features
from preprocessing import boxes_file, sources, worker

# How the job is split; the same dataset results for any value (not recorded, not checked).
TASK_OPTIONS = ("num_tasks", "task_index", "merge")
# Options that do not change the dataset's content.
NON_CONTENT_OPTIONS = ("output", "workers", "preview", "quiet", "tfds_data_dir", "hed_weights", *TASK_OPTIONS)
# What an output written before a detection option existed was made with: that option's value then.
EARLIER_OPTIONS = {
  "key_patches": "paper",
  "scoring": "edgeboxes",
  "selection": "nms",
  "edge_smoothing": 0.0,
  "edgeboxes_beta": 0.75,
  "edges": "gradient",
}
# The options that choose the edge map: unused when the boxes come from a file or the structured-edge model.
EDGE_OPTIONS = ("edges", "edge_smoothing", "hed_weights_sha256")
# The options of the ranking priors: unused with EdgeBoxes' own ranking (`--scoring edgeboxes`).
PRIOR_OPTIONS = ("centre_weight", "border_weight", "selection")
# The box filters and ranking, each a flag of its own (`--min-area` ...).
FILTER_OPTIONS = ("min_area", "max_area", "max_aspect", "nms_iou", "max_box_height", "scoring", *PRIOR_OPTIONS)
# The detection options: unused when the boxes come from a file (`--boxes`).
DETECTION_OPTIONS = ("key_patches", *FILTER_OPTIONS, "edgeboxes_beta", "sed_model", *EDGE_OPTIONS)
# What the source holds (its item count and ids): not compared with an output that predates them.
SOURCE_CHECKS = ("source_items", "source_ids_sha256")


def of(
  options: dict[str, Any], source: sources.Source, boxes: boxes_file.Assignment | None, settings: worker.Settings
) -> dict[str, Any]:
  """The content options of `options` (the parsed CLI options) with what `source` holds (`SOURCE_CHECKS`: a
  folder that gained or lost files plans other shards) and the boxes file's or HED weights' SHA-256."""
  fingerprint = {k: v for k, v in options.items() if k not in NON_CONTENT_OPTIONS}
  fingerprint["source_items"] = len(source.ids)
  fingerprint["source_ids_sha256"] = hashlib.sha256(b"\0".join(map(features.id_bytes, source.ids))).hexdigest()
  if boxes is not None:
    fingerprint["boxes_sha256"] = boxes.info["sha256"]
  elif worker.uses_hed(settings):
    from preprocessing import hed_weights

    fingerprint["hed_weights_sha256"] = hed_weights.sha256(settings.hed_weights or hed_weights.locate(None))
  return fingerprint


def _used(fingerprint: dict[str, Any]) -> dict[str, Any]:
  """`fingerprint` without the options its other options leave unused."""
  unused: tuple[str, ...] = ()
  if fingerprint.get("boxes_sha256"):
    unused = DETECTION_OPTIONS
  elif fingerprint.get("sed_model"):
    unused = EDGE_OPTIONS
  elif fingerprint.get("edges") != "gradient":
    unused = ("edge_smoothing",)
  if fingerprint.get("scoring") == "edgeboxes":
    unused += PRIOR_OPTIONS
  used = {k: v for k, v in fingerprint.items() if k not in unused}
  if isinstance(used.get("source"), str) and used["source"].startswith("folder:"):
    used["source"] = "folder:" + os.path.abspath(used["source"][len("folder:") :])  # `x/`, `./x`: the same folder
  return used


def difference(first: dict[str, Any], now: dict[str, Any]) -> str | None:
  """What makes `now`'s content differ from `first`'s (the output's first run), in words, or None.

  Options `first` predates take their `EARLIER_OPTIONS` values, and the
  `SOURCE_CHECKS` it predates are not compared; nor are options its other
  options leave unused. The words give each value there and now, and the
  flags that resume the output.
  """
  first = _used({**{k: v for k, v in EARLIER_OPTIONS.items() if k in now}, **first})
  now = _used({k: v for k, v in now.items() if k in first or k not in SOURCE_CHECKS})
  changed = sorted(k for k in set(first) | set(now) if first.get(k) != now.get(k))
  if not changed:
    return None
  values = ", ".join(f"{k} {_shown(first, k)} there, {_shown(now, k)} now" for k in changed)
  if set(changed) & set(SOURCE_CHECKS):
    return f"{values}; the source's items changed: restore them to resume it, or use an empty directory"
  steps = [" ".join(f for f in (_flag(k, first.get(k)) for k in changed) if f)]
  if "hed_weights_sha256" in changed and first.get("hed_weights_sha256"):
    from preprocessing import hed_weights

    if first["hed_weights_sha256"] == hed_weights.WEIGHTS_SHA256:
      steps.append("the default HED weights (no --hed-weights, no $KEYPATCH_HED_WEIGHTS)")
    else:
      steps.append(f"--hed-weights FILE of SHA-256 {first['hed_weights_sha256'][:12]}…")
  steps = [step for step in steps if step]
  if not steps:
    return f"{values}; use an empty directory"
  return f"{values}; rerun with {' and '.join(steps)} to resume it, or use an empty directory"


def _shown(fingerprint: dict[str, Any], key: str) -> str:
  if key not in fingerprint:
    return "unused"
  value = fingerprint[key]
  if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
    return value[:12] + "…"  # a SHA-256
  return "none" if value is None else repr(value)


def _flag(key: str, value: Any) -> str | None:
  """The command-line flag that sets `key` to `value`, or None when there is none to give."""
  if key.endswith("_sha256") or key in SOURCE_CHECKS or value is None or isinstance(value, bool):
    return None
  return f"--{key.replace('_', '-')} {shlex.quote(str(value))}"
