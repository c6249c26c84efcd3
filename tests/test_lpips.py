"""LPIPS v0.1 port against outputs of the `lpips` package with recipe-built weights."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from helpers import METRICS_FIXTURE, lpips_recipe_state_dict, nhwc, read_key_list
from lgnet_jax.evaluation.metrics_nets import lpips

REL_TOL = 1e-4
ABS_TOL_SAME_IMAGE = 1e-6


@pytest.fixture(scope='module')
def metrics_io() -> dict[str, np.ndarray]:
  with np.load(METRICS_FIXTURE / 'metrics_io.npz') as data:
    return {key: data[key] for key in data.files}


def test_scaling_constants_match_key_files() -> None:
  for backbone in lpips.BACKBONES:
    for line in (METRICS_FIXTURE / f'lpips_{backbone}_keys.txt').read_text().splitlines():
      if line.startswith('scaling_layer.'):
        name, _, note = line.split('\t')
        values = np.array(json.loads(note.split(':', 1)[1]), np.float32)
        ours = lpips.SCALING_SHIFT if name.endswith('shift') else lpips.SCALING_SCALE
        np.testing.assert_array_equal(ours, values)


@pytest.mark.parametrize('backbone', ['alex', 'vgg'])
def test_expected_keys_match_package(backbone: str) -> None:
  package = {
      k: v
      for k, v in read_key_list(METRICS_FIXTURE / f'lpips_{backbone}_keys.txt').items()
      if not k.startswith(('scaling_layer.', 'lins.'))
  }
  assert lpips.expected_state_dict_shapes(backbone) == package


@pytest.mark.parametrize('backbone', ['alex', 'vgg'])
def test_distances_match_reference(backbone: str, metrics_io: dict[str, np.ndarray]) -> None:
  images = nhwc(metrics_io['images']) * 2.0 - 1.0
  expected = np.array([float(metrics_io[f'lpips_{backbone}_d(0,{k})']) for k in range(4)])
  variables = lpips.lpips_params_from_state_dict(lpips_recipe_state_dict(backbone), backbone)
  distance = lpips.make_lpips_fn(variables, backbone)
  got = np.asarray(distance(np.repeat(images[:1], 4, axis=0), images))
  assert got.shape == (4,)
  assert abs(got[0]) < ABS_TOL_SAME_IMAGE
  np.testing.assert_allclose(got[1:], expected[1:], rtol=REL_TOL, atol=0)


def test_distance_is_symmetric_and_batched(metrics_io: dict[str, np.ndarray]) -> None:
  images = nhwc(metrics_io['images']) * 2.0 - 1.0
  distance = lpips.make_lpips_fn(
      lpips.lpips_params_from_state_dict(lpips_recipe_state_dict('alex'), 'alex'), 'alex'
  )
  forward = np.asarray(distance(images[:2], images[2:]))
  backward = np.asarray(distance(images[2:], images[:2]))
  np.testing.assert_allclose(forward, backward, rtol=1e-5)
  single = np.asarray(distance(images[1:2], images[3:4]))
  np.testing.assert_allclose(single, forward[1:], rtol=1e-5)


def test_package_head_file_keys_alone_are_enough() -> None:
  state = {k: v for k, v in lpips_recipe_state_dict('alex').items() if not k.startswith('lins.')}
  variables = lpips.lpips_params_from_state_dict(state, 'alex')
  np.testing.assert_array_equal(
      np.asarray(variables['params']['lin2']['kernel']).reshape(-1),
      state['lin2.model.1.weight'].reshape(-1),
  )


def test_bad_state_dict_gives_one_line_error() -> None:
  state = lpips_recipe_state_dict('vgg')
  del state['net.slice3.12.bias']
  state['net.slice9.99.weight'] = np.zeros((1,), np.float32)
  state['lin1.model.1.weight'] = np.zeros((1, 64, 1, 1), np.float32)
  del state['lins.1.model.1.weight']
  with pytest.raises(ValueError) as info:
    lpips.lpips_params_from_state_dict(state, 'vgg')
  message = str(info.value)
  assert '\n' not in message
  assert 'missing keys' in message and 'net.slice3.12.bias' in message
  assert 'unexpected keys' in message and 'net.slice9.99.weight' in message
  assert (
      'wrong shapes' in message
      and 'lin1.model.1.weight: shape (1, 64, 1, 1), expected (1, 128, 1, 1)' in message
  )


def test_unknown_backbone_is_rejected() -> None:
  with pytest.raises(ValueError, match='unknown LPIPS backbone'):
    lpips.lpips_params_from_state_dict({}, 'squeeze')


@pytest.mark.parametrize('backbone', ['alex', 'vgg'])
def test_load_from_torchvision_and_head_files(
    backbone: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  package = lpips_recipe_state_dict(backbone)
  torchvision = {
      f'features.{k.split(".")[2]}.{k.split(".")[3]}': v
      for k, v in package.items()
      if k.startswith('net.')
  }
  torchvision['classifier.1.weight'] = np.zeros((4, 9216), np.float32)
  torchvision['classifier.1.bias'] = np.zeros((4,), np.float32)
  heads = {f'lin{k}.model.1.weight': package[f'lins.{k}.model.1.weight'] for k in range(5)}
  files = {str(tmp_path / 'backbone.pth'): torchvision, str(tmp_path / 'head.pth'): heads}
  monkeypatch.setattr(lpips, 'load_state_dict', lambda path: files[str(path)])
  loaded = lpips.load_lpips_params(tmp_path / 'backbone.pth', tmp_path / 'head.pth', backbone)
  direct = lpips.lpips_params_from_state_dict(package, backbone)
  assert set(loaded['params']) == set(direct['params'])
  for name, leaves in direct['params'].items():
    for leaf, value in leaves.items():
      np.testing.assert_array_equal(np.asarray(loaded['params'][name][leaf]), np.asarray(value))
