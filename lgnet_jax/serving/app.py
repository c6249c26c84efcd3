"""The server's FastAPI app: the inpainting API, the page to paint the mask, and /healthz.

POST /api/v1/inpaint takes a multipart form (image; mask, white = hole; strategy; crop_margin;
invert_mask; dilate_mask; feather) and answers the filled image as PNG, every pixel outside the
holes (and the feather band) bit-identical. GET / is the
page of lgnet_jax/serving/web/, GET /docs the API's documentation (its assets served from here,
so it works offline), GET /healthz the state of the queue.

The image's and mask's headers are checked against the pixel limit as the request arrives;
decoding, filling and encoding run on the one worker thread (worker.py), one request at a time.
A request that finds every place of the queue taken is refused with 503 and Retry-After; one
whose client goes away is dropped, and one past the server's time limit is answered 504. Bad
input is a 4xx with a one-line JSON body `{"error": "..."}`; a failure inside the network is a
500 of the same shape, and the server goes on serving (http_errors.py).
"""

import contextlib
import dataclasses
import functools
import io
import logging
import pathlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Protocol

import fastapi
import fastapi_offline
import numpy as np
from fastapi import responses, staticfiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from lgnet_jax import errors
from lgnet_jax.runtime import host_memory
from lgnet_jax.serving import http_errors, mask_edits, photo, uploads
from lgnet_jax.serving import worker as worker_lib
from lgnet_jax.serving.http_errors import ApiError
from lgnet_jax.serving.uploads import MEGABYTE, MEGAPIXEL
from lgnet_jax.serving.worker import Worker

WEB_DIR = pathlib.Path(__file__).resolve().parent / 'web'
API_PATH = '/api/v1/inpaint'
WARNINGS_HEADER = 'X-Inpaint-Warnings'
PNG_COMPRESS_LEVEL = 3  # zlib level: a few times faster to write than the default 6
CLIENT_CLOSED = 499  # the status logged for a request whose client went away (as nginx does)
logger = logging.getLogger(__name__)

INPAINT_DESCRIPTION = """\
Fills the holes of `mask` in `image` and answers the result as `image/png`, the size of the
image; every known pixel is bit-identical to the decoded upload (with `feather`, every pixel
farther than `feather` from a hole). Warnings about the mask (no
hole, mostly hole, not binary) come in the `X-Inpaint-Warnings` header, `; `-separated; a mask
with no hole answers the image unchanged. Errors are `{"error": "one line"}`: 400 an upload
that is not an image, 408 a request body that stopped arriving, 413 a request over the upload
limit or an image over the pixel limit, 422 a missing field, a bad value, a mask of another
size than the image or a mask with no known pixel, 503 a full queue (see Retry-After) or a
server that is stopping, 504 a request past the server's time limit, 500 a failure inside the
network."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask of the server; server.py's flags set them."""

  max_upload_bytes: int = 20 * MEGABYTE  # the request body, image and mask together
  # Pixels per image, read from the header before decoding; 50 megapixels admits an 8660x5773
  # photo (phones take 12 to 50). Measured with the ngf-16 network, one request at the limit
  # raised the server's memory by 0.9 GB (a small hole) to 1.7 GB (4,100 dots, 133 crops), and
  # the server went back to its idle 0.45 GB afterwards.
  max_pixels: int = 50 * MEGAPIXEL
  queue_size: int = 8  # requests waiting or running at once; more are refused with 503
  request_timeout_s: float = 120.0  # from arrival to answer; then 504 and the work is dropped
  body_timeout_s: float = 30.0  # the longest pause while a request body arrives; then 408


class Filler(Protocol):
  """What the server needs of an Inpainter (tests pass a fake)."""

  def fill(
      self,
      image: np.ndarray,
      mask: np.ndarray,
      strategy: str,
      crop_margin: int,
      batch_size: int,
      stop: threading.Event | None = None,
      *,
      dilate_mask: int = 0,
      feather: int = 0,
  ) -> np.ndarray:
    ...


@dataclasses.dataclass(frozen=True)
class FillOptions:
  """A request's options (the form fields besides the files)."""

  strategy: str = photo.DEFAULT_STRATEGY
  crop_margin: int = photo.DEFAULT_CROP_MARGIN
  invert_mask: bool = False
  dilate_mask: int = 0
  feather: int = 0

  def check(self) -> None:
    """PhotoError or MaskOptionError naming the first bad value."""
    photo.check_options(self.strategy, self.crop_margin)
    mask_edits.MaskOptions(self.dilate_mask, self.feather)


def header_safe(text: str) -> str:
  """`text` as one line of printable ASCII, which an HTTP header can carry."""
  return ''.join(c if ' ' <= c <= '~' else '?' for c in errors.one_line(text))


def encode_png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(
      buffer, format='PNG', compress_level=PNG_COMPRESS_LEVEL
  )
  return buffer.getvalue()


def fill_job(
    inpainter: Filler,
    upload_files: tuple[fastapi.UploadFile, fastapi.UploadFile],
    options: FillOptions,
    stop: threading.Event,
) -> tuple[bytes, list[str]]:
  """The worker's part of a request: decode, check, fill, encode; the PNG and the warnings.

  A mask with no hole answers the image as it is, without running the network.
  """
  image, mask, warnings = uploads.read_inputs(*upload_files, options.invert_mask)
  edits = {'dilate_mask': options.dilate_mask, 'feather': options.feather}
  try:
    result = (
        inpainter.fill(image, mask, options.strategy, options.crop_margin, 1, stop, **edits)
        if mask.any()
        else image
    )
  except photo.Stopped as e:
    logger.info('a fill was %s', e)
    raise
  del image, mask  # the PNG is written with only the result held
  return encode_png(result), warnings


async def fill_request(
    request: fastapi.Request,
    inpainter: Filler,
    worker: Worker,
    limits: Limits,
    upload_files: tuple[fastapi.UploadFile, fastapi.UploadFile],
    options: FillOptions,
) -> fastapi.Response:
  """Checks the options and the pixel limit, then runs `fill_job` on the worker in a place."""
  deadline = time.monotonic() + limits.request_timeout_s
  try:
    options.check()
  except errors.UserError as e:
    raise ApiError(422, str(e)) from None
  for upload, field in zip(upload_files, ('image', 'mask')):
    await run_in_threadpool(uploads.check_pixels, upload, field, limits.max_pixels)
  if worker.stopping:
    raise ApiError(503, 'the server is stopping')
  if not worker.take():
    raise ApiError(
        503,
        f'the server is busy: {worker.capacity} requests are already waiting or running; '
        'try again later',
        {'Retry-After': str(worker.retry_after())},
    )
  job = functools.partial(fill_job, inpainter, upload_files, options)
  png, warnings = await run_job(request, worker, limits, job, deadline)
  headers = {WARNINGS_HEADER: header_safe('; '.join(warnings))} if warnings else {}
  return fastapi.Response(png, media_type='image/png', headers=headers)


async def run_job(
    request: fastapi.Request,
    worker: Worker,
    limits: Limits,
    job: Callable[[threading.Event], Any],
    deadline: float,
) -> Any:
  """`job` on the worker, in the place taken; its result, or its failure as an HTTP error.

  A failure inside the network is a 500 and the server goes on. A request whose client has
  gone, past its deadline or caught by the server stopping leaves the queue.
  """
  try:
    return await worker.run(job, request.is_disconnected, deadline)
  except ApiError:
    raise
  except worker_lib.TimedOut:
    raise ApiError(
        504,
        f"the request took longer than the server's limit of {limits.request_timeout_s:g} s "
        '(the server sets it with --request-timeout); its work was dropped',
    ) from None
  except (worker_lib.Stopping, photo.Stopped):
    raise ApiError(503, 'the server is stopping; the request was dropped') from None
  except worker_lib.ClientGone:
    raise ApiError(CLIENT_CLOSED, 'the client closed the connection') from None
  except errors.UserError as e:
    raise ApiError(422, str(e)) from None
  except Exception as e:  # pylint: disable=broad-except  # answered as a 500, logged in full
    logger.exception('inpainting failed')
    raise ApiError(500, f'inpainting failed: {type(e).__name__}: {errors.one_line(e)}') from None


def add_pages(app: fastapi.FastAPI, worker: Worker) -> None:
  """The page at /, its files at /web/, and /healthz."""
  app.mount('/web', staticfiles.StaticFiles(directory=WEB_DIR), name='web')

  @app.get('/', include_in_schema=False)
  async def page() -> responses.FileResponse:
    return responses.FileResponse(WEB_DIR / 'index.html')

  @app.get('/healthz', summary='Whether the server is up, and its queue')
  async def healthz() -> dict[str, Any]:
    return {
        'status': 'stopping' if worker.stopping else 'ok',
        'queue': worker.taken,
        'queue_size': worker.capacity,
        'running': worker.running,
    }


def add_api(app: fastapi.FastAPI, inpainter: Filler, worker: Worker, limits: Limits) -> None:
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
      request: fastapi.Request,
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
      dilate_mask: Annotated[
          int,
          fastapi.Form(
              description='grow every hole by a disk of this many pixels before filling '
              f'(0 to {mask_edits.MAX_PIXELS})'
          ),
      ] = 0,
      feather: Annotated[
          int,
          fastapi.Form(
              description='fill a band of this many pixels around the holes too and blend it '
              "in, the fill's weight falling from 1 at the hole's edge to 0 at this distance: "
              'the band changes by design, every pixel beyond it is bit-identical '
              f'(0 to {mask_edits.MAX_PIXELS})'
          ),
      ] = 0,
  ) -> fastapi.Response:
    options = FillOptions(strategy, crop_margin, invert_mask, dilate_mask, feather)
    return await fill_request(request, inpainter, worker, limits, (image, mask), options)


def create_app(inpainter: Filler, limits: Limits = Limits()) -> fastapi.FastAPI:
  """The server's app around `inpainter` (an Inpainter, or anything with its `fill`).

  Request bodies over `limits.max_upload_bytes` are refused with 413 as their bytes arrive (at
  once when Content-Length says so); at most `limits.queue_size` requests wait or run at once.
  `app.state.worker.stop_all()` drops the queued work and stops the running fill (server.py
  calls it on Ctrl-C or SIGTERM).
  """
  # The server keeps freed memory mapped while it works (server.py), which halves a network
  # pass on the CPU (ngf-16 at batch 1: 0.58 -> 0.28 s, 117k -> 4k page faults a pass), and
  # gives it back whenever its queue empties.
  worker = Worker(limits.queue_size, on_idle=host_memory.release_freed_memory)

  @contextlib.asynccontextmanager
  async def lifespan(_: fastapi.FastAPI) -> AsyncIterator[None]:
    yield
    worker.shutdown()

  app = fastapi_offline.FastAPIOffline(
      title='LGNet inpainting', version='1', redoc_url=None, lifespan=lifespan
  )
  app.state.worker = worker
  http_errors.add_error_handlers(app)
  app.add_middleware(
      uploads.UploadLimit, limit=limits.max_upload_bytes, timeout_s=limits.body_timeout_s
  )
  add_pages(app, worker)
  add_api(app, inpainter, worker, limits)
  return app
