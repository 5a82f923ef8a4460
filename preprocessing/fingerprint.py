"""A dataset's content options, checked when a run resumes or merges into an output (docs/design.md §2.1).

The first run of an output records its fingerprint in `_chunks/run.json`; a
later run with the same `--output` must make the same content. Options that
cannot change the content (where the output goes, how many workers, the
progress bar) are not part of it; the HED weights count by their SHA-256,
not by where the file was found.
"""

from __future__ import annotations

from typing import Any

from preprocessing import boxes_file, worker

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


def of(options: dict[str, Any], boxes: boxes_file.Assignment | None, settings: worker.Settings) -> dict[str, Any]:
  """The content options of `options` (the parsed CLI options), with the boxes file's or HED weights' SHA-256."""
  fingerprint = {k: v for k, v in options.items() if k not in NON_CONTENT_OPTIONS}
  if boxes is not None:
    fingerprint["boxes_sha256"] = boxes.info["sha256"]
  elif worker.uses_hed(settings):
    from preprocessing import hed_weights

    fingerprint["hed_weights_sha256"] = hed_weights.sha256(settings.hed_weights or hed_weights.locate(None))
  return fingerprint


def _used(fingerprint: dict[str, Any]) -> dict[str, Any]:
  """`fingerprint` without the options its other options leave unused."""
  unused: tuple[str, ...] = ()
  if fingerprint.get("boxes_sha256") or fingerprint.get("sed_model"):
    unused = EDGE_OPTIONS
  elif fingerprint.get("edges") != "gradient":
    unused = ("edge_smoothing",)
  if fingerprint.get("scoring") == "edgeboxes":
    unused += PRIOR_OPTIONS
  return {k: v for k, v in fingerprint.items() if k not in unused}


def difference(first: dict[str, Any], now: dict[str, Any]) -> str | None:
  """What makes `now`'s content differ from `first`'s (the output's first run), in words, or None.

  Options `first` predates take their `EARLIER_OPTIONS` values; unused ones
  are not compared. The words give each value there and now, and the flags
  that resume the output.
  """
  first = _used({**{k: v for k, v in EARLIER_OPTIONS.items() if k in now}, **first})
  now = _used(now)
  changed = sorted(k for k in set(first) | set(now) if first.get(k) != now.get(k))
  if not changed:
    return None
  values = ", ".join(f"{k} {_shown(first, k)} there, {_shown(now, k)} now" for k in changed)
  flags = [_flag(k, first.get(k)) for k in changed]
  flags = [f for f in flags if f]
  redo = f"rerun with {' '.join(flags)} to resume it, or use an empty directory" if flags else "use an empty directory"
  return f"{values}; {redo}"


def _shown(fingerprint: dict[str, Any], key: str) -> str:
  if key not in fingerprint:
    return "unused"
  value = fingerprint[key]
  if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
    return value[:12] + "…"  # a SHA-256
  return "none" if value is None else repr(value)


def _flag(key: str, value: Any) -> str | None:
  """The command-line flag that sets `key` to `value`, or None when there is none to give."""
  if key == "hed_weights_sha256":
    return "--hed-weights FILE (the weights of that SHA-256)" if value else None
  if key == "boxes_sha256" or key == "source" or value is None or isinstance(value, bool):
    return None
  return f"--{key.replace('_', '-')} {value}"
