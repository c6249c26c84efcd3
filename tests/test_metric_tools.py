"""The stand-alone FID and LPIPS commands on image folders."""

import json

import numpy as np
import pytest
from PIL import Image

from helpers import (
    assert_usage_error,
    fid_recipe_state_dict,
    lpips_recipe_state_dict,
    run_cli_in_process,
)
from lgnet_jax.evaluation.metrics_nets import inception, lpips
from lgnet_jax.tools import fid as fid_tool
from lgnet_jax.tools import lpips as lpips_tool

# The tools' logic; the networks' numerics are test_fid_inception's and test_lpips' job.
pytestmark = pytest.mark.usefixtures('fast_compile')


def _folder(path, seed, count=3, size=(48, 40)):
  path.mkdir()
  rng = np.random.default_rng(seed)
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(path / f'{i}.png')
  return path


def _run(tool, argv, capsys) -> dict:
  result = run_cli_in_process(capsys, tool, *argv, '--json')
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_fid_tool(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(
      inception,
      'load_fid_inception_params',
      lambda path: (inception.fid_params_from_state_dict(fid_recipe_state_dict())),
  )
  a, b = _folder(tmp_path / 'a', 0), _folder(tmp_path / 'b', 1)
  same = _run(fid_tool, ['--inception-weights', 'w.pth', a, a], capsys)
  other = _run(fid_tool, ['--inception-weights', 'w.pth', a, b], capsys)
  assert abs(same['fid']) < 1e-3 < other['fid']


def test_lpips_tool(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(
      lpips,
      'load_lpips_params',
      lambda backbone_path, head_path, backbone: (
          lpips.lpips_params_from_state_dict(lpips_recipe_state_dict(backbone), backbone)
      ),
  )
  a, b = _folder(tmp_path / 'a', 0), _folder(tmp_path / 'b', 1, size=(64, 56))
  argv = ['--backbone-weights', 'net.pth', '--head-weights', 'head.pth']
  same = _run(lpips_tool, [*argv, a, a], capsys)
  other = _run(lpips_tool, [*argv, a, b], capsys)
  assert same['pairs'] == other['pairs'] == 3
  assert same['lpips'] < 1e-6 < other['lpips']


@pytest.mark.parametrize(
    'tool, weights',
    [
        (fid_tool, ['--inception-weights', 'missing.pth']),
        (lpips_tool, ['--backbone-weights', 'missing.pth', '--head-weights', 'h.pth']),
    ],
)
def test_missing_weights_exit_2(tmp_path, capsys, tool, weights):
  a = _folder(tmp_path / 'a', 0)
  assert_usage_error(run_cli_in_process(capsys, tool, *weights, a, a), 'missing.pth')
