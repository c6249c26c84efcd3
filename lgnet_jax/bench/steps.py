"""The whole programs: the data-parallel training step (timed, or traced with the profiler) and
the inference forward pass, on random weights and random inputs of the config's sizes."""

import functools
import time
from collections.abc import Callable

import jax
from absl import logging

from lgnet_jax import errors
from lgnet_jax.bench import floor, profiling, timing
from lgnet_jax.models import build_generator, vgg16
from lgnet_jax.runtime import sharding
from lgnet_jax.training import losses
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.training import step as train_step_lib


class BenchError(errors.UserError):
  """A benchmark that cannot run as asked (batch size, devices): exit status 2."""


def random_vgg_params(config):
  """A randomly initialised VGG16 (as `training.start.load_vgg_params` builds for demos), or None when
  the perceptual and style weights are both 0 and the step skips VGG."""
  if not losses.uses_vgg(config.loss):
    return None
  return vgg16.random_params(config.seed + 1)


def _train_setup(
    config, batch_size: int | None, with_reference: bool = False
) -> tuple[Callable[[], tuple], object, float, float | None, int, float | None]:
  """The compiled training step on random state and inputs, ready to call repeatedly.

  Returns (call, compiled, compile seconds, flops, global batch, reference flops); each `call()`
  runs one step on the state the previous call returned (the state is donated) and returns
  (state, terms). The reference flops, when asked for, are the step's arithmetic as direct
  convolutions (`floor.reference_flops`; None otherwise: tracing the step again takes seconds).
  """
  batch_size = batch_size or config.train.batch_size
  devices = jax.device_count()
  if batch_size % devices:
    raise BenchError(f'batch size {batch_size} is not divisible by {devices} devices')
  mesh = sharding.create_mesh()
  replicated = sharding.replicated(mesh)
  data_sharding = sharding.batch_split(mesh)

  create = functools.partial(train_state_lib.create_train_state, config)
  with timing.quick_init():
    state = jax.jit(create, out_shardings=replicated)(jax.random.PRNGKey(config.seed))
    vgg_params = jax.device_put(random_vgg_params(config), replicated)
  local = batch_size // jax.process_count()
  batch = sharding.make_global_batch(
      timing.random_inputs(local, config.model.image_size, seed=jax.process_index()), data_sharding
  )

  step_fn = train_step_lib.compile_train_step(config, mesh)
  reference = (  # traced before the first call donates the state
      floor.reference_flops(step_fn, state, batch, vgg_params) if with_reference else None
  )
  compiled, compile_s, flops = timing.compile_ahead(step_fn, state, batch, vgg_params)
  logging.info('train step compiled in %.1f s', compile_s)

  def call():
    nonlocal state
    state, terms = compiled(state, batch, vgg_params)  # the state is donated: thread it through
    return state, terms

  return call, compiled, compile_s, flops, batch_size, reference


def train(config, batch_size: int | None, steps: int, warmup: int) -> dict:
  """The data-parallel training step on every device: compile time, step times, flops."""
  call, _, compile_s, flops, batch_size, reference = _train_setup(config, batch_size, True)
  results = []
  seconds = timing.time_calls(lambda: results.append(call()) or results[-1], warmup, steps)
  terms = jax.device_get(results[-1][1])
  logging.info('last step: %s', {k: round(float(v), 5) for k, v in terms.items()})
  result = timing.timing_result(
      'train', batch_size, jax.device_count(), compile_s, seconds, flops, config
  )
  return result | floor.floor_fields(
      reference, batch_size, result['step_s_median'], config.model.dtype
  )


def profile(config, batch_size: int | None, steps: int, warmup: int, profile_dir: str) -> dict:
  """Traces `steps` training steps into `profile_dir` and summarises where the time went."""
  call, compiled, compile_s, flops, batch_size, _ = _train_setup(config, batch_size)
  for _ in range(warmup):
    jax.block_until_ready(call())
  start = time.perf_counter()
  with jax.profiler.trace(profile_dir):
    for _ in range(steps):
      jax.block_until_ready(call())
  step_s = (time.perf_counter() - start) / steps
  summary = profiling.summarize(profile_dir, compiled.as_text(), steps)
  return {
      'what': 'profile',
      'batch_size': batch_size,
      'devices': jax.device_count(),
      'backend': jax.default_backend(),
      'host': timing.host_name(),
      'compile_s': round(compile_s, 3),
      'step_s_traced': round(step_s, 3),
      'flops_per_image': None if flops is None else round(flops * jax.device_count() / batch_size),
      'profile_dir': str(profile_dir),
      **summary,
      **timing.describe(config),
  }


def infer(config, batch_size: int | None, steps: int, warmup: int) -> dict:
  """Every stage in evaluation mode on one device, jitted as `inference.Inpainter` runs it."""
  batch_size = batch_size or 1
  generator = build_generator(config.model)
  inputs = jax.device_put(timing.random_inputs(batch_size, config.model.image_size))
  images, masks = inputs['image'], inputs['mask']
  with timing.quick_init():
    variables = jax.jit(functools.partial(generator.init, train=False))(
        jax.random.PRNGKey(config.seed), images, masks
    )
  forward = jax.jit(functools.partial(generator.apply, train=False))
  reference = floor.reference_flops(forward, variables, images, masks)
  compiled, compile_s, flops = timing.compile_ahead(forward, variables, images, masks)
  logging.info('forward pass compiled in %.1f s', compile_s)
  seconds = timing.time_calls(lambda: compiled(variables, images, masks), warmup, steps)
  result = timing.timing_result('infer', batch_size, 1, compile_s, seconds, flops, config)
  return result | floor.floor_fields(
      reference, batch_size, result['step_s_median'], config.model.dtype
  )
