"""The HTTP API of `python -m lgnet_jax.serve`, in process through FastAPI's TestClient.

Fake inpainters test the request handling (errors, the queue); one test runs the real network.
The command line's refusals run in process too; test_serve_browser starts the real server.
"""

import concurrent.futures
import socket
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers import assert_usage_error, run_cli_in_process
from lgnet_jax.serving import app as app_lib, photo, server
from lgnet_jax.serving.inference import Inpainter
from serve_helpers import (
    FILL_VALUE,
    WAIT_S,
    BlockingInpainter,
    FailingOnceInpainter,
    FakeInpainter,
    assert_error,
    client_for,
    decode,
    files,
    multipart_chunks,
    photo_and_mask,
    png,
    post,
    wait_for,
)


@pytest.fixture
def fake() -> FakeInpainter:
  return FakeInpainter()


@pytest.fixture
def client(fake) -> Iterator[TestClient]:
  with client_for(fake) as c:
    yield c


def test_holes_are_filled_and_known_pixels_kept(client, fake):
  image, mask = photo_and_mask()
  response = post(client, image, mask, strategy='crop', crop_margin='32')
  assert response.status_code == 200, response.text
  assert response.headers['content-type'] == 'image/png'
  assert app_lib.WARNINGS_HEADER not in response.headers
  result = decode(response.content)
  assert result.shape == image.shape
  holes = mask > 0
  np.testing.assert_array_equal(result[~holes], image[~holes])
  assert (result[holes] == FILL_VALUE).all()
  assert fake.calls == [
      {
          'shape': image.shape,
          'strategy': 'crop',
          'margin': 32,
          'batch': 1,
          'dilate_mask': 0,
          'feather': 0,
      }
  ]


def test_mask_options_reach_the_inpainter(client, fake):
  image, mask = photo_and_mask()
  response = post(client, image, mask, dilate_mask='3', feather='5')
  assert response.status_code == 200, response.text
  assert (fake.calls[0]['dilate_mask'], fake.calls[0]['feather']) == (3, 5)


def test_defaults_and_invert_mask(client, fake):
  image, mask = photo_and_mask()
  result = decode(post(client, image, 255 - mask, invert_mask='true').content)
  holes = mask > 0  # black is the hole when inverted
  np.testing.assert_array_equal(result[~holes], image[~holes])
  assert (result[holes] == FILL_VALUE).all()
  assert fake.calls[0]['strategy'] == photo.DEFAULT_STRATEGY
  assert fake.calls[0]['margin'] == photo.DEFAULT_CROP_MARGIN


def test_mask_warnings_are_a_header_not_an_error(client):
  image, mask = photo_and_mask()
  mostly = np.full_like(mask, 255)
  mostly[:10] = 0
  response = post(client, image, mostly)
  assert response.status_code == 200
  warning = response.headers[app_lib.WARNINGS_HEADER]
  assert "mask 'mask.png' is mostly hole" in warning and 'send invert_mask=true' in warning
  soft = mask.copy()
  soft[0, 0] = 100  # not binary
  response = post(client, image, soft)
  assert response.status_code == 200
  assert 'not binary; thresholded at 0.5' in response.headers[app_lib.WARNINGS_HEADER]
  decoded = decode(response.content)
  assert (decoded[0, 0] == image[0, 0]).all()  # 100/255 is below the threshold: kept


def test_a_mask_without_hole_returns_the_image_unchanged(client, fake):
  image, mask = photo_and_mask()
  response = post(client, image, np.zeros_like(mask))
  assert response.status_code == 200
  np.testing.assert_array_equal(decode(response.content), image)
  assert 'has no hole' in response.headers[app_lib.WARNINGS_HEADER]
  assert fake.calls == []  # the network is not run


@pytest.mark.parametrize('field', ['image', 'mask'])
@pytest.mark.parametrize('content', [b'not an image\n', b''], ids=['text', 'empty'])
def test_an_upload_that_is_not_an_image_is_400(client, fake, field, content):
  image, mask = photo_and_mask()
  uploads = files(image, mask)
  uploads[field] = ('notes.txt', content)
  response = client.post(app_lib.API_PATH, files=uploads)
  assert_error(response, 400, field, "'notes.txt'")
  assert '/tmp' not in response.json()['error']  # names the upload, not a temporary file
  assert fake.calls == []


def test_missing_fields_are_422_naming_them(client):
  image, mask = photo_and_mask()
  only_image = {'image': files(image, mask)['image']}
  assert_error(client.post(app_lib.API_PATH, files=only_image), 422, 'missing form field mask')
  assert_error(
      client.post(app_lib.API_PATH, data={'strategy': 'crop'}),
      422,
      'missing form fields image, mask',
  )
  assert_error(client.post(app_lib.API_PATH), 422, 'image, mask')


def test_a_mask_of_another_size_is_422(client, fake):
  image, mask = photo_and_mask()
  response = post(client, image, mask[:20])
  assert_error(response, 422, "mask 'mask.png' is 40x20", "image 'photo.png' is 40x30")
  assert fake.calls == []


@pytest.mark.parametrize(
    'data, fragment',
    [
        ({'strategy': 'zoom'}, "strategy 'zoom' is not one of auto, crop, resize"),
        ({'crop_margin': '-1'}, 'crop margin must be a whole number of pixels >= 0, got -1'),
        ({'crop_margin': 'wide'}, 'form field crop_margin: Input should be a valid integer'),
        ({'invert_mask': 'maybe'}, 'form field invert_mask'),
        ({'dilate_mask': '-2'}, 'dilate_mask must be between 0 and 256 pixels, got -2'),
        ({'feather': '257'}, 'feather must be between 0 and 256 pixels, got 257'),
        ({'feather': '1.5'}, 'form field feather: Input should be a valid integer'),
    ],
)
def test_bad_options_are_422(client, fake, data, fragment):
  image, mask = photo_and_mask()
  assert_error(post(client, image, mask, **data), 422, fragment)
  assert fake.calls == []


@pytest.mark.parametrize('invert', [False, True])
def test_an_all_hole_mask_is_422(client, invert):
  image, mask = photo_and_mask()
  all_hole = np.zeros_like(mask) if invert else np.full_like(mask, 255)
  response = post(client, image, all_hole, invert_mask=str(invert).lower())
  assert_error(response, 422, "mask 'mask.png' is all hole")


def test_an_upload_over_the_limit_is_413(fake):
  big = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 KB
  mask = np.zeros((300, 300), np.uint8)
  mask[:10, :10] = 255
  with client_for(fake, max_upload_bytes=200_000) as client:
    declared = post(client, big, mask)  # Content-Length says so: refused before reading
    assert_error(declared, 413, 'upload limit of 0.190735 MiB', '--max-upload-mb')
    assert declared.headers['connection'] == 'close'  # the unread body ends the connection
    streamed = client.post(
        app_lib.API_PATH,
        content=multipart_chunks(png(big), png(mask), 'b0undary'),
        headers={'content-type': 'multipart/form-data; boundary=b0undary'},
    )
    assert 'content-length' not in streamed.request.headers  # counted as the bytes arrive
    assert_error(streamed, 413, 'upload limit')
    assert streamed.headers['connection'] == 'close'
    assert fake.calls == []
    small_image, small_mask = photo_and_mask()
    assert post(client, small_image, small_mask).status_code == 200  # still serving
    assert client.get('/healthz').json()['queue'] == 0


def test_a_full_queue_is_503_with_retry_after():
  inpainter = BlockingInpainter()
  image, mask = photo_and_mask()
  with client_for(inpainter, queue_size=2) as client:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      try:
        held = [pool.submit(post, client, image, mask) for _ in range(2)]
        assert inpainter.started.wait(WAIT_S)
        wait_for(lambda: client.get('/healthz').json()['queue'] == 2)
        refused = post(client, image, mask)
        assert_error(refused, 503, 'busy', '2 requests')
        assert int(refused.headers['retry-after']) >= 1
      finally:
        inpainter.release.set()
      assert [future.result(WAIT_S).status_code for future in held] == [200, 200]
    assert client.get('/healthz').json()['queue'] == 0
    assert post(client, image, mask).status_code == 200
  assert len(inpainter.calls) == 3


def test_a_failure_in_the_network_is_500_and_the_server_goes_on():
  inpainter = FailingOnceInpainter()
  image, mask = photo_and_mask()
  with client_for(inpainter) as client:
    assert_error(post(client, image, mask), 500, 'inpainting failed: RuntimeError: boom second')
    assert client.get('/healthz').json()['queue'] == 0  # its place was given back
    response = post(client, image, mask)
    assert response.status_code == 200
    assert (decode(response.content)[mask > 0] == FILL_VALUE).all()


def test_an_unknown_path_is_a_json_404(client):
  assert_error(client.get('/api/v1/nothing'), 404, 'Not Found')


def test_healthz_page_and_docs(client):
  health = client.get('/healthz')
  assert health.status_code == 200
  assert health.json() == {'status': 'ok', 'queue': 0, 'queue_size': 4, 'running': False}
  page = client.get('/')
  assert page.status_code == 200 and page.headers['content-type'].startswith('text/html')
  for element_id in ('file-input', 'mask-canvas', 'run', 'result-image', 'status', 'strategy'):
    assert f'id="{element_id}"' in page.text
  for asset in ('web/app.js', 'web/style.css'):
    assert f'"{asset}"' in page.text
    assert client.get(f'/{asset}').status_code == 200
  schema = client.get('/openapi.json').json()
  form = schema['paths'][app_lib.API_PATH]['post']['requestBody']['content']
  assert 'multipart/form-data' in form
  docs = client.get('/docs')
  assert docs.status_code == 200 and 'openapi.json' in docs.text
  assert 'https://' not in docs.text  # no CDN: the Swagger UI assets come from this server
  scripts = [part.split('"')[1] for part in docs.text.split('<script src=')[1:]]
  assert scripts and all(client.get(src).status_code == 200 for src in scripts)


@pytest.mark.usefixtures('plain_compile')
def test_the_real_inpainter_through_the_api(official_workdir):
  inpainter = Inpainter.from_workdir(official_workdir)
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)
  mask = np.zeros((260, 300), np.uint8)
  mask[100:140, 120:170] = 255
  with client_for(inpainter) as client:
    response = post(client, image, mask, strategy='crop')
  assert response.status_code == 200, response.text
  result = decode(response.content)
  assert result.shape == image.shape
  holes = mask > 0
  np.testing.assert_array_equal(result[~holes], image[~holes])
  changed = (result[holes] != image[holes]).any(axis=-1)
  assert changed.mean() > 0.9


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def listening(port: int) -> bool:
  with socket.socket() as sock:
    return sock.connect_ex(('127.0.0.1', port)) == 0


def test_a_bad_workdir_exits_2_before_listening(capsys, tmp_path):
  port = free_port()
  result = run_cli_in_process(capsys, server, '--workdir', tmp_path / 'missing', '--port', port)
  assert_usage_error(result, tmp_path / 'missing', 'is not an lgnet_jax workdir')
  assert 'serving' not in result.stdout
  assert not listening(port)


def test_bad_flags_and_a_taken_port_exit_2_before_loading(capsys, official_workdir, monkeypatch):
  loaded = []
  monkeypatch.setattr(Inpainter, 'from_workdir', classmethod(lambda cls, *a: loaded.append(a)))
  run = lambda *args: run_cli_in_process(capsys, server, '--workdir', official_workdir, *args)
  assert_usage_error(run('--queue-size', '0'), '--queue-size must be at least 1, got 0')
  assert_usage_error(run('--max_upload_mb', '0'), '--max-upload-mb must be above 0')
  assert_usage_error(run('--max-pixels', '0'), '--max-pixels must be at least 1, got 0')
  assert_usage_error(run('--request-timeout', '0'), '--request-timeout must be above 0, got 0')
  assert_usage_error(run('--body_timeout', 'inf'), '--body-timeout must be above 0, got inf')
  assert_usage_error(run('--port', '70000'), '--port must be between 0 and 65535')
  assert_usage_error(run('--port', 'eighty'), '--port', 'eighty')
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    port = taken.getsockname()[1]
    assert_usage_error(run('--port', port), f'cannot listen on 127.0.0.1:{port}')
  assert not loaded
