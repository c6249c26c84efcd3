"""The stand-alone FID and LPIPS commands on image folders."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from lgnet_jax.metrics_nets import inception, lpips
from lgnet_jax.tools import fid as fid_tool
from lgnet_jax.tools import lpips as lpips_tool
from tests import test_fid_inception, test_lpips
from tests.conftest import run_module


def _folder(path, seed, count=3, size=(48, 40)):
  path.mkdir()
  rng = np.random.default_rng(seed)
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(path / f'{i}.png')
  return path


def _run(main, argv, monkeypatch, capsys) -> dict:
  monkeypatch.setattr(sys, 'argv', ['tool', *argv, '--json'])
  main()
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_fid_tool(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(inception, 'load_fid_inception_params', lambda path: (
      inception.fid_params_from_state_dict(
          test_fid_inception.recipe_state_dict(test_fid_inception.KEYS_FILE))))
  a, b = _folder(tmp_path / 'a', 0), _folder(tmp_path / 'b', 1)
  same = _run(fid_tool.main, ['--inception-weights', 'w.pth', str(a), str(a)], monkeypatch, capsys)
  other = _run(fid_tool.main, ['--inception-weights', 'w.pth', str(a), str(b)], monkeypatch, capsys)
  assert abs(same['fid']) < 1e-3 < other['fid']


def test_lpips_tool(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(lpips, 'load_lpips_params', lambda backbone_path, head_path, backbone: (
      lpips.lpips_params_from_state_dict(test_lpips.recipe_state_dict(backbone), backbone)))
  a, b = _folder(tmp_path / 'a', 0), _folder(tmp_path / 'b', 1, size=(64, 56))
  argv = ['--backbone-weights', 'net.pth', '--head-weights', 'head.pth']
  same = _run(lpips_tool.main, [*argv, str(a), str(a)], monkeypatch, capsys)
  other = _run(lpips_tool.main, [*argv, str(a), str(b)], monkeypatch, capsys)
  assert same['pairs'] == other['pairs'] == 3
  assert same['lpips'] < 1e-6 < other['lpips']


@pytest.mark.parametrize('module, weights', [
    ('lgnet_jax.tools.fid', ['--inception-weights', 'missing.pth']),
    ('lgnet_jax.tools.lpips', ['--backbone-weights', 'missing.pth', '--head-weights', 'h.pth'])])
def test_missing_weights_exit_2(tmp_path, module, weights):
  a = _folder(tmp_path / 'a', 0)
  result = run_module(module, *weights, str(a), str(a))
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr and 'missing.pth' in result.stderr
