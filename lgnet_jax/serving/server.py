"""Serves inpainting over HTTP: a JSON-error API and a page to paint the mask in a browser.

  python -m lgnet_jax.serve --workdir W [--host 127.0.0.1] [--port 8000]

POST /api/v1/inpaint takes a multipart form (image; mask, white = hole; strategy; crop_margin;
invert_mask) and answers the filled image as PNG, every known pixel bit-identical. GET / is the
page of lgnet_jax/serving/web/, GET /docs the API's documentation (its assets served from here, so it
works offline), GET /healthz the state of the queue.

One worker thread runs the network, in arrival order, so one input shape compiles (at start-up)
and requests never block the event loop. A request that finds --queue-size requests already
waiting or running is refused with 503 and Retry-After. Bad input is a 4xx with a one-line JSON
body `{"error": "..."}`; a failure inside the network is a 500 of the same shape, and the server
goes on serving.
"""

import argparse
import asyncio
import concurrent.futures
import contextlib
import io
import logging
import math
import pathlib
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any, Protocol

import fastapi
import fastapi_offline
import jax
import numpy as np
import uvicorn
from fastapi import responses, staticfiles
from fastapi.exceptions import RequestValidationError
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lgnet_jax import cli, errors
from lgnet_jax.runtime import host_memory
from lgnet_jax.data import image_io
from lgnet_jax.serving import photo
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.serving.inference import Inpainter

WEB_DIR = pathlib.Path(__file__).resolve().parent / 'web'
API_PATH = '/api/v1/inpaint'
WARNINGS_HEADER = 'X-Inpaint-Warnings'
DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_QUEUE_SIZE = 8
MEGABYTE = 1 << 20
PNG_COMPRESS_LEVEL = 3  # zlib level: a few times faster to write than the default 6
# The API names the form field where the command line's warnings name its flag.
INVERT_HINTS = ('send invert_mask=true', 'send invert_mask=false')
# Besides cli.UsageError, the errors that `cli.run_cli` reports as one `error:` line (exit 2).
EXPECTED_ERRORS = (image_io.ImageError, workdir_lib.WorkdirError)
logger = logging.getLogger(__name__)


class Filler(Protocol):
  """What the server needs of an Inpainter (tests pass a fake)."""

  def fill(
      self, image: np.ndarray, mask: np.ndarray, strategy: str, crop_margin: int, batch_size: int
  ) -> np.ndarray:
    ...


class ApiError(Exception):
  """A request answered with `status` and `{"error": message}`."""

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status = status
    self.message = errors.one_line(message)
    self.headers = headers


class Worker:
  """One thread runs every fill, in arrival order; at most `capacity` requests hold a place.

  A request takes its place before its uploads are decoded and gives it back when its fill ends
  (even when the client has gone by then), so `taken` counts the work the server has accepted.
  `taken` is changed on the event loop's thread only.
  """

  def __init__(self, capacity: int):
    self.capacity = capacity
    self.taken = 0
    self._seconds = 1.0  # a running mean of one fill's time, for Retry-After
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='lgnet-inpaint')

  def take(self) -> bool:
    """Takes a place; False when all `capacity` places are taken."""
    if self.taken >= self.capacity:
      return False
    self.taken += 1
    return True

  def give_back(self) -> None:
    self.taken -= 1

  def retry_after(self) -> int:
    """Seconds until a place is likely free: the queued fills at the mean time of one."""
    return max(1, math.ceil(self._seconds * self.taken))

  def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
    start = time.monotonic()
    try:
      return fn(*args)
    finally:
      self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - start)

  async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) on the worker thread; the caller's place is given back when it ends."""
    loop = asyncio.get_running_loop()

    def done(_: concurrent.futures.Future) -> None:
      with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
        loop.call_soon_threadsafe(self.give_back)

    future = self._executor.submit(self._timed, fn, *args)
    future.add_done_callback(done)
    return await asyncio.wrap_future(future)

  def shutdown(self) -> None:
    self._executor.shutdown(wait=False, cancel_futures=True)


def one_line(text: str) -> str:
  return errors.one_line(text)


def header_safe(text: str) -> str:
  """`text` as one line of printable ASCII, which an HTTP header can carry."""
  return ''.join(c if ' ' <= c <= '~' else '?' for c in one_line(text))


def upload_label(upload: fastapi.UploadFile) -> str:
  """How messages name an upload: its file name, quoted, or `upload` when it has none."""
  name = one_line(upload.filename or '')
  return f"'{name}'" if name else 'upload'


def read_upload(upload: fastapi.UploadFile, field: str, loader: Callable[[pathlib.Path], Any]):
  """`loader(path)` on the upload's bytes, saved to a temporary file (image_io reads paths).

  An ImageError becomes a 400 naming the upload instead of the temporary path.
  """
  with tempfile.TemporaryDirectory(prefix='lgnet-serve-') as folder:
    path = pathlib.Path(folder) / field
    upload.file.seek(0)
    with path.open('wb') as out:
      shutil.copyfileobj(upload.file, out)
    try:
      return loader(path)
    except image_io.ImageError as e:
      raise ApiError(400, str(e).replace(str(path), upload_label(upload))) from None


def read_inputs(
    image_upload: fastapi.UploadFile, mask_upload: fastapi.UploadFile, invert: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """The image (H, W, 3) uint8, its mask (H, W) with 1 = hole, and the mask's warnings.

  A mask of another size or with no known pixel is a 422: unlike the command line, the API
  resizes nothing, so what is filled is exactly what the client drew.
  """
  image = read_upload(image_upload, 'image', image_io.load_image)
  mask, thresholded = read_upload(
      mask_upload, 'mask', lambda path: image_io.load_mask(path, invert=invert)
  )
  image_name, mask_name = upload_label(image_upload), upload_label(mask_upload)
  height, width = image.shape[:2]
  if mask.shape != (height, width):
    raise ApiError(
        422,
        f'mask {mask_name} is {mask.shape[1]}x{mask.shape[0]} but image {image_name} is '
        f'{width}x{height}; send a mask of the same size as the image',
    )
  warnings = [f'mask {mask_name} is not binary; thresholded at 0.5'] if thresholded else []
  try:
    warnings += photo.check_mask(mask, mask_name, invert, thresholded, INVERT_HINTS)
  except photo.PhotoError as e:
    raise ApiError(422, str(e)) from None
  return image, mask, warnings


def encode_png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(
      buffer, format='PNG', compress_level=PNG_COMPRESS_LEVEL
  )
  return buffer.getvalue()


async def fill_request(
    inpainter: Filler,
    worker: Worker,
    uploads: tuple[fastapi.UploadFile, fastapi.UploadFile],
    options: tuple[str, int, bool],
) -> fastapi.Response:
  """Decodes the uploads, runs the fill on the worker and answers the PNG (holding a place)."""
  strategy, crop_margin, invert = options
  try:
    photo.check_options(strategy, crop_margin)
  except photo.PhotoError as e:
    raise ApiError(422, str(e)) from None
  if not worker.take():
    raise ApiError(
        503,
        f'the server is busy: {worker.capacity} requests are already waiting or running; '
        'try again later',
        {'Retry-After': str(worker.retry_after())},
    )
  try:
    image, mask, warnings = await run_in_threadpool(read_inputs, *uploads, invert)
  except BaseException:
    worker.give_back()
    raise
  if mask.any():
    result = await run_filler(inpainter, worker, image, mask, strategy, crop_margin)
  else:
    worker.give_back()  # no hole: the image is answered as it is
    result = image
  headers = {WARNINGS_HEADER: header_safe('; '.join(warnings))} if warnings else {}
  png = await run_in_threadpool(encode_png, result)
  return fastapi.Response(png, media_type='image/png', headers=headers)


async def run_filler(
    inpainter: Filler,
    worker: Worker,
    image: np.ndarray,
    mask: np.ndarray,
    strategy: str,
    crop_margin: int,
) -> np.ndarray:
  """`inpainter.fill` on the worker thread; a failure in it is a 500 and the server goes on."""
  try:
    return await worker.run(inpainter.fill, image, mask, strategy, crop_margin, 1)
  except errors.UserError as e:
    raise ApiError(422, str(e)) from None
  except Exception as e:  # pylint: disable=broad-except  # answered as a 500, logged in full
    logger.exception('inpainting failed')
    raise ApiError(500, f'inpainting failed: {type(e).__name__}: {one_line(e)}') from None


def validation_message(exc: RequestValidationError) -> str:
  """FastAPI's list of validation errors as one line naming the fields."""
  missing = [str(e['loc'][-1]) for e in exc.errors() if e.get('type') == 'missing']
  parts = [f'missing form field{"s" * (len(missing) > 1)} {", ".join(missing)}'] if missing else []
  for e in exc.errors():
    if e.get('type') != 'missing':
      given = e.get('input')
      value = f' (got {given!r:.60})' if isinstance(given, (str, int)) else ''
      parts.append(f'form field {e["loc"][-1]}: {one_line(e["msg"])}{value}')
  return '; '.join(parts) or 'invalid request'


def error_json(status: int, message: str, headers: dict[str, str] | None = None):
  return responses.JSONResponse({'error': one_line(message)}, status, headers=headers)


def add_error_handlers(app: fastapi.FastAPI) -> None:
  """Every error is `{"error": "one line"}`: bad input 4xx, a failure 500."""

  @app.exception_handler(ApiError)
  async def api_error(_, exc: ApiError):
    return error_json(exc.status, exc.message, exc.headers)

  @app.exception_handler(RequestValidationError)
  async def invalid(_, exc: RequestValidationError):
    return error_json(422, validation_message(exc))

  @app.exception_handler(StarletteHTTPException)
  async def http_error(_, exc: StarletteHTTPException):
    return error_json(exc.status_code, str(exc.detail), exc.headers)

  @app.exception_handler(Exception)
  async def failure(_, exc: Exception):
    return error_json(500, f'internal error: {type(exc).__name__}: {exc}')


class _TooLarge(Exception):
  """Raised into the app when a request body passes the upload limit."""


class UploadLimit:
  """ASGI middleware: a request body over `limit` bytes is answered 413 with a JSON error.

  A Content-Length over the limit is refused before any byte is read; otherwise the bytes are
  counted as they arrive and reading stops at the limit, so no request holds more than `limit`
  bytes. Whatever the app would have answered to a cut-off body is dropped for the 413.
  """

  def __init__(self, app: ASGIApp, limit: int):
    self.app = app
    self.limit = limit

  async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
    message = (
        f'the request is larger than the upload limit of {self.limit / MEGABYTE:g} MiB (image '
        'and mask together; the server sets it with --max-upload-mb)'
    )
    await error_json(413, message)(scope, receive, send)

  async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    declared = Headers(scope=scope).get('content-length', '')
    if declared.isdigit() and int(declared) > self.limit:
      return await self.refuse(scope, receive, send)
    received, over, started = 0, False, False

    async def counted_receive() -> Message:
      nonlocal received, over
      message = await receive()
      if message['type'] == 'http.request':
        received += len(message.get('body', b''))
        if received > self.limit:
          over = True
          raise _TooLarge(f'request body over {self.limit} bytes')
      return message

    async def guarded_send(message: Message) -> None:
      nonlocal started
      if not over:  # past the limit the 413 below replaces the app's answer
        started = started or message['type'] == 'http.response.start'
        await send(message)

    try:
      await self.app(scope, counted_receive, guarded_send)
    except Exception:  # pylint: disable=broad-except  # the app may wrap _TooLarge in another
      if not over:
        raise
    if over and not started:
      await self.refuse(scope, receive, send)


def add_pages(app: fastapi.FastAPI, worker: Worker) -> None:
  """The page at /, its files at /web/, and /healthz."""
  app.mount('/web', staticfiles.StaticFiles(directory=WEB_DIR), name='web')

  @app.get('/', include_in_schema=False)
  async def page() -> responses.FileResponse:
    return responses.FileResponse(WEB_DIR / 'index.html')

  @app.get('/healthz', summary='Whether the server is up, and its queue')
  async def healthz() -> dict[str, Any]:
    return {'status': 'ok', 'queue': worker.taken, 'queue_size': worker.capacity}


INPAINT_DESCRIPTION = """\
Fills the holes of `mask` in `image` and answers the result as `image/png`, the size of the
image; every known pixel is bit-identical to the decoded upload. Warnings about the mask (no
hole, mostly hole, not binary) come in the `X-Inpaint-Warnings` header, `; `-separated; a mask
with no hole answers the image unchanged. Errors are `{"error": "one line"}`: 400 an upload
that is not an image, 413 a request over the upload limit, 422 a missing field, a bad value, a
mask of another size than the image or a mask with no known pixel, 503 a full queue (see
Retry-After), 500 a failure inside the network."""


def add_api(app: fastapi.FastAPI, inpainter: Filler, worker: Worker) -> None:
  """POST /api/v1/inpaint."""
  png = {200: {'content': {'image/png': {}}, 'description': 'the filled image'}}

  @app.post(
      API_PATH,
      response_class=fastapi.Response,
      responses=png,
      summary='Inpaint an image',
      description=INPAINT_DESCRIPTION,
  )
  async def inpaint(
      image: Annotated[fastapi.UploadFile, fastapi.File(description='the photo (any format)')],
      mask: Annotated[
          fastapi.UploadFile,
          fastapi.File(description='white = hole, black = keep; the size of the image'),
      ],
      strategy: Annotated[
          str, fastapi.Form(description=f'one of {", ".join(photo.STRATEGIES)}')
      ] = photo.DEFAULT_STRATEGY,
      crop_margin: Annotated[
          int, fastapi.Form(description='pixels of context around the holes when cropping')
      ] = photo.DEFAULT_CROP_MARGIN,
      invert_mask: Annotated[bool, fastapi.Form(description='black = hole, white = keep')] = False,
  ) -> fastapi.Response:
    return await fill_request(
        inpainter, worker, (image, mask), (strategy, crop_margin, invert_mask)
    )


def create_app(inpainter: Filler, *, max_upload_bytes: int, queue_size: int) -> fastapi.FastAPI:
  """The server's app around `inpainter` (an Inpainter, or anything with its `fill`).

  Request bodies over `max_upload_bytes` are refused with 413 as their bytes arrive (at once
  when Content-Length says so); at most `queue_size` requests wait or run at a time.
  """
  worker = Worker(queue_size)

  @contextlib.asynccontextmanager
  async def lifespan(_: fastapi.FastAPI) -> AsyncIterator[None]:
    yield
    worker.shutdown()

  app = fastapi_offline.FastAPIOffline(
      title='LGNet inpainting', version='1', redoc_url=None, lifespan=lifespan
  )
  app.state.worker = worker
  add_error_handlers(app)
  app.add_middleware(UploadLimit, limit=max_upload_bytes)
  add_pages(app, worker)
  add_api(app, inpainter, worker)
  return app


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
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


def check_args(args: argparse.Namespace) -> None:
  if not 0 <= args.port <= 65535:
    raise cli.UsageError(f'--port must be between 0 and 65535, got {args.port}')
  if args.queue_size < 1:
    raise cli.UsageError(f'--queue-size must be at least 1, got {args.queue_size}')
  if not args.max_upload_mb > 0:
    raise cli.UsageError(f'--max-upload-mb must be above 0, got {args.max_upload_mb:g}')


def main(argv: Sequence[str] | None = None) -> None:
  """Loads and compiles the network, then serves until interrupted."""
  args = build_parser().parse_args(argv)
  check_args(args)
  workdir_lib.load_config(args.workdir)  # a workdir that is no workdir fails before anything
  sock = listen_socket(args.host, args.port)
  try:
    inpainter = Inpainter.from_workdir(args.workdir, args.step)
    warm_up(inpainter)
    app = create_app(
        inpainter, max_upload_bytes=int(args.max_upload_mb * MEGABYTE), queue_size=args.queue_size
    )
    host, port = sock.getsockname()[:2]
    url = f'http://{f"[{host}]" if ":" in host else host}:{port}/'
    print(f'serving {args.workdir} at {url} (API {url}{API_PATH[1:]}, docs {url}docs)', flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level='info')
    uvicorn.Server(config).run(sockets=[sock])
  finally:
    sock.close()


def run() -> None:
  """The console-script entry point (`lgnet-serve`), also what `python -m` runs."""
  host_memory.keep_freed_memory()  # before JAX starts its backend
  cli.run_cli(main, expected=EXPECTED_ERRORS)


if __name__ == '__main__':
  run()
