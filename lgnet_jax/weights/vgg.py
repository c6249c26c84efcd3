"""Loads the frozen VGG16 weights of the perceptual and style losses, without torch.

Accepted files:
- torchvision's full ImageNet VGG16 state dict `vgg16-397923af.pth` (the layers after pool3
  and the classifier are ignored),
- a reduced state dict holding only `features.{0,2,5,7,10,12,14}.{weight,bias}`,
- an `.npz` written by `python -m lgnet_jax.tools.convert_vgg16`: the Flax params flattened
  with '/'-joined keys (`conv1_1/kernel`, ...).

The result is the `params` collection of `models.VGG16Features`, used as
`VGG16Features().apply({'params': params}, images)`.
"""

import os
import pathlib
import re
import zipfile
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lgnet_jax import errors
from lgnet_jax.weights import official, pth, torch_weights
from lgnet_jax.models.vgg16 import VGG16Features

TORCHVISION_FILE = 'vgg16-397923af.pth'
TORCHVISION_URL = 'https://download.pytorch.org/models/vgg16-397923af.pth'
# torchvision's VGG16 `features` entries past index 16 lie after pool3, which the losses do not use.
_LAST_FEATURE_INDEX = 16
_FEATURE_KEY = re.compile(r'features\.(\d+)\.')

Params = dict


class VGGWeightsError(errors.UserError):
  """VGG16 weights that are missing or cannot be loaded; the message is one line."""


def where_to_get_weights() -> str:
  return (
      f"get torchvision's ImageNet VGG16 weights {TORCHVISION_FILE} from the torchvision "
      f'model zoo ({TORCHVISION_URL}; download it on a machine with internet), then pass '
      'that file, or convert it with `python -m lgnet_jax.tools.convert_vgg16 IN.pth OUT.npz`'
  )


def expected_params() -> Params:
  """The params of `VGG16Features` as `jax.ShapeDtypeStruct`s (nothing is computed)."""
  variables = jax.eval_shape(
      lambda: VGG16Features().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
  )
  return variables['params']


def _is_npz(path: pathlib.Path) -> bool:
  """An `.npz` is a zip of `.npy` members; a zip-format `.pth` holds `data.pkl` instead."""
  try:
    if not zipfile.is_zipfile(path):
      return False
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
  except (OSError, zipfile.BadZipFile):
    return False  # the .pth reader then reports what is wrong with the file
  return bool(names) and all(name.endswith('.npy') for name in names)


def _used(keys: Iterable[str]) -> list[str]:
  """The keys of a torchvision VGG16 state dict that the losses use (up to pool3, no classifier)."""
  kept = []
  for key in keys:
    match = _FEATURE_KEY.match(key)
    if not key.startswith('classifier.') and not (
        match and int(match.group(1)) > _LAST_FEATURE_INDEX
    ):
      kept.append(key)
  return kept


def _from_pth(path: pathlib.Path) -> Params:
  """The params from a `.pth`, its names and shapes checked before any tensor is read; the
  unused layers (all but 7 MB of torchvision's 528 MiB file) are never read."""
  expected, source = {'params': expected_params()}, str(path)
  check = official.selector(
      official.vgg16_entries(), expected, source, what='torchvision VGG16', error=VGGWeightsError
  )
  try:
    state_dict = pth.load_state_dict(
        path, select=lambda shapes: check({k: shapes[k] for k in _used(shapes)})
    )
  except pth.CheckpointFormatError as e:
    raise VGGWeightsError(f'cannot read VGG16 weights: {e}') from None
  converted = official.torch_to_flax(
      {key: state_dict[key] for key in _used(state_dict)},
      official.vgg16_entries(),
      expected,
      source,
      what='torchvision VGG16',
      error=VGGWeightsError,
  )
  return converted['params']


def _from_npz(path: pathlib.Path) -> Params:
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {key: np.asarray(data[key]) for key in data.files}
  except Exception as e:  # a corrupt archive surfaces as many different exception types
    raise VGGWeightsError(f'{path}: cannot read the .npz ({type(e).__name__}: {e})') from None
  expected = {'/'.join(k): v for k, v in traverse_util.flatten_dict(expected_params()).items()}
  common = sorted(set(expected) & set(flat))
  message = torch_weights.mismatch_message(
      str(path),
      'the VGG16 params of VGG16Features',
      {
          'missing keys': sorted(set(expected) - set(flat)),
          'unexpected keys': sorted(set(flat) - set(expected)),
          'wrong shapes': [
              f'{key}: shape {flat[key].shape}, expected {tuple(expected[key].shape)}'
              for key in common
              if flat[key].shape != tuple(expected[key].shape)
          ],
          'wrong dtypes': [
              f'{key}: {flat[key].dtype}, expected floating point'
              for key in common
              if not np.issubdtype(flat[key].dtype, np.floating)
          ],
      },
  )
  if message:
    raise VGGWeightsError(message)
  return traverse_util.unflatten_dict(
      {tuple(key.split('/')): value.astype(np.float32) for key, value in flat.items()}
  )


def load_vgg16_params(path: str | os.PathLike | None) -> Params:
  """Reads VGG16 weights (torchvision `.pth` or converted `.npz`) as `VGG16Features` params.

  Returns:
    {'conv1_1': {'kernel': (3, 3, 3, 64), 'bias': (64,)}, ..., 'conv3_3': ...}, float32 numpy.

  Raises:
    VGGWeightsError with a one-line message: where to get the weights if `path` is None or
    does not exist; the file's name and what is wrong with it otherwise.
  """
  if path is None:
    raise VGGWeightsError(
        f'no VGG16 weights given (config.loss.vgg_weights): {where_to_get_weights()}'
    )
  path = pathlib.Path(path)
  if not path.exists():
    raise VGGWeightsError(f'VGG16 weights {path} not found: {where_to_get_weights()}')
  if not path.is_file():
    raise VGGWeightsError(f'VGG16 weights {path} is not a file: {where_to_get_weights()}')
  if _is_npz(path):
    return _from_npz(path)
  return _from_pth(path)


def flatten_params(params: Params) -> dict[str, np.ndarray]:
  """'/'-joined keys -> float32 arrays: the `.npz` layout `load_vgg16_params` reads."""
  return {
      '/'.join(key): np.asarray(value, np.float32)
      for key, value in traverse_util.flatten_dict(params).items()
  }
