"""FID InceptionV3 port against pytorch-fid outputs computed with recipe-built weights."""

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import METRICS_FIXTURE, fid_recipe_state_dict
from lgnet_jax.weights import pth
from lgnet_jax.evaluation.metrics_nets import inception
from lgnet_jax.evaluation.metrics_nets.inception import FIDInceptionWeightsError

IO_FILE = METRICS_FIXTURE / 'metrics_io.npz'


@pytest.fixture(scope='module')
def recipe() -> dict[str, np.ndarray]:
  return fid_recipe_state_dict()


def test_resize_matches_pytorch_bilinear():
  """Upsampling 2 -> 4 follows align_corners=False sampling (edge clamped, no antialias)."""
  x = jnp.asarray([[0.0, 1.0]], jnp.float32).reshape(1, 1, 2, 1)
  y = inception.resize_bilinear_torch(x, (1, 4))
  np.testing.assert_allclose(np.asarray(y).ravel(), [0.0, 0.25, 0.75, 1.0], atol=1e-7)
  m = inception._resize_matrix(8, 4)
  np.testing.assert_allclose(m[0], [0.5, 0.5, 0, 0, 0, 0, 0, 0])


def test_pool3_matches_pytorch_fid(recipe):
  """Recipe weights give pytorch-fid's pool3 features on the fixture images."""
  ref_io = np.load(IO_FILE)
  images = np.transpose(ref_io['images'], (0, 2, 3, 1))
  ref = ref_io['fid_pool3']
  variables = inception.fid_params_from_state_dict(recipe)
  ours = np.asarray(inception.make_feature_fn(variables)(images))
  assert ours.shape == (4, 2048) and ours.dtype == np.float32
  rel = np.abs(ours - ref).max() / np.abs(ref).max()
  print(f'FID pool3 max relative error {rel:.3g}')
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_load_from_pth_file(recipe, tmp_path, monkeypatch):
  """The loader reads through `pth.load_state_dict`; unreadable files raise one-line errors."""
  monkeypatch.setattr(pth, 'load_state_dict', lambda path: recipe)
  variables = inception.load_fid_inception_params(tmp_path / 'any.pth')
  np.testing.assert_array_equal(
      variables['params']['Conv2d_1a_3x3']['conv']['kernel'],
      recipe['Conv2d_1a_3x3.conv.weight'].transpose(2, 3, 1, 0),
  )
  monkeypatch.undo()
  with pytest.raises(FIDInceptionWeightsError, match='cannot read'):
    inception.load_fid_inception_params(tmp_path / inception.FID_INCEPTION_FILE)
  bad = tmp_path / 'bad.pth'
  bad.write_bytes(b'not a checkpoint')
  with pytest.raises(FIDInceptionWeightsError) as info:
    inception.load_fid_inception_params(bad)
  assert '\n' not in str(info.value)


def test_wrong_keys_and_shapes_are_reported(recipe):
  """Missing, unexpected and misshaped entries are all named in one line."""
  broken = dict(recipe)
  del broken['Mixed_6b.branch7x7_2.conv.weight']
  broken['Mixed_9z.conv.weight'] = np.zeros((1,), np.float32)
  broken['Conv2d_1a_3x3.bn.running_var'] = np.ones((33,), np.float32)
  with pytest.raises(FIDInceptionWeightsError) as info:
    inception.fid_params_from_state_dict(broken)
  message = str(info.value)
  assert '\n' not in message
  assert 'missing' in message and 'Mixed_6b.branch7x7_2.conv.weight' in message
  assert 'unexpected' in message and 'Mixed_9z.conv.weight' in message
  assert 'wrong shapes' in message and 'Conv2d_1a_3x3.bn.running_var' in message
  with pytest.raises(FIDInceptionWeightsError, match='missing'):
    inception.fid_params_from_state_dict({})


def test_optional_entries_may_be_absent(recipe):
  """The unused fc classifier and num_batches_tracked are not required."""
  trimmed = {
      k: v
      for k, v in recipe.items()
      if not k.startswith('fc.') and not k.endswith('num_batches_tracked')
  }
  variables = inception.fid_params_from_state_dict(trimmed)
  assert variables['params']['Conv2d_1a_3x3']['conv']['kernel'].shape == (3, 3, 3, 32)
  assert variables['batch_stats']['Mixed_7c']['branch_pool']['bn']['var'].shape == (192,)
