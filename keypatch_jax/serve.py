"""An interactive page over a trained checkpoint: give it key patches, see where they go.

  python -m keypatch_jax.serve --workdir WORK [--data DATA] [--port 8000] [--host 127.0.0.1] [--allowed-host NAME]

Only this machine can reach it by default (--host 127.0.0.1), and it answers
only under loopback host names (--allowed-host adds others) and changes state
only for requests from its own page (docs/design.md §8.1).

Upload a photo (or pick a test image of --data): the page runs the same
EdgeBoxes detection as `python -m preprocessing` (`preprocessing.worker`) and
draws the proposed key patches; drag, resize or redraw them, choose how many
to use, add separate patch images (the paper's part combination, Table 1 and
Figure 9), and generate: the predicted mask, the generated image and the
patches pasted where the mask put them (`paste.paste_patches`). Only the generator is
restored (EMA parameters unless --raw), as `sample` does; it is compiled for
every N in 1..--max-patches before the server starts listening.

The page is `static/index.html` + `static/app.js` (a canvas for the boxes)
over a FastAPI app (`web_app.create_app`) around `interactive.Demo` (the checkpoint,
detection and generation) and `uploads` (decoding and keeping uploaded
files); every bad input is a one-line message on the page, never a server
crash.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from keypatch_jax import cli  # the rest after the arguments parse: --help answers at once

PROG = "keypatch_jax.serve"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="training workdir (config.json + checkpoints/)")
  p.add_argument("--data", default=None, help="preprocessed dataset: its test images and detection settings")
  p.add_argument("--port", type=int, default=8000, help="TCP port")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
  p.add_argument(
    "--allowed-host",
    action="append",
    default=[],
    metavar="NAME",
    help="a host name (or address) the page may be opened under, besides localhost, 127.0.0.1, [::1] and --host; "
    "repeat for more",
  )
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--raw", action="store_true", help="raw generator params instead of the EMA")
  p.add_argument("--max-patches", type=int, default=None, help="largest N a request may use (default: 2x trained N)")
  p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload, MB")
  p.add_argument("--test-images", type=int, default=24, help="test images of --data offered on the page")
  args = p.parse_args(argv)
  if not 0 <= args.port <= 65535:
    p.error(f"--port {args.port}: must be in [0, 65535]")
  if args.max_patches is not None and args.max_patches < 1:
    p.error(f"--max-patches {args.max_patches}: must be >= 1")
  if args.max_upload_mb <= 0:
    p.error(f"--max-upload-mb {args.max_upload_mb}: must be > 0")
  if args.test_images < 0:
    p.error(f"--test-images {args.test_images}: must be >= 0")
  for name in args.allowed_host:
    if not name or "*" in name[1:] or (name.startswith("*") and not name.startswith("*.")) or "/" in name:
      p.error(f"--allowed-host {name!r}: give a host name or address (e.g. mybox.lan, 192.168.1.5, *.example.org)")
  return args


WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


def allowed_hosts(host: str, extra: Sequence[str]) -> list[str]:
  """Host names the page answers: loopback names, the --host address itself (unless a wildcard), --allowed-host."""
  from keypatch_jax import web_app

  names = list(web_app.LOOPBACK_HOSTS)
  if host not in WILDCARD_ADDRESSES:
    names.append(f"[{host}]" if ":" in host else host)
  names += [n.lower() for n in extra]
  return list(dict.fromkeys(n.lower() for n in names))


def exposure_line(host: str, port: int, hosts: Sequence[str]) -> str | None:
  """One line saying what listening on `host` exposes, or None for a loopback address."""
  import ipaddress

  try:
    if ipaddress.ip_address(host).is_loopback:
      return None
  except ValueError:
    if host == "localhost":
      return None
  where = "every network interface of this machine" if host in WILDCARD_ADDRESSES else f"the network at {host}"
  return (
    f"{PROG}: listening on {where}, port {port}: anyone who can reach it can upload images and generate "
    f"(no login); it answers only under the host names {', '.join(hosts)} (add yours with --allowed-host)"
  )


def _main(argv: Sequence[str] | None) -> int:
  args = parse_args(argv)
  import uvicorn

  from keypatch_jax import inference, interactive, web_app

  run = inference.load_run(args.workdir, args.data, step=args.step, ema=not args.raw)
  max_patches = args.max_patches or 2 * run.config.num_patches
  demo = interactive.Demo(run, max_patches=max_patches, max_upload_mb=args.max_upload_mb, test_images=args.test_images)
  seconds = demo.compile()
  s = demo.size
  hosts = allowed_hosts(args.host, args.allowed_host)
  exposed = exposure_line(args.host, args.port, hosts)
  if exposed:
    print(exposed, flush=True)
  print(
    f"{PROG}: step {run.step}, {s}x{s}, compiled for N=1..{max_patches} in {seconds:.1f} s; "
    f"serving http://{args.host}:{args.port}/",
    flush=True,
  )
  uvicorn.run(web_app.create_app(demo, hosts), host=args.host, port=args.port, log_level="warning")
  return 0


main, run = cli.command(PROG, _main)


if __name__ == "__main__":
  run()
