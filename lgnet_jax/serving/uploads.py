"""The server's uploads: the request-size limit and the body's read timeout, enforced as the bytes
arrive; the pixel limit, checked from the images' headers before anything is decoded; and the
image and mask decoded and checked, with errors that name the uploaded file rather than a
temporary one."""

import asyncio
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import fastapi
import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lgnet_jax import errors
from lgnet_jax.data import image_io
from lgnet_jax.serving import mask_checks
from lgnet_jax.serving.http_errors import ApiError, error_json

MEGABYTE = 1 << 20
MEGAPIXEL = 1_000_000
LABEL_CHARS = 60  # an upload's file name is cut to this in messages
CLOSE = {'Connection': 'close'}  # a refusal that leaves a body unread ends the connection
# The API names the form field where the command line's warnings name its flag.
INVERT_HINTS = ('send invert_mask=true', 'send invert_mask=false')


class _Refused(Exception):
  """Raised into the app when a request body passes the upload limit or stops arriving."""


class UploadLimit:
  """ASGI middleware: a request body over `limit` bytes is answered 413, one whose next bytes
  do not come within `timeout_s` seconds 408, each with a JSON error.

  A Content-Length over the limit is refused before any byte is read; otherwise the bytes are
  counted as they arrive and reading stops at the limit, so no request holds more than `limit`
  bytes. The timeout is between two reads of the body (as a reverse proxy's body timeout), so a
  client that declares more than it sends does not hold its connection forever. Whatever the
  app would have answered to a cut-off body is dropped for the refusal.
  """

  def __init__(self, app: ASGIApp, limit: int, timeout_s: float):
    self.app = app
    self.limit = limit
    self.timeout_s = timeout_s

  def too_large(self) -> tuple[int, str]:
    return 413, (
        f'the request is larger than the upload limit of {self.limit / MEGABYTE:g} MiB (image '
        'and mask together; the server sets it with --max-upload-mb)'
    )

  def too_slow(self) -> tuple[int, str]:
    return 408, (
        f'the request body stopped arriving: no bytes for {self.timeout_s:g} s (the server '
        'sets this with --body-timeout)'
    )

  async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    declared = Headers(scope=scope).get('content-length', '')
    if declared.isdigit() and int(declared) > self.limit:  # the body is left unread: close
      return await error_json(*self.too_large(), CLOSE)(scope, receive, send)
    received, refusal, started, body_done = 0, None, False, False

    async def guarded_receive() -> Message:
      nonlocal received, refusal, body_done
      if body_done:  # afterwards the app only listens for the client going away
        return await receive()
      try:
        message = await asyncio.wait_for(receive(), self.timeout_s)
      except TimeoutError:
        refusal = self.too_slow()
        raise _Refused('request body timed out') from None
      body_done = message['type'] != 'http.request' or not message.get('more_body', False)
      if message['type'] == 'http.request':
        received += len(message.get('body', b''))
        if received > self.limit:
          refusal = self.too_large()
          raise _Refused(f'request body over {self.limit} bytes')
      return message

    async def guarded_send(message: Message) -> None:
      nonlocal started
      if refusal is None:  # once refused, the refusal below replaces the app's answer
        started = started or message['type'] == 'http.response.start'
        await send(message)

    try:
      await self.app(scope, guarded_receive, guarded_send)
    except Exception:  # pylint: disable=broad-except  # the app may wrap _Refused in another
      if refusal is None:
        raise
    if refusal is not None and not started:  # the rest of the body is unread: close
      await error_json(*refusal, CLOSE)(scope, receive, send)


def upload_label(upload: fastapi.UploadFile) -> str:
  """How messages name an upload: its file name, quoted, or `upload` when it has none."""
  name = errors.one_line(upload.filename or '')
  name = name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 3] + '...'
  return f"'{name}'" if name else 'upload'


def check_pixels(upload: fastapi.UploadFile, field: str, max_pixels: int) -> None:
  """413 when the upload's header says it has over `max_pixels` pixels: nothing is decoded.

  An upload whose header Pillow cannot read is a 400 here already.
  """
  if upload.size == 0:
    raise ApiError(400, f'cannot read {field} {upload_label(upload)}: it is empty (0 bytes)')
  upload.file.seek(0)
  try:
    with Image.open(upload.file) as img:  # reads the header only
      width, height = img.size
  except Image.DecompressionBombError as e:
    raise ApiError(413, f'{field} {upload_label(upload)}: {errors.one_line(e)}') from None
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many types
    reason = 'not an image format Pillow knows' if isinstance(e, UnidentifiedImageError) else e
    raise ApiError(
        400, f'cannot read {field} {upload_label(upload)}: {errors.one_line(reason)}'
    ) from None
  if width * height > max_pixels:
    raise ApiError(
        413,
        f'{field} {upload_label(upload)} is {width}x{height} ({width * height / MEGAPIXEL:.1f} '
        f'megapixels), over the limit of {max_pixels / MEGAPIXEL:g} megapixels per image (the '
        'server sets it with --max-pixels)',
    )


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
  """The image (H, W, 3) uint8, its mask (H, W) bool, True = hole, and the mask's warnings.

  A mask of another size or with no known pixel is a 422: unlike the command line, the API
  resizes nothing, so what is filled is exactly what the client drew.
  """
  image = read_upload(image_upload, 'image', image_io.load_image)
  mask, thresholded = read_upload(
      mask_upload, 'mask', lambda path: image_io.load_hole_mask(path, invert=invert)
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
