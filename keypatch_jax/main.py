"""Entry point: `python -m keypatch_jax.main --config configs/NAME.py --workdir DIR`.

Parses flags, initialises JAX (multi-host when launched as several processes)
and calls `train.train_and_evaluate`. Overrides: `--config.batch_size=32`.
`--help` and mistakes in the `--config` flags (`config_args.py`) are answered
before absl loads the config or JAX is imported. The console shows progress
lines; `--verbosity=0` adds the libraries' INFO logs (cli.quiet_logs).
A user error (`errors.UserError`) is one line, `keypatch_jax.main: error: ...`,
exit status 1; anything else keeps its traceback.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from keypatch_jax import cli

PROG = "keypatch_jax.main"
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and samples.")
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:arg]).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def _maybe_initialize_distributed() -> None:
  """`jax.distributed.initialize()` when the environment describes several processes.

  TPU VMs / SLURM / Open MPI are detected by JAX itself (set
  KEYPATCH_DISTRIBUTED=1); a manual launch sets JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  import jax

  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
      coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
  elif os.environ.get("KEYPATCH_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def _train(argv) -> int:
  cli.quiet_logs(FLAGS.verbosity if FLAGS["verbosity"].present else None)  # before JAX and TensorFlow load
  # Imported here, not at the top, so that `--help` answers without importing JAX and TensorFlow.
  import jax

  from keypatch_jax import train, validation

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    FLAGS.config.get("batch_size")  # the file is loaded lazily: a missing one fails here
  except OSError as e:
    raise validation.ConfigError(_config_message(e, config_flags.get_config_filename(FLAGS["config"]))) from None
  _maybe_initialize_distributed()
  logging.info(
    "JAX process %d/%d, %d local devices (%s)",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.default_backend(),
  )
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  return 0


def main(argv) -> None:
  status = cli.run_command(PROG, _train, argv)
  if status:
    sys.exit(status)


def _config_message(error: BaseException, filename: str) -> str:
  """One line naming the config file that could not be loaded and why."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  reason = lines[-1] if lines else ""
  if isinstance(error, SyntaxError):
    reason = f"SyntaxError: {error.msg} ({error.filename}, line {error.lineno})"
  elif not isinstance(error, OSError):
    reason = f"{type(error).__name__}: {reason}"
  return f"--config {filename}: {reason}"


def _parse_flags(argv):
  """absl's flag parsing; a config file that does not import is one line, not a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except Exception as e:  # noqa: BLE001 - the user's config module raised while loading
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    given += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    print(f"{PROG}: error: {_config_message(e, given[-1] if given else '?')}", file=sys.stderr)
    sys.exit(1)


def usage() -> str:
  """`--help`: the flags a run needs and the configs there are (absl's `--helpfull` lists every flag)."""
  from keypatch_jax import config_args

  configs = "\n".join(f"                          {c}" for c in config_args.available_configs())
  return f"""usage: {PROG} --config PATH[:NAME] --workdir DIR [--config.FIELD=VALUE ...] [--verbosity N]

Trains KeyPatchGAN on a preprocessed dataset; rerunning the same command resumes.

flags:
  --config PATH[:NAME]    training config (required); the configs here:
{configs}
  --config.FIELD=VALUE    override a field, e.g. --config.data_dir=DATA --config.batch_size=32
                          (every field is described in configs/default.py)
  --workdir DIR           checkpoints, TensorBoard logs and config.json (required)
  --verbosity N           -1 (default): progress lines and warnings; 0: also the libraries' INFO logs;
                          1: debug
  --helpfull              every flag absl defines
"""


def run(argv: list[str] | None = None) -> None:
  """Console-script entry point (`keypatch-train`).

  `--help` and mistakes in the `--config` flags are answered here, in one
  line and before absl loads the config or JAX and TensorFlow are imported.
  """
  from keypatch_jax import config_args

  argv = sys.argv if argv is None else argv
  if any(a in ("-h", "--help", "-help", "--helpshort") for a in argv[1:]):
    print(usage(), end="")
    sys.exit(0)
  message = config_args.problem(argv[1:])
  if message:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
