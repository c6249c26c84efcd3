"""Mapping between the authors' PyTorch state dicts and this project's Flax variables.

The reference saves one state dict per network (`{epoch}_net_G1.pth`, `_G2`, `_G3`, `_D`)
with pix2pix-style key names (see `spec/official_keys/`). Every entry is mapped onto a
Flax variable (params, BatchNorm `batch_stats`, spectral-norm u/v); anything missing,
unexpected or of the wrong shape is reported in full, never loaded partially.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from lgnet_jax import errors
from lgnet_jax.weights import torch_weights
from lgnet_jax.models import unet as unet_lib
from lgnet_jax.models import vgg16 as vgg16_lib
from lgnet_jax.models.discriminator import SPECTRAL

CONV, CONV_BIAS, BN, SN_CONV = 'conv', 'conv_bias', 'bn', 'sn_conv'


class OfficialCheckpointError(errors.UserError):
  """A state dict that does not fit the network it is loaded into."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One PyTorch layer: its key prefix, the Flax module path, and what kind of layer it is."""

  torch_prefix: str
  flax_path: tuple[str, ...]
  kind: str


def _unet_nested_prefix(level: int) -> str:
  """Prefix of the pix2pix nested block that holds downsampling `level` (2..8)."""
  return 'model.model.1' + '.model.3' * (level - 2)


def unet_entries(flat: bool, attention: bool) -> list[Entry]:
  """Entries of a U-Net: nested pix2pix naming (G1) or the flat `model{k}` naming (G3)."""
  levels = unet_lib.NUM_LEVELS
  entries = [Entry('model1.0' if flat else 'model.model.0', ('down1',), CONV)]
  for level in range(2, levels + 1):
    if flat:
      block = f'model{level}'
      entries.append(Entry(f'{block}.1', (f'down{level}',), CONV))
      if level < levels:
        entries.append(Entry(f'{block}.2', (f'down{level}_bn',), BN))
      else:
        entries.append(Entry(f'{block}.3', ('up8',), CONV))
        entries.append(Entry(f'{block}.4', ('up8_bn',), BN))
    else:
      block = _unet_nested_prefix(level)
      entries.append(Entry(f'{block}.model.1', (f'down{level}',), CONV))
      if level < levels:
        entries.append(Entry(f'{block}.model.2', (f'down{level}_bn',), BN))
        entries.append(Entry(f'{block}.model.5', (f'up{level}',), CONV))
        entries.append(Entry(f'{block}.model.6', (f'up{level}_bn',), BN))
      else:
        entries.append(Entry(f'{block}.model.3', ('up8',), CONV))
        entries.append(Entry(f'{block}.model.4', ('up8_bn',), BN))
  if flat:
    for level in range(levels - 1, 1, -1):  # model9 is up7, ..., model14 is up2
      block = f'model{2 * levels - level}'
      entries.append(Entry(f'{block}.1', (f'up{level}',), CONV))
      entries.append(Entry(f'{block}.2', (f'up{level}_bn',), BN))
  entries.append(
      Entry(f'model{2 * levels - 1}.1' if flat else 'model.model.3', ('up1',), CONV_BIAS)
  )
  if attention:
    for name in unet_lib.ATTENTION_AFTER.values():
      size = name.split('_')[-1]
      entries.append(Entry(f'att_{size}.combiner', (name, 'combiner'), CONV_BIAS))
  return entries


def local_refiner_entries(num_blocks: int = 4) -> list[Entry]:
  """Entries of the pix2pix ResNet generator (G2): indices into its `model` Sequential."""
  entries = [
      Entry('model.1', ('stem',), CONV),
      Entry('model.2', ('stem_bn',), BN),
      Entry('model.4', ('down1',), CONV),
      Entry('model.5', ('down1_bn',), BN),
      Entry('model.7', ('down2',), CONV),
      Entry('model.8', ('down2_bn',), BN),
  ]
  for i in range(num_blocks):
    block = f'model.{10 + i}.conv_block'
    entries += [
        Entry(f'{block}.1', (f'block{i + 1}', 'conv1'), CONV),
        Entry(f'{block}.2', (f'block{i + 1}', 'bn1'), BN),
        Entry(f'{block}.5', (f'block{i + 1}', 'conv2'), CONV),
        Entry(f'{block}.6', (f'block{i + 1}', 'bn2'), BN),
    ]
  up = 10 + num_blocks
  entries += [
      Entry(f'model.{up}', ('up1',), CONV),
      Entry(f'model.{up + 1}', ('up1_bn',), BN),
      Entry(f'model.{up + 3}', ('up2',), CONV),
      Entry(f'model.{up + 4}', ('up2_bn',), BN),
      Entry(f'model.{up + 7}', ('head',), CONV_BIAS),
  ]
  return entries


def discriminator_entries() -> list[Entry]:
  entries = [Entry(f'encoder.{2 * i}', (f'conv{i + 1}',), SN_CONV) for i in range(4)]
  return entries + [Entry('classifier', ('classifier',), CONV_BIAS)]


def vgg16_entries() -> list[Entry]:
  return [
      Entry(f'features.{index}', (name,), CONV_BIAS)
      for index, name in zip(vgg16_lib.TORCHVISION_CONV_INDICES, vgg16_lib.conv_names())
  ]


# kind -> [(torch suffix, flax collection, flax leaf name)]
_LEAVES = {
    CONV: [('weight', 'params', 'kernel')],
    CONV_BIAS: [('weight', 'params', 'kernel'), ('bias', 'params', 'bias')],
    BN: [
        ('weight', 'params', 'scale'),
        ('bias', 'params', 'bias'),
        ('running_mean', 'batch_stats', 'mean'),
        ('running_var', 'batch_stats', 'var'),
    ],
    SN_CONV: [
        ('weight_orig', 'params', 'kernel'),
        ('weight_u', SPECTRAL, 'u'),
        ('weight_v', SPECTRAL, 'v'),
    ],
}
_IGNORED_SUFFIXES = {BN: ('num_batches_tracked',)}


def layout(entries: Iterable[Entry]) -> tuple[dict[str, tuple[str, ...]], set[str]]:
  """The torch -> Flax layout of `entries`, and the keys accepted but not loaded."""
  mapping, optional = {}, set()
  for entry in entries:
    for suffix, collection, leaf in _LEAVES[entry.kind]:
      mapping[f'{entry.torch_prefix}.{suffix}'] = (collection,) + entry.flax_path + (leaf,)
    optional.update(
        f'{entry.torch_prefix}.{suffix}' for suffix in _IGNORED_SUFFIXES.get(entry.kind, ())
    )
  return mapping, optional


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    entries: Iterable[Entry],
    expected: Mapping,
    source: str,
    what: str = 'the network',
    error: type[errors.UserError] = OfficialCheckpointError,
) -> dict:
  """Flax variables shaped like `expected` ({collection: nested dict}) from a state dict whose
  layers are `entries` (one of the `*_entries` functions); see `torch_weights.to_flax`."""
  mapping, optional = layout(entries)
  return torch_weights.to_flax(
      state_dict, mapping, expected, source=source, what=what, optional=optional, error=error
  )


def selector(
    entries: Iterable[Entry],
    expected: Mapping,
    source: str,
    what: str = 'the network',
    error: type[errors.UserError] = OfficialCheckpointError,
) -> Callable[[Mapping[str, tuple[int, ...]]], list[str]]:
  """The `pth.load_state_dict` select of `torch_to_flax`'s check (see `torch_weights.selector`)."""
  mapping, optional = layout(entries)
  return torch_weights.selector(
      mapping, expected, source=source, what=what, optional=optional, error=error
  )
