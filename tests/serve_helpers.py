"""What the server's tests share: fake inpainters, uploads, a TestClient for the app, a way to
call the app as an ASGI server would (to send a request whose client goes away), and checks."""

import asyncio
import io
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from lgnet_jax.serving import app as app_lib, photo

FILL_VALUE = 7  # what the fake inpainter writes into holes
WAIT_S = 60  # bound on every wait for another thread; a hang fails instead of blocking


class FakeInpainter:
  """Fills holes with FILL_VALUE and records the arguments of every call."""

  def __init__(self):
    self.calls: list[dict] = []

  def fill(
      self, image, mask, strategy, crop_margin, batch_size, stop=None, *, dilate_mask=0, feather=0
  ):
    del stop
    self.calls.append(
        {
            'shape': image.shape,
            'strategy': strategy,
            'margin': crop_margin,
            'batch': batch_size,
            'dilate_mask': dilate_mask,
            'feather': feather,
        }
    )
    out = image.copy()
    out[mask > 0.5] = FILL_VALUE
    return out


class BlockingInpainter(FakeInpainter):
  """Holds the worker in `fill` until `release` (or the fill's `stop`) is set; `started` says a
  fill began, `stopped` that a fill saw its `stop` event and raised photo.Stopped. While
  `heed_stop` is clear, `stop` is not looked at (the fill holds the worker regardless)."""

  def __init__(self):
    super().__init__()
    self.started = threading.Event()
    self.release = threading.Event()
    self.stopped = threading.Event()
    self.heed_stop = threading.Event()
    self.heed_stop.set()

  def fill(self, image, mask, strategy, crop_margin, batch_size, stop=None, **edits):
    self.started.set()
    deadline = time.monotonic() + WAIT_S
    while not self.release.wait(0.01):
      assert time.monotonic() < deadline, 'never released'
      if stop is not None and stop.is_set() and self.heed_stop.is_set():
        self.stopped.set()
        raise photo.Stopped(1, 2)
    return super().fill(image, mask, strategy, crop_margin, batch_size, **edits)


class FailingOnceInpainter(FakeInpainter):
  """Raises inside the first fill, as a failure in the network would; works afterwards."""

  def fill(self, *args, **kwargs):
    if not self.calls:
      self.calls.append({})
      raise RuntimeError('boom\nsecond line')
    return super().fill(*args, **kwargs)


def png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as img:
    assert img.format == 'PNG'
    return np.asarray(img.convert('RGB'))


def photo_and_mask(height: int = 30, width: int = 40) -> tuple[np.ndarray, np.ndarray]:
  """A random photo and a uint8 mask with one rectangular hole (255)."""
  image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
  mask = np.zeros((height, width), np.uint8)
  mask[5:12, 8:20] = 255
  return image, mask


def files(image: np.ndarray | bytes, mask: np.ndarray | bytes) -> dict:
  as_bytes = lambda x: x if isinstance(x, bytes) else png(x)
  return {'image': ('photo.png', as_bytes(image)), 'mask': ('mask.png', as_bytes(mask))}


def client_for(inpainter, **limits) -> TestClient:
  """A TestClient of the app with `limits` (app.Limits' fields; by default a 4-place queue and
  a 1 MiB upload limit)."""
  limits.setdefault('queue_size', 4)
  limits.setdefault('max_upload_bytes', 1 << 20)
  return TestClient(app_lib.create_app(inpainter, app_lib.Limits(**limits)))


def post(client: TestClient, image, mask, **data):
  return client.post(app_lib.API_PATH, files=files(image, mask), data=data)


def assert_error(response, status: int, *fragments: str) -> str:
  """`status` with a JSON body of exactly one one-line `error` naming every fragment."""
  assert response.status_code == status, response.text
  assert response.headers['content-type'] == 'application/json'
  body = response.json()
  assert list(body) == ['error'] and '\n' not in body['error'], body
  for fragment in fragments:
    assert fragment in body['error'], body['error']
  return body['error']


def wait_for(condition: Callable[[], bool]) -> None:
  """Polls `condition` until it holds; fails after WAIT_S (a bound, not a timing check)."""
  deadline = time.monotonic() + WAIT_S
  while not condition():
    assert time.monotonic() < deadline, 'condition never held'
    time.sleep(0.02)


def multipart_body(image: bytes, mask: bytes, boundary: str) -> bytes:
  body = b''
  for name, data in (('image', image), ('mask', mask)):
    body += (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{name}.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + data
        + b'\r\n'
    )
  return body + f'--{boundary}--\r\n'.encode()


def multipart_chunks(image: bytes, mask: bytes, boundary: str) -> Iterator[bytes]:
  """A multipart body in 64 KiB chunks (a generator: sent chunked, without Content-Length)."""
  body = multipart_body(image, mask, boundary)
  for start in range(0, len(body), 1 << 16):
    yield body[start : start + (1 << 16)]


class AsgiRequest:
  """One POST to the API, made as an ASGI server makes it: its body, then, when `gone` is set,
  the client's disconnect; `stall` sends only the first half of the body and then nothing.

  `await request.send_to(app)` runs it; `status`, `answer_headers` and `answer` are what the app
  answered.
  """

  def __init__(self, image: bytes, mask: bytes, stall: bool = False):
    boundary = 'b0undary'
    self.body = multipart_body(image, mask, boundary)
    self.headers = [
        (b'content-type', f'multipart/form-data; boundary={boundary}'.encode()),
        (b'content-length', str(len(self.body)).encode()),
    ]
    self.stall = stall
    self.gone = asyncio.Event()
    self.status: int | None = None
    self.answer_headers: dict[bytes, bytes] = {}
    self.answer = b''

  async def send_to(self, app) -> None:
    scope = {
        'type': 'http',
        'asgi': {'version': '3.0'},
        'http_version': '1.1',
        'method': 'POST',
        'scheme': 'http',
        'path': app_lib.API_PATH,
        'raw_path': app_lib.API_PATH.encode(),
        'query_string': b'',
        'root_path': '',
        'headers': self.headers,
        'server': ('testserver', 80),
        'client': ('127.0.0.1', 50000),
    }
    sent = False

    async def receive():
      nonlocal sent
      if not sent:
        sent = True
        part = self.body[: len(self.body) // 2] if self.stall else self.body
        return {'type': 'http.request', 'body': part, 'more_body': self.stall}
      if self.stall:
        await asyncio.Event().wait()  # the rest of the body never comes
      await self.gone.wait()
      return {'type': 'http.disconnect'}

    async def send(message):
      if message['type'] == 'http.response.start':
        self.status = message['status']
        self.answer_headers = dict(message.get('headers', []))
      elif message['type'] == 'http.response.body':
        self.answer += message.get('body', b'')

    await app(scope, receive, send)
