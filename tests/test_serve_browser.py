"""The page of `python -m lgnet_jax.serve` in headless Chromium, against the real server.

Chromium and chromedriver are Debian's (`apt-get install chromium chromium-driver`; .ci/run
installs them): Selenium is pointed at them, so it never downloads a browser or a driver, and
Chromium resolves no host but 127.0.0.1, so the page is shown to work offline.
Set LGNET_SAVE_SCREENSHOT=1 to save the page after a run to docs/serve_page.png as well.
"""

import base64
import io
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from helpers import FAST_COMPILE, REPO_ROOT, subprocess_env

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
SCREENSHOT = REPO_ROOT / 'docs' / 'serve_page.png'
START_TIMEOUT_S = 300  # the server loads and compiles the network before it answers
RUN_TIMEOUT_S = 120
# Chromium as a test browser: headless, no sandbox (CI runs as root), no calls home, and no
# host resolved but the server's, so nothing on the page may come from elsewhere.
CHROMIUM_ARGS = (
    '--headless=new',
    '--no-sandbox',
    '--disable-dev-shm-usage',
    '--disable-gpu',
    '--window-size=1280,960',
    '--no-first-run',
    '--no-default-browser-check',
    '--no-proxy-server',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-extensions',
    '--disable-default-apps',
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
)


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, log: pathlib.Path) -> None:
  """Polls /healthz until it answers; fails with the server's stderr if it exits or never does."""
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
  deadline = time.monotonic() + START_TIMEOUT_S
  while True:
    if process.poll() is not None:
      pytest.fail(f'the server exited with {process.returncode}:\n{log.read_text()[-5000:]}')
    try:
      with opener.open(f'{url}healthz', timeout=5) as response:
        if response.status == 200:
          return
    except (urllib.error.URLError, ConnectionError, TimeoutError):
      pass
    if time.monotonic() > deadline:
      pytest.fail(f'no answer from {url}healthz in {START_TIMEOUT_S} s:\n{log.read_text()[-5000:]}')
    time.sleep(0.25)


@pytest.fixture
def server(request, tmp_path) -> Iterator[str]:
  """The real server on a free loopback port; its URL. Always stopped afterwards.

  It serves the straight run's tiny network (compiled at start-up in a few seconds), or the
  ngf-16 fixture's when the screenshot is saved for the docs."""
  if os.environ.get('LGNET_SAVE_SCREENSHOT') == '1':
    workdir = request.getfixturevalue('official_workdir')
  else:
    workdir = request.getfixturevalue('straight_run').workdir
  port = free_port()
  log = tmp_path / 'server.log'
  with log.open('w') as output:
    process = subprocess.Popen(
        [sys.executable, '-m', 'lgnet_jax.serve', '--workdir', str(workdir)]
        + ['--host', '127.0.0.1', '--port', str(port)],
        cwd=REPO_ROOT,
        env=subprocess_env(**FAST_COMPILE),
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
      url = f'http://127.0.0.1:{port}/'
      wait_until_healthy(url, process, log)
      yield url
    finally:
      process.terminate()
      try:
        process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture
def browser(monkeypatch) -> Iterator[webdriver.Chrome]:
  for binary in (CHROMIUM, CHROMEDRIVER):
    assert os.path.isfile(
        binary
    ), f'{binary} is missing: apt-get install chromium chromium-driver (as .ci/run does)'
  monkeypatch.setenv('SE_OFFLINE', 'true')  # Selenium Manager, were it asked, downloads nothing
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in CHROMIUM_ARGS:
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
  try:
    yield driver
  finally:
    driver.quit()


def cat_photo(path: pathlib.Path) -> np.ndarray:
  """A 320x280 crop of scikit-image's bundled cat photo, saved as PNG at `path`."""
  from skimage import data  # pylint: disable=import-outside-toplevel

  image = np.ascontiguousarray(data.chelsea()[10:290, 60:380])
  Image.fromarray(image).save(path)
  return image


FETCH_BASE64 = """
const [selector, done] = arguments;
fetch(document.querySelector(selector).href)
  .then((response) => response.arrayBuffer())
  .then((buffer) => {
    const bytes = new Uint8Array(buffer);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    }
    done(btoa(text));
  })
  .catch((error) => done('error: ' + error));
"""


def fetch_png(driver: webdriver.Chrome, selector: str, mode: str) -> np.ndarray:
  """The PNG a link of the page points at (a blob: URL), decoded in Pillow's `mode`."""
  encoded = driver.execute_async_script(FETCH_BASE64, selector)
  assert not encoded.startswith('error'), encoded
  with Image.open(io.BytesIO(base64.b64decode(encoded))) as img:
    assert img.format == 'PNG'
    return np.asarray(img.convert(mode))


def paint_stroke(driver: webdriver.Chrome) -> None:
  """One brush stroke across the cat's face, in screen pixels from the stage's centre."""
  stage = driver.find_element(By.ID, 'stage')
  width = stage.size['width']
  set_slider(driver, 'brush-size', round(0.1 * width))  # a tenth of the shown photo wide
  actions = ActionChains(driver, duration=20)
  actions.move_to_element_with_offset(stage, int(-0.15 * width), int(-0.05 * width))
  actions.click_and_hold()
  for _ in range(6):
    actions.move_by_offset(int(0.05 * width), int(0.01 * width))
  actions.release().perform()


def set_slider(driver: webdriver.Chrome, element_id: str, value: int) -> None:
  """Moves a range input to `value` as a user's drag does (its `input` event fires)."""
  driver.execute_script(
      "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))",
      driver.find_element(By.ID, element_id),
      value,
  )


# The page's mask options for the run: grow the painted holes by DILATE pixels, then blend the
# fill over FEATHER pixels around them.
DILATE, FEATHER = 6, 6


@pytest.mark.slow
def test_paint_a_mask_run_and_download(server, browser, tmp_path):
  image = cat_photo(tmp_path / 'cat.png')
  browser.get(server)
  wait = WebDriverWait(browser, RUN_TIMEOUT_S)
  browser.find_element(By.ID, 'file-input').send_keys(str(tmp_path / 'cat.png'))
  wait.until(lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-state') == 'ready')
  paint_stroke(browser)
  Select(browser.find_element(By.ID, 'strategy')).select_by_value('crop')
  set_slider(browser, 'dilate', DILATE)
  set_slider(browser, 'feather', FEATHER)
  assert browser.find_element(By.ID, 'feather-value').text == str(FEATHER)
  run = browser.find_element(By.ID, 'run')
  run.click()
  wait.until(lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-state') != 'running')
  status = browser.find_element(By.ID, 'status').text
  assert browser.find_element(By.TAG_NAME, 'body').get_attribute('data-state') == 'done', (
      status + ' ' + browser.find_element(By.ID, 'error').text
  )
  assert 'Done' in status and 'crop' in status and run.is_enabled()
  assert browser.find_element(By.ID, 'result-image').is_displayed()
  assert not browser.find_element(By.ID, 'error').is_displayed()
  assert not browser.find_element(By.ID, 'warnings').is_displayed()

  mask = fetch_png(browser, '#mask-download', 'L')
  result = fetch_png(browser, '#download', 'RGB')
  assert mask.shape == image.shape[:2]  # painted at the photo's own resolution
  assert set(np.unique(mask)) == {0, 255}
  holes = mask == 255
  assert 0.02 < holes.mean() < 0.3  # the stroke, not the whole photo
  assert result.shape == image.shape
  # The painted holes grown by DILATE are filled; beyond them and their FEATHER band, every
  # pixel is the photo's.
  distance = ndimage.distance_transform_edt(~holes)
  far = distance > DILATE + FEATHER
  np.testing.assert_array_equal(result[far], image[far])
  # Pixels 7 to 9 away from the paint: 1 to 3 from the grown holes, in the band, so blended;
  # without either option they would be the photo's.
  shell = (distance > FEATHER) & (distance <= DILATE + FEATHER // 2)
  assert shell.sum() > 100
  for filled in (holes, shell):
    assert (result[filled] != image[filled]).any(axis=-1).mean() > 0.9

  browser.save_screenshot(str(tmp_path / 'serve_page.png'))
  if os.environ.get('LGNET_SAVE_SCREENSHOT') == '1':
    shutil.copyfile(tmp_path / 'serve_page.png', SCREENSHOT)

  browser.get(f'{server}docs')  # the API's documentation renders with no host but ours
  WebDriverWait(browser, 30).until(
      lambda d: d.find_elements(
          By.CSS_SELECTOR, '.opblock-summary-path[data-path="/api/v1/inpaint"]'
      )
  )
