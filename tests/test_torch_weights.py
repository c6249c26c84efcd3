"""The one torch -> Flax mapping: kernels transposed, optional keys dropped, every problem named."""

import jax
import numpy as np
import pytest

from lgnet_jax.weights import torch_weights

EXPECTED = {
    'params': {
        'conv': {
            'kernel': jax.ShapeDtypeStruct((3, 3, 2, 5), np.float32),
            'bias': jax.ShapeDtypeStruct((5,), np.float32),
        }
    },
    'batch_stats': {'bn': {'mean': jax.ShapeDtypeStruct((5,), np.float32)}},
}
LAYOUT = {
    'c.weight': ('params', 'conv', 'kernel'),
    'c.bias': ('params', 'conv', 'bias'),
    'n.running_mean': ('batch_stats', 'bn', 'mean'),
}


def state_dict() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      'c.weight': rng.normal(size=(5, 2, 3, 3)),
      'c.bias': rng.normal(size=5),
      'n.running_mean': rng.normal(size=5),
      'n.num_batches_tracked': np.array(3),
  }


def test_kernels_are_transposed_and_optional_keys_dropped():
  torch = state_dict()
  variables = torch_weights.to_flax(
      torch, LAYOUT, EXPECTED, source='f.pth', optional={'n.num_batches_tracked'}
  )
  kernel = variables['params']['conv']['kernel']
  assert kernel.shape == (3, 3, 2, 5) and kernel.dtype == np.float32
  np.testing.assert_allclose(kernel[1, 2, 0, 4], torch['c.weight'][4, 0, 1, 2], rtol=1e-6)
  np.testing.assert_allclose(
      variables['batch_stats']['bn']['mean'], torch['n.running_mean'], rtol=1e-6
  )


def test_every_problem_is_named_in_one_line_with_the_callers_error():
  class LoaderError(torch_weights.TorchWeightsError):
    pass

  torch = state_dict()
  del torch['c.bias']
  torch['c.weight'] = np.zeros((5, 3, 3, 3))
  with pytest.raises(LoaderError) as info:
    torch_weights.to_flax(
        torch, LAYOUT, EXPECTED, source='f.pth', what='the tiny net', error=LoaderError
    )
  assert str(info.value) == (
      'f.pth does not match the tiny net: missing keys: c.bias; unexpected keys: '
      'n.num_batches_tracked; wrong shapes: c.weight: shape (5, 3, 3, 3), expected (5, 2, 3, 3)'
  )


def test_a_layout_that_leaves_a_variable_empty_is_refused():
  layout = {key: value for key, value in LAYOUT.items() if key != 'c.bias'}
  torch = {key: value for key, value in state_dict().items() if key in layout}
  with pytest.raises(
      torch_weights.TorchWeightsError, match='variables not loaded: params/conv/bias'
  ):
    torch_weights.to_flax(torch, layout, EXPECTED, source='f.pth')


def test_the_selector_checks_names_and_shapes_and_reads_only_the_layout():
  select = torch_weights.selector(
      LAYOUT, EXPECTED, source='f.pth', optional={'n.num_batches_tracked'}
  )
  shapes = {key: value.shape for key, value in state_dict().items()}
  assert select(shapes) == list(LAYOUT)  # the optional key is accepted, not read
  shapes['c.weight'] = (5, 3, 3, 3)
  with pytest.raises(torch_weights.TorchWeightsError) as info:
    select(shapes)
  assert str(info.value) == (
      'f.pth does not match the network: wrong shapes: c.weight: shape (5, 3, 3, 3), '
      'expected (5, 2, 3, 3)'
  )
