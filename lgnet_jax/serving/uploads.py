"""The server's uploads: the request-size limit, enforced as the bytes arrive, and the image and
mask decoded and checked, with errors that name the uploaded file rather than a temporary one."""

import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import fastapi
import numpy as np
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lgnet_jax import errors
from lgnet_jax.data import image_io
from lgnet_jax.serving import mask_checks
from lgnet_jax.serving.http_errors import ApiError, error_json

MEGABYTE = 1 << 20
# The API names the form field where the command line's warnings name its flag.
INVERT_HINTS = ('send invert_mask=true', 'send invert_mask=false')


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


def upload_label(upload: fastapi.UploadFile) -> str:
  """How messages name an upload: its file name, quoted, or `upload` when it has none."""
  name = errors.one_line(upload.filename or '')
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
    warnings += mask_checks.check_mask(mask, mask_name, invert, thresholded, INVERT_HINTS)
  except mask_checks.UnusableMaskError as e:
    raise ApiError(422, str(e)) from None
  return image, mask, warnings
