"""Checks `--config PATH[:NAME]` and `--config.FIELD=VALUE` before absl loads the config.

absl's `config_flags` reports a mistyped config path or field as a long
traceback, after importing everything. This module reads the command line
itself, imports only config files (they import `ml_collections` and nothing
heavy: no JAX, no TensorFlow), and turns each mistake into one line with a
"did you mean" suggestion, in well under a second.

A config file is either one config (`get_config()`) or a table of named ones
(`get_config(NAME)`, selected as `PATH:NAME`) that lists its names in a
module-level dict `DATASETS` or `CONFIGS` (configs/paper.py, configs/small.py).
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import os
from collections.abc import Sequence

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
TABLES = ("DATASETS", "CONFIGS")  # module-level dicts that name a table config's entries


class ConfigArgError(ValueError):
  """A `--config` flag that cannot work (one-line message)."""


def _relative(path: str) -> str:
  rel = os.path.relpath(path)
  return path if rel.startswith("..") else rel


def _module(path: str):
  spec = importlib.util.spec_from_file_location(f"_keypatch_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def table_names(module) -> list[str] | None:
  """The entry names of a table config module, or None for a one-config file."""
  for attr in TABLES:
    table = getattr(module, attr, None)
    if isinstance(table, dict):
      return list(table)
  return None


def available_configs() -> list[str]:
  """Every config shipped in `configs/`: `configs/NAME.py`, or `configs/TABLE.py:NAME` for each table entry."""
  out = []
  for path in sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py"))):
    if path.endswith("__init__.py"):
      continue
    try:
      names = table_names(_module(path))
    except Exception:  # noqa: BLE001 - a broken shipped config is listed, and reported when used
      names = None
    rel = _relative(path)
    out += [rel] if names is None else [f"{rel}:{name}" for name in names]
  return out


def _suggest(given: str, choices: Sequence[str]) -> str | None:
  """The choice closest to `given`: by the config's name (after the last / or :), else by the whole spec."""

  def key(spec: str) -> str:
    return os.path.splitext(spec.replace(":", "/").rsplit("/", 1)[-1])[0]

  by_name = {key(c): c for c in choices}
  close = difflib.get_close_matches(key(given), list(by_name), n=1, cutoff=0.6)
  if close:
    return by_name[close[0]]
  close = difflib.get_close_matches(given, choices, n=1, cutoff=0.6)
  return close[0] if close else None


def parse(argv: Sequence[str]) -> tuple[str | None, list[str]]:
  """(the `--config` value or None, the FIELD names of `--config.FIELD` overrides) of an absl command line."""
  value, fields = None, []
  args = list(argv)
  for i, arg in enumerate(args):
    if arg == "--":
      break
    if arg.startswith("--config="):
      value = arg[len("--config=") :]
    elif arg == "--config" and i + 1 < len(args):
      value = args[i + 1]
    elif arg.startswith("--config."):
      fields.append(arg[len("--config.") :].split("=", 1)[0])
  return value, fields


def load(value: str):
  """The ConfigDict of `PATH[:NAME]`, built as `config_flags` builds it.

  Raises:
    ConfigArgError: the file or the table entry does not exist (with the
      closest existing one), or the file does not build.
  """
  path, _, name = value.partition(":")
  if not os.path.isfile(path):
    choices = available_configs()
    close = _suggest(value, choices)
    hint = f"did you mean {close}?" if close else f"available: {', '.join(choices)}"
    raise ConfigArgError(f"--config {path}: no such file ({hint})")
  try:
    module = _module(path)
    names = table_names(module)
    if names is not None and name not in names:
      close = _suggest(name, names) if name else None
      hint = f"did you mean {path}:{close}?" if close else f"use one of {', '.join(f'{path}:{n}' for n in names)}"
      what = f"has no config {name!r}" if name else "is a table of configs; name one"
      raise ConfigArgError(f"--config {value}: {path} {what} ({hint})")
    return module.get_config(name) if name else module.get_config()
  except ConfigArgError:
    raise
  except Exception as e:  # noqa: BLE001 - the user's file: any failure is reported as one line
    message = " ".join(str(e).split())
    raise ConfigArgError(f"--config {value}: cannot build the config ({type(e).__name__}: {message})") from None


def check_field(config, field: str, value: str) -> None:
  """Raises ConfigArgError (one line, with the closest existing field) when `--config.FIELD` names no field."""
  node, done = config, []
  for part in field.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      prefix = "".join(f"{d}." for d in done)
      close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
      hint = f" (did you mean --config.{prefix}{close[0]}?)" if close else ""
      where = f"config.{prefix[:-1]}" if done else f"the config of {value}"
      raise ConfigArgError(f"--config.{field}: {where} has no field {part!r}{hint}")
    node, done = node[part], [*done, part]


def problem(argv: Sequence[str]) -> str | None:
  """The first mistake in the `--config` flags of `argv` as a one-line message, or None."""
  value, fields = parse(argv)
  if value is None:
    return None  # absl reports the missing flag itself
  try:
    config = load(value)
    for field in fields:
      check_field(config, field, value)
  except ConfigArgError as e:
    return str(e)
  return None
