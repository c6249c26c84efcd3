"""The settings check that training and evaluation both start with: `check_config`.

It names the first setting that cannot run (`ConfigError`, one line, exit status 2) before
anything is written or compiled. It lives beside the workdir and error modules, below both
`training/` and `evaluation/`, so each can import it (training also imports evaluation, for
evaluation while training; evaluation imports nothing of training).
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from lgnet_jax import errors, models
from lgnet_jax.models import first_stage as first_stage_lib
from lgnet_jax.models import lgnet

# The values of optim.optimizer (see training.state.make_optimizer).
OPTIMIZERS = ('adam', 'sgd')

# Whole-number settings and their least value; None is allowed for those marked optional.
WHOLE_NUMBER_SETTINGS = {
    'train': {
        'batch_size': 1,
        'log_every_steps': 1,
        'sample_every_steps': 1,
        'checkpoint_every_steps': 1,
        'keep_checkpoints': 1,
        'num_train_steps': 1,
        'eval_every_steps': 0,
        'eval_num_images': 1,
    },
    'eval': {'batch_size': 1, 'num_samples': 0},
}
OPTIONAL_SETTINGS = ('keep_checkpoints', 'num_train_steps', 'num_samples')


class ConfigError(errors.UserError):
  """A configuration that cannot run."""


def _check_whole_numbers(config: ml_collections.ConfigDict, section: str) -> None:
  for name, least in WHOLE_NUMBER_SETTINGS[section].items():
    value = config[section][name]
    if value is None and name in OPTIONAL_SETTINGS:
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ConfigError(
          f'{section}.{name} must be a whole number of at least {least}, got {value!r}'
      )


def _check_model(model: ml_collections.ConfigDict) -> None:
  if model.variant not in models.VARIANTS:
    raise ConfigError(f'model.variant {model.variant!r} is not one of {", ".join(models.VARIANTS)}')
  for name in ('dtype', 'param_dtype'):
    try:
      floating = jnp.issubdtype(jnp.dtype(model[name]), jnp.floating)
    except TypeError:
      floating = False
    if not floating:
      raise ConfigError(
          f'model.{name} {model[name]!r} is not a floating-point type such as '
          'float32 or bfloat16'
      )
  for name in ('ngf', 'ngf_local', 'ndf'):
    value = model[name]
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise ConfigError(f'model.{name} must be a whole number of at least 1, got {value!r}')
  if model.image_size <= 0 or model.image_size % 256:  # the U-Nets halve the size eight times
    raise ConfigError(f'model.image_size {model.image_size} is not a multiple of 256')


def _check_first_stage(config: ml_collections.ConfigDict, mode: str) -> None:
  """A first stage other than the coarse U-Net (see models/first_stage.py): a variant with
  LG stages behind it, a name that imports, frozen weights, precomputed results' folders."""
  model = config.model
  spec = model.get('first_stage', first_stage_lib.BUILT_IN)
  if not isinstance(spec, str):
    raise ConfigError(f'model.first_stage must be a string, got {spec!r}')
  trainable = model.get('first_stage_trainable', True)
  if not isinstance(trainable, bool):
    raise ConfigError(f'model.first_stage_trainable must be True or False, got {trainable!r}')
  if spec == first_stage_lib.BUILT_IN:
    if not trainable:
      raise ConfigError(
          'model.first_stage_trainable=False freezes a first stage of your own: set '
          'model.first_stage=module:callable (and model.first_stage_weights)'
      )
    return
  stages = lgnet.VARIANT_STAGES[model.variant]
  if model.variant == 'lgnet_share' or len(stages) < 2:
    raise ConfigError(
        f'model.first_stage {spec!r} needs a variant with stages after the first (lgnet, '
        f'lgnet_light, C+L, ...), not {model.variant!r}'
    )
  if spec == first_stage_lib.PRECOMPUTED:
    if mode == 'eval' and not config.data.get('test_first_stage_dir'):
      raise ConfigError(
          'model.first_stage=precomputed evaluates the results of your first stage: set '
          '--config.data.test_first_stage_dir=DIR (write its inputs with lgnet eval-pairs)'
      )
    if mode != 'eval' and not (config.data.get('first_stage_dir') and config.data.train_mask_dir):
      raise ConfigError(
          'model.first_stage=precomputed trains on fixed triples: set '
          '--config.data.first_stage_dir=DIR (the results) and --config.data.train_mask_dir=DIR '
          '(the masks they were made with), both named as the training images'
      )
    return
  try:
    first_stage_lib.resolve(spec)
  except first_stage_lib.FirstStageError as e:
    raise ConfigError(str(e)) from None
  if not trainable and mode != 'eval' and not model.get('first_stage_weights'):
    raise ConfigError(
        f'model.first_stage_trainable=False: the frozen {spec} needs its weights, '
        '--config.model.first_stage_weights=PATH (.msgpack or an orbax checkpoint)'
    )


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_optimizer(optim: ml_collections.ConfigDict) -> None:
  """Values Adam or SGD cannot train with: a learning rate or epsilon not above 0, a beta
  outside [0, 1), a negative epoch count, or no epoch at all."""
  if optim.optimizer not in OPTIMIZERS:
    raise ConfigError(f'optim.optimizer {optim.optimizer!r} is not one of {", ".join(OPTIMIZERS)}')
  for name in ('learning_rate', 'eps'):
    if not _number(optim[name]) or optim[name] <= 0:
      raise ConfigError(f'optim.{name} must be a number above 0, got {optim[name]!r}')
  for name in ('b1', 'b2'):
    if not _number(optim[name]) or not 0 <= optim[name] < 1:
      raise ConfigError(f'optim.{name} must be a number in [0, 1), got {optim[name]!r}')
  for name in ('n_epochs', 'n_epochs_decay'):
    value = optim[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ConfigError(f'optim.{name} must be a whole number of at least 0, got {value!r}')
  if optim.n_epochs + optim.n_epochs_decay < 1:
    raise ConfigError('optim.n_epochs + optim.n_epochs_decay must be at least 1, got 0')


def check_config(
    config: ml_collections.ConfigDict, mode: str = 'train', num_devices: int | None = None
) -> None:
  """A ConfigError for settings that cannot run, before anything is written or compiled.

  Training (`mode` 'train') and evaluation ('eval') both start here; the networks' settings
  are checked for both, the loop's or the evaluation's settings for each. The batch must
  split evenly over `num_devices` (default: every device).
  """
  _check_model(config.model)
  _check_first_stage(config, mode)
  sections = ['eval' if mode == 'eval' else 'train']
  _check_whole_numbers(config, sections[0])
  if mode != 'eval' and config.train.eval_every_steps:  # evaluation while training
    sections.append('eval')
    _check_whole_numbers(config, 'eval')
  if mode != 'eval':
    _check_optimizer(config.optim)
  num_devices = num_devices or jax.device_count()
  for section in sections:
    batch_size = config[section].batch_size
    if batch_size % num_devices:
      raise ConfigError(
          f'{section}.batch_size {batch_size} is not divisible by {num_devices} devices'
      )
