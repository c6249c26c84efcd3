"""The one mapping of PyTorch state dicts onto Flax variables, and its one error report.

Every loader of torch weights (the authors' LGNet checkpoints, torchvision's VGG16, pytorch-fid's
Inception, the LPIPS package) describes its network as a layout, torch key -> Flax key, and
calls `to_flax`. The state dict must then fill every Flax variable exactly once with the right
shape; anything else is reported in one line naming every missing key, unexpected key and wrong
shape, and nothing is loaded partially.
"""

from collections.abc import Collection, Mapping

import numpy as np
from flax import traverse_util

from lgnet_jax import errors

# torch key -> (collection, *module path, leaf name), e.g. 'features.0.weight' ->
# ('params', 'conv1_1', 'kernel').
Layout = Mapping[str, tuple[str, ...]]

SHOWN = 6  # names shown per kind of problem; the count of the rest follows


class TorchWeightsError(errors.UserError):
  """A state dict that does not fit the network it is loaded into."""


def kernel_to_flax(weight: np.ndarray) -> np.ndarray:
  """(out, in, kh, kw) Conv or (in, out, kh, kw) ConvTranspose -> (kh, kw, in|out, out|in)."""
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def _is_conv_kernel(flax_key: tuple[str, ...], shape: tuple[int, ...]) -> bool:
  return flax_key[-1] == 'kernel' and len(shape) == 4


def torch_shape(flax_key: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of a Flax variable: 4-D kernels are stored (out, in, kh, kw)."""
  if _is_conv_kernel(flax_key, shape):
    return tuple(shape[i] for i in (3, 2, 0, 1))
  return tuple(shape)


def short_list(items: list[str]) -> str:
  shown = ', '.join(items[:SHOWN])
  return shown + (f', ... ({len(items)} in all)' if len(items) > SHOWN else '')


def mismatch_message(source: str, what: str, problems: Mapping[str, list[str]]) -> str | None:
  """`SOURCE does not match WHAT: missing keys: a, b; wrong shapes: ...`, or None if no problem.

  Each list is shown in its own order (the network's layer order reads best) and cut short."""
  parts = [f'{title}: {short_list(items)}' for title, items in problems.items() if items]
  return f'{source} does not match {what}: ' + '; '.join(parts) if parts else None


def _flat(expected: Mapping) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{(collection, *path, leaf): shape} of `{collection: nested variables}`."""
  return {
      (collection,) + path: tuple(int(d) for d in leaf.shape)
      for collection, tree in expected.items()
      for path, leaf in traverse_util.flatten_dict(tree).items()
  }


def to_flax(
    state_dict: Mapping[str, np.ndarray],
    layout: Layout,
    expected: Mapping,
    *,
    source: str,
    what: str = 'the network',
    optional: Collection[str] = (),
    error: type[errors.UserError] = TorchWeightsError,
) -> dict:
  """Flax variables `{collection: nested dict}` of float32 arrays from a PyTorch state dict.

  Args:
    state_dict: torch key -> array, as `pth.load_state_dict` reads it.
    layout: torch key -> Flax key for every variable of the network.
    expected: the network's variables (arrays or `jax.ShapeDtypeStruct`s) by collection.
    source, what: names for the message (the file; the network).
    optional: torch keys accepted and dropped when present (`num_batches_tracked`, an unused
      classifier).
    error: the loader's error class (a `UserError`).

  Raises:
    `error` naming every missing key, unexpected key, wrong shape and variable left unfilled.
  """
  shapes = _flat(expected)
  problems = {
      'missing keys': [],
      'unexpected keys': [],
      'wrong shapes': [],
      'variables not loaded': [],
  }
  problems['missing keys'] = [key for key in layout if key not in state_dict]
  problems['unexpected keys'] = [
      key for key in state_dict if key not in layout and key not in optional
  ]
  converted = {}
  for key, flax_key in layout.items():
    if key not in state_dict:
      continue
    value = np.asarray(state_dict[key])
    want = shapes.get(flax_key)
    if want is None:
      problems['wrong shapes'].append(f'{key}: no Flax variable {"/".join(flax_key)}')
    elif tuple(value.shape) != torch_shape(flax_key, want):
      problems['wrong shapes'].append(
          f'{key}: shape {tuple(value.shape)}, expected {torch_shape(flax_key, want)}'
      )
    else:
      converted[flax_key] = kernel_to_flax(value) if _is_conv_kernel(flax_key, want) else value
  if not any(problems.values()):
    problems['variables not loaded'] = ['/'.join(k) for k in shapes if k not in converted]
  message = mismatch_message(source, what, problems)
  if message:
    raise error(message)
  nested: dict = {}
  for flax_key, value in converted.items():
    nested.setdefault(flax_key[0], {})[flax_key[1:]] = np.asarray(value, np.float32)
  return {collection: traverse_util.unflatten_dict(tree) for collection, tree in nested.items()}
