"""The server's limits against hostile or careless clients, in process: the pixel limit read from
the header, a client that goes away, the server's own time limit, a body that stops arriving,
Retry-After, long values in errors, and the warning for an address other machines can reach."""

import asyncio
import concurrent.futures
import math
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from helpers import run_cli_in_process
from lgnet_jax.data import image_io
from lgnet_jax.serving import app as app_lib, server
from lgnet_jax.serving.inference import Inpainter
from lgnet_jax.serving.worker import Worker
from serve_helpers import (
    WAIT_S,
    AsgiRequest,
    BlockingInpainter,
    FakeInpainter,
    assert_error,
    client_for,
    decode,
    photo_and_mask,
    png,
    post,
    wait_for,
)


@pytest.fixture
def decodes(monkeypatch) -> list[tuple[int, int]]:
  """The size of every image file Pillow decodes from now on (its load, which every decoder
  runs; images made from arrays, as the tests' uploads are, are not counted)."""
  seen = []
  load = Image.Image.load

  def recording_load(self):
    if isinstance(self, ImageFile.ImageFile):
      seen.append(self.size)
    return load(self)

  monkeypatch.setattr(Image.Image, 'load', recording_load)
  return seen


@pytest.mark.parametrize('over', ['image', 'mask'])
def test_an_upload_over_the_pixel_limit_is_413_before_decoding(decodes, over):
  fake = FakeInpainter()
  image, mask = photo_and_mask(30, 40)  # 1200 pixels
  small = np.zeros((20, 20), np.uint8)
  uploads = (image, small) if over == 'image' else (np.ascontiguousarray(image[:20, :20]), mask)
  with client_for(fake, max_pixels=1000) as client:
    response = post(client, *uploads)
    assert_error(response, 413, f"{over} '", '40x30', 'limit of 0.001 megapixels', '--max-pixels')
  assert decodes == [] and fake.calls == []  # refused from the header: Pillow decoded nothing


def test_an_upload_at_the_pixel_limit_is_filled(decodes):
  image, mask = photo_and_mask(30, 40)
  with client_for(FakeInpainter(), max_pixels=1200) as client:
    response = post(client, image, mask)
  assert response.status_code == 200, response.text
  assert (40, 30) in decodes


def test_uploads_are_decoded_on_the_worker_thread_only(monkeypatch):
  threads = []
  for name in ('load_image', 'load_hole_mask'):
    decoder = getattr(image_io, name)
    monkeypatch.setattr(
        image_io,
        name,
        lambda *a, decoder=decoder, **k: threads.append(threading.current_thread().name)
        or decoder(*a, **k),
    )
  with client_for(FakeInpainter()) as client:
    assert post(client, *photo_and_mask()).status_code == 200
  assert len(threads) == 2 and all(name.startswith('lgnet-inpaint') for name in threads)


async def wait_until(condition) -> None:
  """`wait_for` inside the event loop."""
  deadline = time.monotonic() + WAIT_S
  while not condition():
    assert time.monotonic() < deadline, 'condition never held'
    await asyncio.sleep(0.02)


def test_a_queued_request_whose_client_goes_is_dropped():
  inpainter = BlockingInpainter()
  app = app_lib.create_app(inpainter)
  worker = app.state.worker
  image, mask = (png(a) for a in photo_and_mask())

  async def scenario():
    running, queued = AsgiRequest(image, mask), AsgiRequest(image, mask)
    tasks = [asyncio.create_task(r.send_to(app)) for r in (running, queued)]
    await wait_until(lambda: inpainter.started.is_set() and worker.taken == 2)
    queued.gone.set()
    await wait_until(lambda: worker.taken == 1)  # its place came back at once
    await asyncio.wait_for(tasks[1], WAIT_S)
    inpainter.release.set()
    await asyncio.wait_for(tasks[0], WAIT_S)
    await wait_until(lambda: worker.taken == 0)
    return running, queued

  running, queued = asyncio.run(scenario())
  assert queued.status == app_lib.CLIENT_CLOSED
  assert running.status == 200 and decode(running.answer).shape == (30, 40, 3)
  assert len(inpainter.calls) == 1  # the dropped request was never decoded nor filled


def test_a_running_request_whose_client_goes_stops_its_fill():
  inpainter = BlockingInpainter()
  app = app_lib.create_app(inpainter)
  request = AsgiRequest(*(png(a) for a in photo_and_mask()))

  async def scenario():
    task = asyncio.create_task(request.send_to(app))
    await wait_until(inpainter.started.is_set)
    request.gone.set()
    await asyncio.wait_for(task, WAIT_S)
    await wait_until(lambda: app.state.worker.taken == 0)  # the place comes back as it stops

  asyncio.run(scenario())
  assert request.status == app_lib.CLIENT_CLOSED
  assert inpainter.stopped.is_set()  # the fill saw its stop event instead of finishing
  assert inpainter.calls == []


def test_requests_past_the_time_limit_are_504_and_their_work_dropped():
  inpainter = BlockingInpainter()
  inpainter.heed_stop.clear()  # the first fill holds the worker until both requests timed out
  entered = []
  fill = inpainter.fill
  inpainter.fill = lambda *args, **kwargs: entered.append(1) or fill(*args, **kwargs)
  image, mask = photo_and_mask()
  with client_for(inpainter, request_timeout_s=0.5) as client:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      answers = [pool.submit(post, client, image, mask) for _ in range(2)]
      for answer in answers:
        assert_error(answer.result(WAIT_S), 504, 'limit of 0.5 s', '--request-timeout')
    inpainter.heed_stop.set()
    assert inpainter.stopped.wait(WAIT_S)  # the running fill stopped
    wait_for(lambda: client.get('/healthz').json()['queue'] == 0)
    assert len(entered) == 1  # the queued one never started
    inpainter.release.set()
    assert post(client, image, mask).status_code == 200  # still serving


def test_a_body_that_stops_arriving_is_408():
  app = app_lib.create_app(FakeInpainter(), app_lib.Limits(body_timeout_s=0.2))
  request = AsgiRequest(*(png(a) for a in photo_and_mask()), stall=True)
  asyncio.run(asyncio.wait_for(request.send_to(app), WAIT_S))
  assert request.status == 408 and request.answer_headers[b'connection'] == b'close'
  assert b'no bytes for 0.2 s' in request.answer and b'--body-timeout' in request.answer
  assert app.state.worker.taken == 0


def test_retry_after_is_the_median_recent_fill_times_the_queue():
  worker = Worker(8)
  assert worker.retry_after() == 1  # nothing measured yet: a second a request
  worker.taken = 3
  assert worker.retry_after() == 3
  for seconds in [2.0] * 9 + [286.0]:  # one slow outlier
    worker.record(seconds)
  worker.taken = 8
  assert worker.retry_after() == 16  # 2 s x 8, where the mean would say 30 s x 8
  for _ in range(30):
    worker.record(0.05)  # only the recent fills count
  assert worker.retry_after() == math.ceil(0.05 * 8)


def test_a_long_value_is_never_echoed_whole():
  image, mask = photo_and_mask()
  value = 'z' * 900_000
  with client_for(FakeInpainter()) as client:
    message = assert_error(post(client, image, mask, strategy=value), 422, "strategy 'zzz")
    assert len(message) < 200 and 'is not one of auto, crop, resize' in message
    uploads = {'image': ('n' * 500 + '.png', b'text'), 'mask': ('mask.png', png(mask))}
    message = assert_error(client.post(app_lib.API_PATH, files=uploads), 400, "'nnn", "...'")
    assert len(message) < 200


@pytest.fixture
def no_serving(monkeypatch) -> list[str]:
  """The command line with the network and uvicorn replaced: what it would serve on."""
  served = []
  monkeypatch.setattr(Inpainter, 'from_workdir', classmethod(lambda cls, *a: FakeInpainter()))
  monkeypatch.setattr(server, 'warm_up', lambda inpainter: None)
  monkeypatch.setattr(server, 'serve', lambda app, sock: served.append(sock.getsockname()[0]))
  return served


@pytest.mark.parametrize('host, warns', [('0.0.0.0', True), ('127.0.0.1', False)])
def test_a_host_other_than_loopback_warns_of_no_authentication(
    capsys, official_workdir, no_serving, host, warns
):
  result = run_cli_in_process(
      capsys, server, '--workdir', official_workdir, '--host', host, '--port', '0'
  )
  assert result.returncode == 0, result.stderr
  assert no_serving == [host]
  lines = [line for line in result.stderr.splitlines() if 'no authentication' in line]
  assert len(lines) == int(warns), result.stderr
  if warns:
    assert lines[0].startswith(f'warning: serving on {host}') and 'reverse proxy' in lines[0]
