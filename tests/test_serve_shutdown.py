"""Stopping the real server (`python -m lgnet_jax.serve`, the ngf-16 workdir) with one Ctrl-C
while it fills: it answers the request 503, stops the fill after its current network batch and
exits 0 without a traceback."""

import concurrent.futures
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from helpers import FAST_COMPILE, REPO_ROOT, subprocess_env
from serve_helpers import multipart_body, png

START_TIMEOUT_S = 300  # the server loads and compiles the network before it answers
STOP_TIMEOUT_S = 120
FILL_S = 3  # the signal comes this long after the fill began (decoding, then some batches)  # bound on the exit after the signal: a hang fails instead of blocking
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str) -> dict | None:
  try:
    with NO_PROXY.open(url, timeout=5) as response:
      return json.load(response)
  except (urllib.error.URLError, ConnectionError, TimeoutError):
    return None


def post_fill(url: str, image: np.ndarray, mask: np.ndarray) -> tuple[int, dict]:
  """POSTs a crop fill; its status and JSON error (an empty dict for a PNG)."""
  body = multipart_body(png(image), png(mask), 'b0undary')
  request = urllib.request.Request(
      f'{url}api/v1/inpaint',
      data=body,
      headers={'Content-Type': 'multipart/form-data; boundary=b0undary'},
  )
  try:
    with NO_PROXY.open(request, timeout=STOP_TIMEOUT_S) as response:
      return response.status, {}
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def wait_until(condition, process: subprocess.Popen, log_path, timeout_s: float) -> None:
  deadline = time.monotonic() + timeout_s
  while not condition():
    if process.poll() is not None:
      pytest.fail(f'the server exited with {process.returncode}:\n{log_path.read_text()[-5000:]}')
    if time.monotonic() > deadline:
      pytest.fail(f'the condition never held:\n{log_path.read_text()[-5000:]}')
    time.sleep(0.1)


@pytest.mark.slow
def test_one_sigint_during_a_fill_stops_it_and_exits_0(official_workdir, tmp_path):
  log_path = tmp_path / 'server.log'
  with log_path.open('w') as log:
    process = subprocess.Popen(
        [sys.executable, '-m', 'lgnet_jax.serve', '--workdir', str(official_workdir)]
        + ['--port', '0'],
        cwd=REPO_ROOT,
        env=subprocess_env(**FAST_COMPILE),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
  try:
    serving = lambda: re.search(r'at (http://127\.0\.0\.1:\d+/)', log_path.read_text())
    wait_until(serving, process, log_path, START_TIMEOUT_S)
    url = serving().group(1)
    wait_until(lambda: get_json(f'{url}healthz') is not None, process, log_path, START_TIMEOUT_S)
    image = np.zeros((4000, 4000, 3), np.uint8)
    mask = np.zeros((4000, 4000), np.uint8)
    mask[200:4000:400, 200:4000:400] = 255  # 100 dots: 100 crop regions, 100 network batches
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      answer = pool.submit(post_fill, url, image, mask)
      wait_until(lambda: (get_json(f'{url}healthz') or {}).get('running'), process, log_path, 120)
      time.sleep(FILL_S)
      process.send_signal(signal.SIGINT)
      status, body = answer.result(STOP_TIMEOUT_S)
    assert process.wait(STOP_TIMEOUT_S) == 0
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  output = log_path.read_text()
  assert 'Traceback' not in output, output[-5000:]
  assert status == 503 and 'stopping' in body['error'], (status, body)
  done, total = map(
      int, re.search(r'stopped after (\d+) of (\d+) network batches', output).groups()
  )
  assert total == 100 and done < total, output[-3000:]
