"""The one mapping of PyTorch state dicts onto Flax variables, and its one error report.

Every loader of torch weights (the authors' LGNet checkpoints, torchvision's VGG16, pytorch-fid's
Inception, the LPIPS package) describes its network as a layout, torch key -> Flax key, and
calls `to_flax`. The state dict must then fill every Flax variable exactly once with the right
shape; anything else is reported in one line naming every missing key, unexpected key and wrong
shape, and nothing is loaded partially. `selector` makes the same check from the names and shapes
alone, before the `.pth` reader reads any tensor data, and reads only the layout's tensors.
"""

from collections.abc import Callable, Collection, Mapping

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


def mismatch_message(source: str, what: str, problems: Mapping[str, list[str]]) -> str | None:
  """`SOURCE does not match WHAT: missing keys: a, b; wrong shapes: ...`, or None if no problem.

  Each list is shown in its own order (the network's layer order reads best) and cut short."""
  parts = [
      f'{title}: {errors.short_list(items, SHOWN)}' for title, items in problems.items() if items
  ]
  return f'{source} does not match {what}: ' + '; '.join(parts) if parts else None


def _flat(expected: Mapping) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{(collection, *path, leaf): shape} of `{collection: nested variables}`."""
  return {
      (collection,) + path: tuple(int(d) for d in leaf.shape)
      for collection, tree in expected.items()
      for path, leaf in traverse_util.flatten_dict(tree).items()
  }


def _problems(
    shapes: Mapping[str, tuple[int, ...]],
    layout: Layout,
    expected: Mapping[tuple[str, ...], tuple[int, ...]],
    optional: Collection[str],
) -> dict[str, list[str]]:
  """Every missing key, unexpected key, wrong shape and (if none) variable left unfilled."""
  problems = {
      'missing keys': [key for key in layout if key not in shapes],
      'unexpected keys': [key for key in shapes if key not in layout and key not in optional],
      'wrong shapes': [],
      'variables not loaded': [],
  }
  filled = set()
  for key, flax_key in layout.items():
    if key not in shapes:
      continue
    want = expected.get(flax_key)
    if want is None:
      problems['wrong shapes'].append(f'{key}: no Flax variable {"/".join(flax_key)}')
    elif tuple(shapes[key]) != torch_shape(flax_key, want):
      problems['wrong shapes'].append(
          f'{key}: shape {tuple(shapes[key])}, expected {torch_shape(flax_key, want)}'
      )
    else:
      filled.add(flax_key)
  if not any(problems.values()):
    problems['variables not loaded'] = ['/'.join(k) for k in expected if k not in filled]
  return problems


def check_shapes(
    shapes: Mapping[str, tuple[int, ...]],
    layout: Layout,
    expected: Mapping,
    *,
    source: str,
    what: str = 'the network',
    optional: Collection[str] = (),
    error: type[errors.UserError] = TorchWeightsError,
) -> None:
  """Raises `error` unless a state dict of these {torch key: shape} fills the network exactly
  (see `to_flax`): a check that needs no tensor data."""
  message = mismatch_message(source, what, _problems(shapes, layout, _flat(expected), optional))
  if message:
    raise error(message)


def selector(
    layout: Layout,
    expected: Mapping,
    *,
    source: str,
    what: str = 'the network',
    optional: Collection[str] = (),
    error: type[errors.UserError] = TorchWeightsError,
) -> Callable[[Mapping[str, tuple[int, ...]]], list[str]]:
  """A `pth.load_state_dict` select: `check_shapes` before any data is read, then the keys of
  `layout` (the optional ones are never read)."""

  def select(shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    check_shapes(shapes, layout, expected, source=source, what=what, optional=optional, error=error)
    return [key for key in shapes if key in layout]

  return select


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
  shapes = {key: np.shape(value) for key, value in state_dict.items()}
  check_shapes(shapes, layout, expected, source=source, what=what, optional=optional, error=error)
  nested: dict = {}
  for key, flax_key in layout.items():
    value = np.asarray(state_dict[key])
    if _is_conv_kernel(flax_key, value.shape):
      value = kernel_to_flax(value)
    nested.setdefault(flax_key[0], {})[flax_key[1:]] = np.asarray(value, np.float32)
  return {collection: traverse_util.unflatten_dict(tree) for collection, tree in nested.items()}
