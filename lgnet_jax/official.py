"""Mapping between the authors' PyTorch state dicts and this project's Flax variables.

The reference saves one state dict per network (`{epoch}_net_G1.pth`, `_G2`, `_G3`, `_D`)
with pix2pix-style key names (see `spec/official_keys/`). Every entry is mapped onto a
Flax variable (params, BatchNorm `batch_stats`, spectral-norm u/v); anything missing,
unexpected or of the wrong shape is reported in full, never loaded partially.
"""

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
from flax import traverse_util

from lgnet_jax import errors
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
  entries.append(Entry(f'model{2 * levels - 1}.1' if flat else 'model.model.3', ('up1',), CONV_BIAS))
  if attention:
    for name in unet_lib.ATTENTION_AFTER.values():
      size = name.split('_')[-1]
      entries.append(Entry(f'att_{size}.combiner', (name, 'combiner'), CONV_BIAS))
  return entries


def local_refiner_entries(num_blocks: int = 4) -> list[Entry]:
  """Entries of the pix2pix ResNet generator (G2): indices into its `model` Sequential."""
  entries = [Entry('model.1', ('stem',), CONV), Entry('model.2', ('stem_bn',), BN),
             Entry('model.4', ('down1',), CONV), Entry('model.5', ('down1_bn',), BN),
             Entry('model.7', ('down2',), CONV), Entry('model.8', ('down2_bn',), BN)]
  for i in range(num_blocks):
    block = f'model.{10 + i}.conv_block'
    entries += [Entry(f'{block}.1', (f'block{i + 1}', 'conv1'), CONV),
                Entry(f'{block}.2', (f'block{i + 1}', 'bn1'), BN),
                Entry(f'{block}.5', (f'block{i + 1}', 'conv2'), CONV),
                Entry(f'{block}.6', (f'block{i + 1}', 'bn2'), BN)]
  up = 10 + num_blocks
  entries += [Entry(f'model.{up}', ('up1',), CONV), Entry(f'model.{up + 1}', ('up1_bn',), BN),
              Entry(f'model.{up + 3}', ('up2',), CONV), Entry(f'model.{up + 4}', ('up2_bn',), BN),
              Entry(f'model.{up + 7}', ('head',), CONV_BIAS)]
  return entries


def discriminator_entries() -> list[Entry]:
  entries = [Entry(f'encoder.{2 * i}', (f'conv{i + 1}',), SN_CONV) for i in range(4)]
  return entries + [Entry('classifier', ('classifier',), CONV_BIAS)]


def vgg16_entries() -> list[Entry]:
  return [Entry(f'features.{index}', (name,), CONV_BIAS)
          for index, name in zip(vgg16_lib.TORCHVISION_CONV_INDICES, vgg16_lib.conv_names())]


def _torch_to_flax_kernel(weight: np.ndarray) -> np.ndarray:
  """(out, in, kh, kw) Conv or (in, out, kh, kw) ConvTranspose -> (kh, kw, in|out, out|in)."""
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


# kind -> [(torch suffix, flax collection, flax leaf name)]
_LEAVES = {
    CONV: [('weight', 'params', 'kernel')],
    CONV_BIAS: [('weight', 'params', 'kernel'), ('bias', 'params', 'bias')],
    BN: [('weight', 'params', 'scale'), ('bias', 'params', 'bias'),
         ('running_mean', 'batch_stats', 'mean'), ('running_var', 'batch_stats', 'var')],
    SN_CONV: [('weight_orig', 'params', 'kernel'), ('weight_u', SPECTRAL, 'u'),
              ('weight_v', SPECTRAL, 'v')],
}
_IGNORED_SUFFIXES = {BN: ('num_batches_tracked',)}


def _shape_of(x) -> tuple[int, ...]:
  return tuple(int(d) for d in x.shape)


def torch_to_flax(state_dict: Mapping[str, np.ndarray], entries: Iterable[Entry],
                  expected: Mapping, source: str) -> dict:
  """Converts a PyTorch state dict into Flax variables shaped like `expected`.

  Args:
    state_dict: key -> array, as read from a `.pth` file.
    entries: the network's layers (one of the `*_entries` functions).
    expected: the network's variables, arrays or `jax.ShapeDtypeStruct`s, as
      {collection: nested dict}; every leaf must be produced exactly once.
    source: a name for messages, such as the file path.

  Raises:
    OfficialCheckpointError listing every missing key, unexpected key and wrong shape.
  """
  expected_flat = {(collection,) + path: leaf
                   for collection, tree in expected.items()
                   for path, leaf in traverse_util.flatten_dict(tree).items()}
  converted, consumed, missing, wrong_shape = {}, set(), [], []
  for entry in entries:
    for suffix in _IGNORED_SUFFIXES.get(entry.kind, ()):
      consumed.add(f'{entry.torch_prefix}.{suffix}')
    for suffix, collection, leaf in _LEAVES[entry.kind]:
      key = f'{entry.torch_prefix}.{suffix}'
      if key not in state_dict:
        missing.append(key)
        continue
      consumed.add(key)
      value = np.asarray(state_dict[key])
      if leaf == 'kernel':
        value = _torch_to_flax_kernel(value)
      flax_key = (collection,) + entry.flax_path + (leaf,)
      if flax_key not in expected_flat:
        wrong_shape.append(f'{key}: no matching Flax variable {"/".join(flax_key)}')
        continue
      want = _shape_of(expected_flat[flax_key])
      if value.shape != want:
        torch_want = want if leaf != 'kernel' else tuple(want[i] for i in (3, 2, 0, 1))
        wrong_shape.append(f'{key}: shape {tuple(state_dict[key].shape)}, expected {torch_want}')
        continue
      converted[flax_key] = value.astype(np.float32)
  unexpected = sorted(set(state_dict) - consumed)
  not_filled = sorted('/'.join(k) for k in set(expected_flat) - set(converted)
                      if not missing and not wrong_shape)
  if missing or unexpected or wrong_shape or not_filled:
    parts = [f'{source} does not match the network']
    for title, items in (('missing keys', missing), ('unexpected keys', unexpected),
                         ('wrong shapes', wrong_shape), ('variables not loaded', not_filled)):
      if items:
        shown = ', '.join(items[:6]) + (f', ... ({len(items)} in all)' if len(items) > 6 else '')
        parts.append(f'{title}: {shown}')
    raise OfficialCheckpointError('; '.join(parts))
  nested: dict = {}
  for flat_key, value in converted.items():
    nested.setdefault(flat_key[0], {})[flat_key[1:]] = value
  return {collection: traverse_util.unflatten_dict(tree) for collection, tree in nested.items()}
