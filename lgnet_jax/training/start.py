"""Where a training run starts: every check, then the state (restored or fresh), the input,
the VGG16 weights of the losses and the evaluator for evaluation while training.

Nothing is written before every check has passed; config.json only by a fresh start (or
when a resumed workdir lacks it).
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding

from lgnet_jax import workdir as workdir_lib
from lgnet_jax.config_checks import check_config
from lgnet_jax.data import batching, sources
from lgnet_jax.evaluation import evaluate
from lgnet_jax.models import vgg16
from lgnet_jax.training import checkpoints, losses
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.training.state import TrainState
from lgnet_jax.weights import first_stage as first_stage_weights
from lgnet_jax.weights import vgg as vgg_weights

Evaluator = Callable[[dict], dict[str, dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class Start:
  """A run ready for its first step: its state, input, length, the VGG16 weights of its losses
  and its evaluator (None when it makes no evaluation while training)."""

  state: TrainState
  train_iter: checkpoints.InputIterator
  steps_per_epoch: int
  num_train_steps: int
  vgg_params: object
  evaluator: Evaluator | None


def load_vgg_params(config: ml_collections.ConfigDict):
  """ImageNet VGG16 params from `loss.vgg_weights`, a random VGG for demos, or None if unused."""
  loss = config.loss
  if not losses.uses_vgg(loss):
    return None
  if loss.vgg_weights:
    return vgg_weights.load_vgg16_params(loss.vgg_weights)
  if loss.vgg_random_init:
    logging.warning(
        'perceptual and style losses use a RANDOMLY initialised VGG16 '
        '(loss.vgg_random_init): fine for a demo, not for real training'
    )
    return vgg16.random_params(config.seed + 1)
  raise vgg_weights.VGGWeightsError(
      'the perceptual and style losses need ImageNet VGG16 weights: set '
      f'--config.loss.vgg_weights=PATH. {vgg_weights.where_to_get_weights()}'
  )


def periodic_evaluator(
    config: ml_collections.ConfigDict, mesh, num_train_steps: int, first_step: int
) -> Evaluator | None:
  """Evaluation while training (see evaluate.periodic_evaluator); None if the run makes none."""
  every = config.train.eval_every_steps
  if not every or num_train_steps // every == first_step // every:
    return None
  try:
    return evaluate.periodic_evaluator(config, mesh)
  except sources.DataError as e:
    raise sources.DataError(
        f'{e} (evaluation while training reads the test set every train.eval_every_steps={every} '
        'steps; --config.train.eval_every_steps=0 turns it off)'
    ) from None


def _state_bytes(tree) -> int:
  return sum(
      int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)
  )


def start(
    config: ml_collections.ConfigDict, workdir: epath.Path, replicated: NamedSharding
) -> Start:
  """Checks everything, then restores the newest readable checkpoint or starts afresh."""
  check_config(config, num_devices=replicated.mesh.size)
  workdir_lib.check_writable(workdir)
  reader = workdir_lib.checkpoint_manager(workdir, read_only=True)
  latest = reader.latest_step()
  if latest is not None:
    checkpoints.check_same_model(workdir, config)
  train_iter, num_images = batching.create_train_iterator(config)
  vgg_params = load_vgg_params(config)
  steps_per_epoch = max(math.ceil(num_images / config.train.batch_size), 1)
  num_train_steps = config.train.num_train_steps or (
      (config.optim.n_epochs + config.optim.n_epochs_decay) * steps_per_epoch
  )
  create = functools.partial(
      train_state_lib.create_train_state, config, steps_per_epoch=steps_per_epoch
  )
  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(create, rng)
  workdir_lib.check_free_space(workdir, _state_bytes(abstract_state))
  if latest is not None:
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract_state
    )
    state, step = checkpoints.restore_newest(config, reader, abstract)
    train_iter, note = checkpoints.restore_input(config, reader, step, train_iter)
    logging.info('resumed from %s at step %d%s', reader.directory, step, note)
  else:
    state = jax.jit(create, out_shardings=replicated)(rng)
    if config.init_from:
      state = checkpoints.init_from(state, config.init_from, config)
    if train_state_lib.frozen_stages(config.model):
      path = config.model.first_stage_weights
      g_params, g_batch_stats = first_stage_weights.into_generator(
          state.g_params, state.g_batch_stats, path
      )
      state = state.replace(g_params=g_params, g_batch_stats=g_batch_stats)
      logging.info('first stage %s frozen, from %s', config.model.first_stage, path)
  evaluator = periodic_evaluator(config, replicated.mesh, num_train_steps, int(state.step))
  if latest is None or not (workdir / workdir_lib.CONFIG_FILE).is_file():
    workdir_lib.save_config(workdir, config)
  reader.close()
  return Start(
      state,
      train_iter,
      steps_per_epoch,
      num_train_steps,
      jax.device_put(vgg_params, replicated),
      evaluator,
  )
