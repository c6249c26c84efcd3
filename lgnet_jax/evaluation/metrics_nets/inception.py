"""The FID InceptionV3 of `pytorch-fid`, in Flax (NHWC, float32), and its weight loader.

FID values are only comparable across papers when the features come from the network
`pytorch-fid` defines as `InceptionV3([3], resize_input=True, normalize_input=True,
use_fid_inception=True)`: the TensorFlow FID graph ("pt_inception-2015-12-05") with its own
Mixed block variants. This module reproduces it: bilinear resize to 299x299 as PyTorch's
`F.interpolate(..., align_corners=False)` (no antialiasing), scaling to [-1, 1], the network
up to Mixed_7c, and the global average pool giving 2048-d pool3 features.

Weights come from `pt_inception-2015-12-05-6726825d.pth`, read without torch by
`lgnet_jax.weights.pth.load_state_dict`; `fid_params_from_state_dict` maps its PyTorch key names
onto the Flax variables and refuses missing, unexpected or misshaped entries.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lgnet_jax import errors
from lgnet_jax.weights import pth, torch_weights

__all__ = [
    'FIDInceptionV3',
    'FIDInceptionWeightsError',
    'FID_INCEPTION_FILE',
    'fid_params_from_state_dict',
    'load_fid_inception_params',
    'make_feature_fn',
]

FID_INCEPTION_FILE = 'pt_inception-2015-12-05-6726825d.pth'
FID_INPUT_SIZE = 299
_BN_EPS = 1e-3
# Entries of the checkpoint that pool3 features do not use: accepted, ignored, optional.
_UNUSED_KEYS = ('fc.weight', 'fc.bias')

Variables = dict[str, Any]
Padding = tuple[int, int]


class FIDInceptionWeightsError(errors.UserError):
  """FID Inception weights that are missing or do not fit the network; the message is one line."""


def _pair(v: int | Padding) -> Padding:
  return (v, v) if isinstance(v, int) else tuple(v)


def _resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of PyTorch's bilinear resampling along one axis, align_corners=False."""
  scale = in_size / out_size
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  src = np.maximum(src, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = (src - i0).astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), 1.0 - lam)
  np.add.at(m, (rows, i1), lam)
  return m


def resize_bilinear_torch(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Resizes NHWC `x` to `size` like `F.interpolate(mode='bilinear', align_corners=False)`."""
  h, w = x.shape[1], x.shape[2]
  if (h, w) == tuple(size):
    return x
  mh = jnp.asarray(_resize_matrix(h, size[0]))
  mw = jnp.asarray(_resize_matrix(w, size[1]))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,bhwc->bowc', mh, x, precision=hi)
  return jnp.einsum('pw,bowc->bopc', mw, x, precision=hi)


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1 average pool that divides by the in-image count only."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  win, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, win, strides, pad)
  ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, win, strides, pad)
  return total / count


def _max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
  """3x3 max pool (PyTorch `max_pool2d`, floor mode, padding ignored as -inf)."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)


class BasicConv2d(nn.Module):
  """Conv without bias, BatchNorm (eps 1e-3) on running statistics, ReLU."""

  features: int
  kernel: int | Padding
  stride: int = 1
  padding: int | Padding = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(
        self.features,
        _pair(self.kernel),
        strides=(self.stride, self.stride),
        padding=((ph, ph), (pw, pw)),
        use_bias=False,
        name='conv',
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPS, name='bn')(x)
    return nn.relu(x)


class FIDInceptionA(nn.Module):
  """Mixed_5b..5d: 1x1, 5x5, double 3x3 and avg-pool (padding excluded) branches."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, 1, name='branch1x1')(x)
    b5 = BasicConv2d(48, 1, name='branch5x5_1')(x)
    b5 = BasicConv2d(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, 1, name='branch_pool')(_avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17 with a max-pool branch."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, 3, stride=2, name='branch3x3')(x)
    bd = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, 3, stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b..6e: factorised 7x7 branches and avg-pool (padding excluded)."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name='branch1x1')(x)
    b7 = BasicConv2d(c7, 1, name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, 1, name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, 1, name='branch_pool')(_avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8 with a max-pool branch."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, 1, name='branch3x3_1')(x)
    b3 = BasicConv2d(320, 3, stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, 1, name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, 3, stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (avg-pool branch, padding excluded) and Mixed_7c (max-pool branch)."""

  max_pool_branch: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(320, 1, name='branch1x1')(x)
    b3 = BasicConv2d(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate(
        [
            BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3),
        ],
        axis=-1,
    )
    bd = BasicConv2d(448, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate(
        [
            BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd),
        ],
        axis=-1,
    )
    pooled = _max_pool(x, 1, padding=1) if self.max_pool_branch else _avg_pool_3x3_exclude_pad(x)
    bp = BasicConv2d(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3: images (B, H, W, 3) in [0, 1] -> pool3 features (B, 2048)."""

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = jnp.asarray(images, jnp.float32)
    x = resize_bilinear_torch(x, (FID_INPUT_SIZE, FID_INPUT_SIZE))
    x = 2.0 * x - 1.0
    x = BasicConv2d(32, 3, stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, 3, name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool(x, 2)
    x = BasicConv2d(80, 1, name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool(x, 2)
    x = FIDInceptionA(32, name='Mixed_5b')(x)
    x = FIDInceptionA(64, name='Mixed_5c')(x)
    x = FIDInceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = FIDInceptionC(128, name='Mixed_6b')(x)
    x = FIDInceptionC(160, name='Mixed_6c')(x)
    x = FIDInceptionC(160, name='Mixed_6d')(x)
    x = FIDInceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = FIDInceptionE(max_pool_branch=False, name='Mixed_7b')(x)
    x = FIDInceptionE(max_pool_branch=True, name='Mixed_7c')(x)
    return jnp.mean(x, axis=(1, 2))


def _torch_key(collection: str, path: Sequence[str]) -> str:
  """The PyTorch key of one Flax leaf of `FIDInceptionV3`."""
  *modules, leaf = path
  names = {
      ('params', 'kernel'): 'weight',
      ('params', 'scale'): 'weight',
      ('params', 'bias'): 'bias',
      ('batch_stats', 'mean'): 'running_mean',
      ('batch_stats', 'var'): 'running_var',
  }
  return f'{".".join(modules)}.{names[(collection, leaf)]}'


def _expected_variables() -> Variables:
  """The network's variables as `jax.ShapeDtypeStruct`s (nothing is computed)."""
  return jax.eval_shape(
      FIDInceptionV3().init,
      jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, FID_INPUT_SIZE, FID_INPUT_SIZE, 3), jnp.float32),
  )


def fid_params_from_state_dict(
    state_dict: dict[str, np.ndarray], source: str = 'the state dict'
) -> Variables:
  """Maps a pytorch-fid FID Inception state dict onto `FIDInceptionV3` variables.

  Every network entry must be present with its PyTorch shape; `num_batches_tracked` and the
  unused `fc` classifier are accepted and ignored. Anything else raises
  `FIDInceptionWeightsError` with a one-line message.
  """
  expected = _expected_variables()
  layout = {
      _torch_key(collection, path): (collection,) + path
      for collection, tree in expected.items()
      for path in traverse_util.flatten_dict(tree)
  }
  optional = set(_UNUSED_KEYS) | {
      key.removesuffix('running_mean') + 'num_batches_tracked'
      for key in layout
      if key.endswith('.running_mean')
  }
  return torch_weights.to_flax(
      state_dict,
      layout,
      expected,
      source=source,
      what='the pytorch-fid FID Inception network',
      optional=optional,
      error=FIDInceptionWeightsError,
  )


def load_fid_inception_params(path: str | os.PathLike) -> Variables:
  """Reads `pt_inception-2015-12-05-6726825d.pth` (torch-free) into `FIDInceptionV3` variables."""
  try:
    state_dict = pth.load_state_dict(path)
  except pth.CheckpointFormatError as e:
    raise FIDInceptionWeightsError(f'cannot read FID Inception weights: {e}') from e
  return fid_params_from_state_dict(state_dict, os.fspath(path))


def make_feature_fn(variables: Variables) -> Callable[[jax.Array], jax.Array]:
  """A jitted function: images (B, H, W, 3) in [0, 1] -> FID pool3 features (B, 2048)."""
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  apply = jax.jit(FIDInceptionV3().apply)

  def features(images: jax.Array) -> jax.Array:
    return apply(variables, images)

  return features
