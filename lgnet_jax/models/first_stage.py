"""What runs before the local and global refinement (LG): the paper's "X" of "X_LG" (Table VIII).

`config.model.first_stage` names it:
  ''              the variant's own coarse U-Net (LGNet as published);
  'module:attr'   your Flax linen module: `module` is imported and `attr` called with the
                  keyword arguments of `config.model.first_stage_args` and `name`, returning an
                  `nn.Module` (a linen Module class is such a callable);
  'precomputed'   another method's results, read from files (any framework: see
                  lgnet_jax/data/first_stage_results.py); LG alone is a network then.

The contract of a module first stage: called as `stage(x, train)` with
x = concat[known pixels with the holes set to 1.0, mask] of shape (B, H, W, 4), NHWC, images in
[-1, 1], mask 1 = hole (exactly what the coarse U-Net gets), it returns (B, H, W, 3) in [-1, 1].
Networks that need other inputs (MEDFE's structure image, a text prompt) do not fit it.

With `config.model.first_stage_trainable=False` the module is frozen: its BatchNorm runs in
evaluation mode, no gradient reaches it, its parameters come from
`config.model.first_stage_weights` and never change; like a precomputed first stage it then has
no discriminator and no loss term of its own (only LG learns, as `ARCHITECTURE.md` section 3
assigns the terms).
"""

import importlib
import sys
from collections.abc import Callable

import flax.linen as nn
import ml_collections

from lgnet_jax import errors

BUILT_IN = ''
PRECOMPUTED = 'precomputed'


class FirstStageError(errors.UserError):
  """A first stage that cannot be used: a name that does not import, an output of the wrong
  shape, user code without the opt-in."""


def describe(spec: str) -> str:
  """The first stage in words, for tables and messages."""
  if spec == BUILT_IN:
    return 'the coarse U-Net'
  if spec == PRECOMPUTED:
    return 'precomputed results'
  return spec


def is_user_code(spec: str) -> bool:
  """Whether building the generator imports code named by the config (`module:attr`)."""
  return spec not in (BUILT_IN, PRECOMPUTED)


def trains_first_stage(model: ml_collections.ConfigDict) -> bool:
  """Whether the first stage learns (and so has a discriminator and loss terms of its own)."""
  return model.get('first_stage', BUILT_IN) != PRECOMPUTED and model.get(
      'first_stage_trainable', True
  )


def frozen(spec: str, trainable: bool) -> tuple[str, ...]:
  """The generator stages a frozen first stage leaves unchanged: ('G1',) or none."""
  return ('G1',) if is_user_code(spec) and not trainable else ()


def resolve(spec: str) -> Callable[..., nn.Module]:
  """The callable that `spec` ('package.module:attr') names; FirstStageError if it does not
  import or is not callable."""
  module_name, _, attr = spec.partition(':')
  if not module_name or not attr:
    raise FirstStageError(
        f'model.first_stage {spec!r} is not a module:callable name (e.g. my_nets:PenNet), '
        f'{PRECOMPUTED!r} or empty (the coarse U-Net)'
    )
  if '' not in sys.path:
    sys.path.insert(0, '')  # as `python -m`, a module in the working directory imports
  try:
    module = importlib.import_module(module_name)
  except Exception as e:  # pylint: disable=broad-except
    raise FirstStageError(
        f'model.first_stage {spec!r}: importing {module_name} failed: {type(e).__name__}: {e}'
    ) from None
  factory = module
  for part in attr.split('.'):
    factory = getattr(factory, part, None)
  if not callable(factory):
    raise FirstStageError(f'model.first_stage {spec!r}: {module_name} has no callable {attr}')
  return factory


def build(spec: str, args: dict, name: str) -> nn.Module:
  """The first stage `spec` with keyword arguments `args`, as submodule `name` of the module
  being built (call inside a compact method)."""
  stage = resolve(spec)(**args, name=name)
  if not isinstance(stage, nn.Module):
    raise FirstStageError(
        f'model.first_stage {spec!r} returned {type(stage).__name__}, not a flax.linen Module'
    )
  return stage


def check_output(spec: str, out, batch_shape: tuple[int, ...]) -> None:
  """FirstStageError unless the first stage's output has shape (B, H, W, 3) (trace time)."""
  expected = (*batch_shape[:3], 3)
  if tuple(out.shape) != expected:
    raise FirstStageError(
        f'model.first_stage {describe(spec)!r} returned shape {tuple(out.shape)}; the contract '
        f'is (B, H, W, 3) = {expected} in [-1, 1] (see lgnet_jax/models/first_stage.py)'
    )


def check_allowed(model: ml_collections.ConfigDict, allow_user_code: bool, where: str) -> None:
  """FirstStageError unless the workdir's networks import no user code, or the user opted in:
  a config file must not be a way to run code in a server or an exporter."""
  spec = model.get('first_stage', BUILT_IN)
  if is_user_code(spec) and not allow_user_code:
    raise FirstStageError(
        f'{where}: its first stage is user code ({spec}); pass --allow-user-code to import it'
    )


def check_one_network(model: ml_collections.ConfigDict, allow_user_code: bool, where: str) -> None:
  """`check_allowed`, and a FirstStageError for precomputed results: the server and the
  exporters need the whole pipeline as one network, and another method's results are files."""
  if model.get('first_stage', BUILT_IN) == PRECOMPUTED:
    raise FirstStageError(
        f'{where}: its first stage is precomputed results (another method run elsewhere), so '
        'LG alone is not the whole inpainting; use lgnet inpaint --first-stage-dir=RESULTS'
    )
  check_allowed(model, allow_user_code, where)


def as_args(args) -> tuple[tuple[str, object], ...]:
  """`config.model.first_stage_args` as hashable (name, value) pairs (lists become tuples)."""

  def freeze(value):
    if isinstance(value, (list, tuple)):
      return tuple(freeze(v) for v in value)
    return value

  items = args.to_dict() if hasattr(args, 'to_dict') else dict(args or {})
  return tuple(sorted((key, freeze(value)) for key, value in items.items()))
