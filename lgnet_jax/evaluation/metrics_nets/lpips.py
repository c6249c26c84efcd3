"""LPIPS v0.1 (the ``lpips`` package, ``LPIPS(net='alex'|'vgg', version='0.1')``) in Flax linen.

LPIPS numbers are only comparable across papers when computed with the package's exact
network: its fixed input scaling layer, the torchvision AlexNet or VGG16 ``features``
backbone, unit-normalised features and learned non-negative 1x1 heads. This module
reproduces that network in NHWC float32 and loads its weights from the package's own
state-dict key layout (``net.slice{k}.{N}.*``, ``lin{k}.model.1.weight``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lgnet_jax import errors
from lgnet_jax.weights import torch_weights
from lgnet_jax.weights.pth import load_state_dict

__all__ = [
    'BACKBONES',
    'LPIPS',
    'LPIPSWeightsError',
    'SCALING_SCALE',
    'SCALING_SHIFT',
    'expected_state_dict_shapes',
    'load_lpips_params',
    'lpips_params_from_state_dict',
    'lpips_state_dict_from_torchvision',
    'make_lpips_fn',
]

SCALING_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
SCALING_SCALE = np.array([0.458, 0.448, 0.450], np.float32)

# One entry per feature conv: (torchvision `features` index, slice, out channels, kernel,
# stride, padding, max-pool (window, stride) applied before the conv or None).
_ConvSpec = tuple[int, int, int, int, int, int, 'tuple[int, int] | None']

_ALEX: tuple[_ConvSpec, ...] = (
    (0, 1, 64, 11, 4, 2, None),
    (3, 2, 192, 5, 1, 2, (3, 2)),
    (6, 3, 384, 3, 1, 1, (3, 2)),
    (8, 4, 256, 3, 1, 1, None),
    (10, 5, 256, 3, 1, 1, None),
)


def _vgg16_specs() -> tuple[_ConvSpec, ...]:
  """VGG16 `features` convs with their indices (ReLU after each, 2x2 pool between blocks)."""
  blocks = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
  specs, index = [], 0
  for block, (channels, count) in enumerate(blocks, start=1):
    for i in range(count):
      pool = (2, 2) if block > 1 and i == 0 else None
      if pool is not None:
        index += 1
      specs.append((index, block, channels, 3, 1, 1, pool))
      index += 2
  return tuple(specs)


_VGG = _vgg16_specs()
BACKBONES: dict[str, tuple[_ConvSpec, ...]] = {'alex': _ALEX, 'vgg': _VGG}


class LPIPSWeightsError(errors.UserError):
  """LPIPS weights that do not fit the network, or an unknown backbone."""


def _specs(backbone: str) -> tuple[_ConvSpec, ...]:
  if backbone not in BACKBONES:
    raise LPIPSWeightsError(
        f'unknown LPIPS backbone {backbone!r}; expected one of {sorted(BACKBONES)}'
    )
  return BACKBONES[backbone]


def _tap_indices(specs: tuple[_ConvSpec, ...]) -> list[int]:
  """Positions in `specs` whose ReLU output is an LPIPS layer: the last conv of each slice."""
  return [i for i, spec in enumerate(specs) if i + 1 == len(specs) or specs[i + 1][1] != spec[1]]


def _max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """PyTorch MaxPool2d with floor mode and no padding."""
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding='VALID')


def _normalize(x: jax.Array, eps: float = 1e-10) -> jax.Array:
  """Unit length over channels, as the package's `normalize_tensor`."""
  return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + eps)


class LPIPS(nn.Module):
  """LPIPS v0.1 distance between two NHWC image batches in [-1, 1]; returns (B,)."""

  backbone: str = 'alex'

  @nn.compact
  def __call__(self, img_a: jax.Array, img_b: jax.Array) -> jax.Array:
    specs = _specs(self.backbone)
    taps = _tap_indices(specs)
    shift = jnp.asarray(SCALING_SHIFT)
    scale = jnp.asarray(SCALING_SCALE)
    batch = img_a.shape[0]
    x = (jnp.concatenate([img_a, img_b], axis=0).astype(jnp.float32) - shift) / scale
    convs = [
        nn.Conv(
            ch,
            (k, k),
            strides=(s, s),
            padding=((p, p), (p, p)),
            precision=jax.lax.Precision.HIGHEST,
            name=f'conv{index}',
        )
        for index, _, ch, k, s, p, _ in specs
    ]
    total = jnp.zeros((batch,), jnp.float32)
    for i, (spec, conv) in enumerate(zip(specs, convs)):
      pool = spec[6]
      if pool is not None:
        x = _max_pool(x, *pool)
      x = nn.relu(conv(x))
      if i in taps:
        k = taps.index(i)
        diff = (_normalize(x[:batch]) - _normalize(x[batch:])) ** 2
        head = nn.Conv(
            1, (1, 1), use_bias=False, precision=jax.lax.Precision.HIGHEST, name=f'lin{k}'
        )
        total = total + jnp.mean(head(diff), axis=(1, 2, 3))
    return total


def _layout(backbone: str) -> dict[str, tuple[str, ...]]:
  """The package's state-dict keys this port reads -> the Flax variables they fill."""
  specs = _specs(backbone)
  layout = {}
  for index, block, *_ in specs:
    layout[f'net.slice{block}.{index}.weight'] = ('params', f'conv{index}', 'kernel')
    layout[f'net.slice{block}.{index}.bias'] = ('params', f'conv{index}', 'bias')
  for k in range(len(_tap_indices(specs))):
    layout[f'lin{k}.model.1.weight'] = ('params', f'lin{k}', 'kernel')
  return layout


def _expected_variables(backbone: str) -> dict[str, Any]:
  """`LPIPS(backbone)`'s variables as `jax.ShapeDtypeStruct`s (nothing is computed)."""
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(LPIPS(backbone).init, jax.random.PRNGKey(0), images, images)


def expected_state_dict_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
  """The package's LPIPS state-dict keys this port reads, with their PyTorch shapes."""
  params = traverse_util.flatten_dict(_expected_variables(backbone)['params'])
  return {
      key: torch_weights.torch_shape(flax_key, tuple(params[flax_key[1:]].shape))
      for key, flax_key in _layout(backbone).items()
  }


# Entries of a full `LPIPS().state_dict()` that carry nothing this port needs: the scaling
# constants, which are fixed here.
_IGNORED_PREFIXES = ('scaling_layer.',)


def _resolve_heads(state_dict: Mapping[str, Any], n_heads: int) -> dict[str, Any]:
  """Folds `lins.{k}.*` aliases onto `lin{k}.*`.

  A full package state dict holds both names for one shared tensor; torch's
  `load_state_dict` assigns `lins.{k}` last, so it wins when both are present.
  """
  out = dict(state_dict)
  for k in range(n_heads):
    alias = f'lins.{k}.model.1.weight'
    if alias in out:
      out[f'lin{k}.model.1.weight'] = out.pop(alias)
  return out


def lpips_params_from_state_dict(
    state_dict: Mapping[str, Any], backbone: str, source: str = 'the state dict'
) -> dict[str, Any]:
  """Flax variables for `LPIPS(backbone)` from a package-layout state dict.

  Raises LPIPSWeightsError with one line naming every missing, unexpected or misshapen key.
  """
  resolved = _resolve_heads(state_dict, len(_tap_indices(_specs(backbone))))
  return torch_weights.to_flax(
      resolved,
      _layout(backbone),
      _expected_variables(backbone),
      source=source,
      what=f'the LPIPS {backbone} network',
      optional={key for key in resolved if key.startswith(_IGNORED_PREFIXES)},
      error=LPIPSWeightsError,
  )


def lpips_state_dict_from_torchvision(
    backbone_state: Mapping[str, Any], head_state: Mapping[str, Any], backbone: str
) -> dict[str, Any]:
  """Renames torchvision `features.N.*` and package head keys to the LPIPS layout.

  Classifier entries of the torchvision file are dropped; any other key is kept as is so
  that `lpips_params_from_state_dict` reports it.
  """
  slice_of = {index: block for index, block, *_ in _specs(backbone)}
  out: dict[str, Any] = {}
  for key, value in backbone_state.items():
    parts = key.split('.')
    if parts[0] == 'classifier':
      continue
    if (
        len(parts) == 3
        and parts[0] == 'features'
        and parts[1].isdigit()
        and int(parts[1]) in slice_of
    ):
      out[f'net.slice{slice_of[int(parts[1])]}.{parts[1]}.{parts[2]}'] = value
    else:
      out[key] = value
  out.update(head_state)
  return out


def load_lpips_params(
    backbone_weights_path: str | os.PathLike, head_weights_path: str | os.PathLike, backbone: str
) -> dict[str, Any]:
  """Flax variables from torchvision's backbone file and the package's head file.

  `alexnet-owt-7be5be79.pth` or `vgg16-397923af.pth` with `alex.pth` or `vgg.pth`.
  """
  state = lpips_state_dict_from_torchvision(
      load_state_dict(backbone_weights_path), load_state_dict(head_weights_path), backbone
  )
  return lpips_params_from_state_dict(
      state, backbone, f'{os.fspath(backbone_weights_path)} with {os.fspath(head_weights_path)}'
  )


def make_lpips_fn(
    variables: Mapping[str, Any], backbone: str
) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """A jitted (img_a, img_b) -> (B,) LPIPS distance for NHWC images in [-1, 1]."""
  model = LPIPS(backbone=backbone)

  @jax.jit
  def distance(img_a: jax.Array, img_b: jax.Array) -> jax.Array:
    return model.apply(variables, img_a, img_b)

  return distance
