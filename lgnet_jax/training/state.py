"""The one train state of LGNet (generators, discriminator, their optimizer states, step) and
the optimizer beside it."""

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from lgnet_jax import models
from lgnet_jax.config_checks import OPTIMIZERS
from lgnet_jax.models import first_stage as first_stage_lib
from lgnet_jax.models.discriminator import SPECTRAL

PyTree = Any


@struct.dataclass
class TrainState:
  """Everything a training step reads and writes, arrays only.

  `g_params` and `g_batch_stats` hold every generator stage ('G1', 'G2', 'G3'; no 'G1' when
  the first stage's results are precomputed); `d_spectral` holds the discriminator's
  power-iteration vectors. The optimizer (`tx`, the same Adam for G and for D) lives beside
  the state, built from the config by `make_optimizer`; the state holds its two optimizer
  states. A run whose first stage does not learn has no discriminator: its three D fields
  are empty.
  """

  step: jax.Array
  g_params: PyTree
  g_batch_stats: PyTree
  d_params: PyTree
  d_spectral: PyTree
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState

  @classmethod
  def create(
      cls, g_variables: Mapping, d_variables: Mapping, tx: optax.GradientTransformation
  ) -> 'TrainState':
    """A state at step 0 with fresh optimizer states of `tx`."""
    g_params, d_params = g_variables['params'], d_variables['params']
    return cls(
        step=jnp.zeros((), jnp.int32),
        g_params=g_params,
        g_batch_stats=g_variables.get('batch_stats', {}),
        d_params=d_params,
        d_spectral=d_variables.get(SPECTRAL, {}),
        g_opt_state=tx.init(g_params),
        d_opt_state=tx.init(d_params),
    )

  @property
  def generator_variables(self) -> dict:
    return {'params': self.g_params, 'batch_stats': self.g_batch_stats}


def learning_rate_schedule(
    optim: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """The reference's schedule: constant for `n_epochs`, then linear decay over `n_epochs_decay`.

  Per epoch e (0-based) the factor is 1 - max(0, e + 1 - n_epochs) / (n_epochs_decay + 1),
  held for the whole epoch, so the last epoch runs at 1/(n_epochs_decay + 1) of the rate.
  With `decay_per_step` the same line is followed continuously, step by step.
  """
  base = optim.learning_rate
  constant_steps = optim.n_epochs * steps_per_epoch
  if optim.decay_per_step:
    return optax.join_schedules(
        [
            optax.constant_schedule(base),
            optax.linear_schedule(
                base,
                base / (optim.n_epochs_decay + 1),
                max(optim.n_epochs_decay * steps_per_epoch, 1),
            ),
        ],
        [constant_steps],
    )

  def schedule(step: jax.Array) -> jax.Array:
    epoch = step // steps_per_epoch
    decayed = jnp.maximum(0, epoch + 1 - optim.n_epochs) / (optim.n_epochs_decay + 1)
    return base * (1.0 - decayed.astype(jnp.float32))

  return schedule


def make_optimizer(
    optim: ml_collections.ConfigDict, steps_per_epoch: int, frozen: tuple[str, ...] = ()
) -> optax.GradientTransformation:
  """Adam(lr, b1, b2, eps) without weight decay, as the reference uses for G and for D; the
  networks named in `frozen` (top-level keys of the parameters, see `frozen_stages`) get no
  update and no optimizer state.

  `optim.optimizer='sgd'` (plain gradient descent on the same schedule) exists for exactness
  checks across device layouts: Adam's first steps move every parameter by about +-lr
  whatever its gradient's size, so float32 rounding differences between two layouts turn
  into +-lr differences; gradient descent keeps them as small as the rounding.
  """
  name = optim.optimizer
  schedule = learning_rate_schedule(optim, steps_per_epoch)
  if name == 'adam':
    tx = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  elif name == 'sgd':
    tx = optax.sgd(schedule)
  else:
    raise ValueError(f'optim.optimizer {name!r} is not one of {", ".join(OPTIMIZERS)}')
  if not frozen:
    return tx

  def labels(params: Mapping) -> dict:
    return {key: 'frozen' if key in frozen else 'learns' for key in params}

  return optax.multi_transform({'learns': tx, 'frozen': optax.set_to_zero()}, labels)


def frozen_stages(model_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The generator stages the optimizer leaves alone: ('G1',) for a frozen first stage."""
  return first_stage_lib.frozen(
      model_config.get('first_stage', first_stage_lib.BUILT_IN),
      model_config.get('first_stage_trainable', True),
  )


def model_dtypes(model_config: ml_collections.ConfigDict) -> dict[str, jnp.dtype]:
  """Compute and parameter dtypes of `config.model`."""
  return {
      'dtype': jnp.dtype(model_config.dtype),
      'param_dtype': jnp.dtype(model_config.param_dtype),
  }


def build_networks(
    config: ml_collections.ConfigDict,
) -> tuple[models.LGNet, models.Discriminator | None]:
  """The generator and the discriminator (None when the first stage does not learn: D only
  ever judges the first stage's composite)."""
  discriminator = None
  if first_stage_lib.trains_first_stage(config.model):
    discriminator = models.Discriminator(config.model.ndf, **model_dtypes(config.model))
  return models.build_generator(config.model), discriminator


def init_variables(
    config: ml_collections.ConfigDict, rng: jax.Array, batch_size: int = 1
) -> tuple[dict, dict]:
  """Random generator and discriminator variables for `config.model` (the discriminator's
  {'params': {}} when there is none)."""
  generator, discriminator = build_networks(config)
  size = config.model.image_size
  g_rng, d_rng = jax.random.split(rng)
  images = jnp.zeros((batch_size, size, size, 3))
  masks = jnp.zeros((batch_size, size, size, 1))
  given = images if generator.first_stage == first_stage_lib.PRECOMPUTED else None
  g_variables = generator.init(g_rng, images, masks, train=False, first_stage_out=given)
  d_variables = {'params': {}}
  if discriminator is not None:
    d_variables = discriminator.init(d_rng, images, update_stats=False)
  return flax.core.unfreeze(g_variables), flax.core.unfreeze(d_variables)


def create_train_state(
    config: ml_collections.ConfigDict, rng: jax.Array, steps_per_epoch: int = 1
) -> TrainState:
  """A freshly initialised state; jit it with `out_shardings` to create it sharded."""
  init_rng, _ = jax.random.split(rng)  # the second key seeded a field older states had
  g_variables, d_variables = init_variables(config, init_rng)
  tx = make_optimizer(config.optim, steps_per_epoch, frozen_stages(config.model))
  return TrainState.create(g_variables, d_variables, tx)
