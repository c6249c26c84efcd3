"""Serves inpainting over HTTP: a JSON-error API and a page to paint the mask in a browser.

  python -m lgnet_jax.serve --workdir W [--host 127.0.0.1] [--port 8000]

The command line: checks its flags, binds the port and loads and compiles the network (one
input shape, before the first request), then runs the app of app.py under uvicorn until
interrupted. One Ctrl-C or SIGTERM stops accepting requests, drops the queued ones, stops the
running fill after its current network batch and exits 0; a second one, or one during
start-up, exits at once (130 for SIGINT, 143 for SIGTERM).
"""

import argparse
import contextlib
import copy
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence

import fastapi
import jax
import numpy as np
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from lgnet_jax import cli
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.models import first_stage as first_stage_lib
from lgnet_jax.runtime import host_memory, signals
from lgnet_jax.serving import app as app_lib
from lgnet_jax.serving.inference import Inpainter, add_allow_user_code
from lgnet_jax.serving.uploads import MEGABYTE
from lgnet_jax.serving.worker import Worker

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 8000
DEFAULTS = app_lib.Limits()
NO_AUTH_WARNING = (
    'warning: serving on {host}, which other machines can reach: the API has no '
    'authentication, so anyone who reaches it can use it (put it behind a reverse proxy '
    'that authenticates, or serve on 127.0.0.1)'
)


def build_parser() -> cli.ArgumentParser:
  parser = cli.ArgumentParser(
      prog='python -m lgnet_jax.serve', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument(
      '--workdir', required=True, help='training or import workdir (config.json and checkpoints/)'
  )
  parser.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  add_allow_user_code(parser)
  parser.add_argument(
      '--host',
      default=DEFAULT_HOST,
      help='address to listen on (default %(default)s: this machine only; 0.0.0.0 for all, '
      'with a warning: the API has no authentication)',
  )
  parser.add_argument('--port', type=int, default=DEFAULT_PORT, help='default %(default)s')
  parser.add_argument(
      '--max-upload-mb',
      type=float,
      default=DEFAULTS.max_upload_bytes / MEGABYTE,
      help='largest request body, image and mask together, in MiB (default %(default)g)',
  )
  parser.add_argument(
      '--max-pixels',
      type=int,
      default=DEFAULTS.max_pixels,
      help='largest image (and mask) in pixels, read from its header before decoding; a '
      'request at 50 million takes 1 to 2 GB while it runs (default %(default)d)',
  )
  parser.add_argument(
      '--queue-size',
      type=int,
      default=DEFAULTS.queue_size,
      help='requests that may wait or run at once; more get 503 (default %(default)s)',
  )
  parser.add_argument(
      '--request-timeout',
      type=float,
      default=DEFAULTS.request_timeout_s,
      help='seconds a request may wait and run before it is answered 504 and its work dropped '
      '(default %(default)g)',
  )
  parser.add_argument(
      '--body-timeout',
      type=float,
      default=DEFAULTS.body_timeout_s,
      help='longest pause, in seconds, while a request body arrives; then 408 '
      '(default %(default)g)',
  )
  return parser


def check_args(args: argparse.Namespace) -> None:
  if not 0 <= args.port <= 65535:
    raise cli.UsageError(f'--port must be between 0 and 65535, got {args.port}')
  if args.queue_size < 1:
    raise cli.UsageError(f'--queue-size must be at least 1, got {args.queue_size}')
  if args.max_pixels < 1:
    raise cli.UsageError(f'--max-pixels must be at least 1, got {args.max_pixels}')
  for flag in ('max_upload_mb', 'request_timeout', 'body_timeout'):
    value = getattr(args, flag)
    if not 0 < value < float('inf'):
      raise cli.UsageError(f'--{flag.replace("_", "-")} must be above 0, got {value:g}')


def limits_from(args: argparse.Namespace) -> app_lib.Limits:
  return app_lib.Limits(
      max_upload_bytes=int(args.max_upload_mb * MEGABYTE),
      max_pixels=args.max_pixels,
      queue_size=args.queue_size,
      request_timeout_s=args.request_timeout,
      body_timeout_s=args.body_timeout,
  )


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


def is_loopback(host: str) -> bool:
  """Whether `host` (a bound address) is reachable from this machine only."""
  try:
    return ipaddress.ip_address(host.split('%')[0]).is_loopback
  except ValueError:
    return False


def warm_up(inpainter: Inpainter) -> None:
  """Compiles the one shape `fill(batch_size=1)` runs, before the first request."""
  size = int(inpainter.config.model.image_size)
  images = np.zeros((1, size, size, 3), np.float32)
  jax.block_until_ready(inpainter(images, np.zeros((1, size, size, 1), np.float32)))


class Server(uvicorn.Server):
  """uvicorn's server, whose first Ctrl-C or SIGTERM also stops the worker's jobs and which
  then exits normally (uvicorn would raise the signal again once stopped); a second signal
  ends the process at once (128 + its number), since the server has nothing to save."""

  def __init__(self, config: uvicorn.Config, worker: Worker):
    super().__init__(config)
    self.worker = worker

  def handle_exit(self, sig: int, frame) -> None:
    if self.should_exit:
      sys.stderr.write(f'stopped by a second {signal.Signals(sig).name}, at once\n')
      sys.stderr.flush()
      os._exit(128 + sig)  # pylint: disable=protected-access  # no cleanup is left to do
    super().handle_exit(sig, frame)
    self.worker.stop_all()

  @contextlib.contextmanager
  def capture_signals(self) -> Iterator[None]:
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
    try:
      yield
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)


def log_config() -> dict:
  """uvicorn's logging, with the app's messages (lgnet_jax.serving) printed the same way."""
  config = copy.deepcopy(LOGGING_CONFIG)
  config['loggers']['lgnet_jax.serving'] = {
      'handlers': ['default'],
      'level': 'INFO',
      'propagate': False,
  }
  return config


def serve(app: fastapi.FastAPI, sock: socket.socket) -> None:
  """Runs `app` under uvicorn on the bound `sock` until a signal stops it."""
  host, port = sock.getsockname()[:2]
  config = uvicorn.Config(app, host=host, port=port, log_level='info', log_config=log_config())
  signals.end_startup()  # from here a signal stops the server cleanly
  Server(config, app.state.worker).run(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> None:
  """Loads and compiles the network, then serves until interrupted."""
  args = build_parser().parse_args(argv)
  check_args(args)
  # A workdir that is no workdir, or whose first stage is not one network, fails before anything.
  model = workdir_lib.load_config(args.workdir).model
  first_stage_lib.check_one_network(model, args.allow_user_code, f'--workdir {args.workdir}')
  sock = listen_socket(args.host, args.port)
  try:
    inpainter = Inpainter.from_workdir(args.workdir, args.step, args.allow_user_code)
    warm_up(inpainter)
    host_memory.release_freed_memory()  # what loading and compiling freed
    app = app_lib.create_app(inpainter, limits_from(args))
    host, port = sock.getsockname()[:2]
    url = f'http://{f"[{host}]" if ":" in host else host}:{port}/'
    api = app_lib.API_PATH[1:]
    if not is_loopback(host):
      print(NO_AUTH_WARNING.format(host=host), file=sys.stderr, flush=True)
    print(f'serving {args.workdir} at {url} (API {url}{api}, docs {url}docs)', flush=True)
    serve(app, sock)
  finally:
    sock.close()


def run() -> None:
  """The console-script entry point (`lgnet-serve`), also what `python -m` runs."""
  signals.exit_during_startup()
  host_memory.keep_freed_memory()  # before JAX starts its backend; given back when idle (app.py)
  cli.run_cli(main)


if __name__ == '__main__':
  run()
