"""The server's FastAPI app: the inpainting API, the page to paint the mask, and /healthz.

POST /api/v1/inpaint takes a multipart form (image; mask, white = hole; strategy; crop_margin;
invert_mask) and answers the filled image as PNG, every known pixel bit-identical. GET / is the
page of lgnet_jax/serving/web/, GET /docs the API's documentation (its assets served from here,
so it works offline), GET /healthz the state of the queue.

Fills run on the one worker thread (worker.py); a request that finds every place of the queue
taken is refused with 503 and Retry-After. Bad input is a 4xx with a one-line JSON body
`{"error": "..."}`; a failure inside the network is a 500 of the same shape, and the server
goes on serving (http_errors.py).
"""

import contextlib
import io
import logging
import pathlib
from collections.abc import AsyncIterator
from typing import Annotated, Any, Protocol

import fastapi
import fastapi_offline
import numpy as np
from fastapi import responses, staticfiles
from PIL import Image
from starlette.concurrency import run_in_threadpool

from lgnet_jax import errors
from lgnet_jax.serving import http_errors, photo, uploads
from lgnet_jax.serving.http_errors import ApiError
from lgnet_jax.serving.worker import Worker

WEB_DIR = pathlib.Path(__file__).resolve().parent / 'web'
API_PATH = '/api/v1/inpaint'
WARNINGS_HEADER = 'X-Inpaint-Warnings'
PNG_COMPRESS_LEVEL = 3  # zlib level: a few times faster to write than the default 6
logger = logging.getLogger(__name__)

INPAINT_DESCRIPTION = """\
Fills the holes of `mask` in `image` and answers the result as `image/png`, the size of the
image; every known pixel is bit-identical to the decoded upload. Warnings about the mask (no
hole, mostly hole, not binary) come in the `X-Inpaint-Warnings` header, `; `-separated; a mask
with no hole answers the image unchanged. Errors are `{"error": "one line"}`: 400 an upload
that is not an image, 413 a request over the upload limit, 422 a missing field, a bad value, a
mask of another size than the image or a mask with no known pixel, 503 a full queue (see
Retry-After), 500 a failure inside the network."""


class Filler(Protocol):
  """What the server needs of an Inpainter (tests pass a fake)."""

  def fill(
      self, image: np.ndarray, mask: np.ndarray, strategy: str, crop_margin: int, batch_size: int
  ) -> np.ndarray:
    ...


def header_safe(text: str) -> str:
  """`text` as one line of printable ASCII, which an HTTP header can carry."""
  return ''.join(c if ' ' <= c <= '~' else '?' for c in errors.one_line(text))


def encode_png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(
      buffer, format='PNG', compress_level=PNG_COMPRESS_LEVEL
  )
  return buffer.getvalue()


async def fill_request(
    inpainter: Filler,
    worker: Worker,
    upload_files: tuple[fastapi.UploadFile, fastapi.UploadFile],
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
    image, mask, warnings = await run_in_threadpool(uploads.read_inputs, *upload_files, invert)
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
    raise ApiError(500, f'inpainting failed: {type(e).__name__}: {errors.one_line(e)}') from None


def add_pages(app: fastapi.FastAPI, worker: Worker) -> None:
  """The page at /, its files at /web/, and /healthz."""
  app.mount('/web', staticfiles.StaticFiles(directory=WEB_DIR), name='web')

  @app.get('/', include_in_schema=False)
  async def page() -> responses.FileResponse:
    return responses.FileResponse(WEB_DIR / 'index.html')

  @app.get('/healthz', summary='Whether the server is up, and its queue')
  async def healthz() -> dict[str, Any]:
    return {'status': 'ok', 'queue': worker.taken, 'queue_size': worker.capacity}


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
  http_errors.add_error_handlers(app)
  app.add_middleware(uploads.UploadLimit, limit=max_upload_bytes)
  add_pages(app, worker)
  add_api(app, inpainter, worker)
  return app
