"""Serves inpainting over HTTP: a JSON-error API and a page to paint the mask in a browser.

  python -m lgnet_jax.serve --workdir W [--host 127.0.0.1] [--port 8000]

The command line: checks its flags, binds the port and loads and compiles the network (one
input shape, before the first request), then runs the app of app.py under uvicorn until
interrupted.
"""

import argparse
import socket
from collections.abc import Sequence

import jax
import numpy as np
import uvicorn

from lgnet_jax import cli
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.runtime import host_memory
from lgnet_jax.serving import app as app_lib
from lgnet_jax.serving.inference import Inpainter
from lgnet_jax.serving.uploads import MEGABYTE

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_QUEUE_SIZE = 8


def build_parser() -> cli.ArgumentParser:
  parser = cli.ArgumentParser(
      prog='python -m lgnet_jax.serve', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument(
      '--workdir', required=True, help='training or import workdir (config.json and checkpoints/)'
  )
  parser.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  parser.add_argument(
      '--host',
      default=DEFAULT_HOST,
      help='address to listen on (default %(default)s: this machine only; 0.0.0.0 for all)',
  )
  parser.add_argument('--port', type=int, default=DEFAULT_PORT, help='default %(default)s')
  parser.add_argument(
      '--max-upload-mb',
      type=float,
      default=DEFAULT_MAX_UPLOAD_MB,
      help='largest request body, image and mask together, in MiB (default %(default)g)',
  )
  parser.add_argument(
      '--queue-size',
      type=int,
      default=DEFAULT_QUEUE_SIZE,
      help='requests that may wait or run at once; more get 503 (default %(default)s)',
  )
  return parser


def check_args(args: argparse.Namespace) -> None:
  if not 0 <= args.port <= 65535:
    raise cli.UsageError(f'--port must be between 0 and 65535, got {args.port}')
  if args.queue_size < 1:
    raise cli.UsageError(f'--queue-size must be at least 1, got {args.queue_size}')
  if not args.max_upload_mb > 0:
    raise cli.UsageError(f'--max-upload-mb must be above 0, got {args.max_upload_mb:g}')


def listen_socket(host: str, port: int) -> socket.socket:
  """A socket bound to host:port (uvicorn listens on it), so a taken port fails early."""
  try:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
  except OSError as e:
    raise cli.UsageError(f'cannot listen on {host}:{port}: {e.strerror or e}') from None
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
  except OSError as e:
    sock.close()
    raise cli.UsageError(f'cannot listen on {host}:{port}: {e.strerror or e}') from None
  return sock


def warm_up(inpainter: Inpainter) -> None:
  """Compiles the one shape `fill(batch_size=1)` runs, before the first request."""
  size = int(inpainter.config.model.image_size)
  images = np.zeros((1, size, size, 3), np.float32)
  jax.block_until_ready(inpainter(images, np.zeros((1, size, size, 1), np.float32)))


def main(argv: Sequence[str] | None = None) -> None:
  """Loads and compiles the network, then serves until interrupted."""
  args = build_parser().parse_args(argv)
  check_args(args)
  workdir_lib.load_config(args.workdir)  # a workdir that is no workdir fails before anything
  sock = listen_socket(args.host, args.port)
  try:
    inpainter = Inpainter.from_workdir(args.workdir, args.step)
    warm_up(inpainter)
    app = app_lib.create_app(
        inpainter, max_upload_bytes=int(args.max_upload_mb * MEGABYTE), queue_size=args.queue_size
    )
    host, port = sock.getsockname()[:2]
    url = f'http://{f"[{host}]" if ":" in host else host}:{port}/'
    api = app_lib.API_PATH[1:]
    print(f'serving {args.workdir} at {url} (API {url}{api}, docs {url}docs)', flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level='info')
    uvicorn.Server(config).run(sockets=[sock])
  finally:
    sock.close()


def run() -> None:
  """The console-script entry point (`lgnet-serve`), also what `python -m` runs."""
  host_memory.keep_freed_memory()  # before JAX starts its backend
  cli.run_cli(main)


if __name__ == '__main__':
  run()
