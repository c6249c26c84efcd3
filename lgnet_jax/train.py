"""LGNet training: `train_and_evaluate(config, workdir)`.

The loop around the data-parallel step of `train_step.py`: state born sharded or restored,
the input pipeline, checkpoints, summaries, samples (also WORKDIR/samples.png, the latest),
signals, non-finite checks and one console line per log interval.
"""

import functools
import math
import os
import signal
import time
from collections.abc import Callable, Mapping

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, metrics, periodic_actions
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from lgnet_jax import distributed, image_io, input_pipeline, losses, vgg_weights
from lgnet_jax import train_state as train_state_lib
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.models import vgg16
from lgnet_jax.train_state import TrainState
from lgnet_jax.train_step import DATA_AXIS, Batch, compile_train_step, create_mesh, make_global_batch

SAMPLES_FILE = 'samples.png'  # the latest sample grid, next to the TensorBoard files


class TrainingError(RuntimeError):
  """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class ConfigError(ValueError):
  """A configuration that cannot run."""


def load_vgg_params(config: ml_collections.ConfigDict):
  """ImageNet VGG16 params from `loss.vgg_weights`, a random VGG for demos, or None if unused."""
  loss = config.loss
  if not losses.uses_vgg(loss):
    return None
  if loss.get('vgg_weights'):
    return vgg_weights.load_vgg16_params(loss.vgg_weights)
  if loss.get('vgg_random_init'):
    logging.warning('perceptual and style losses use a RANDOMLY initialised VGG16 '
                    '(loss.vgg_random_init): fine for a demo, not for real training')
    return vgg16.random_params(config.seed + 1)
  raise vgg_weights.VGGWeightsError(
      'the perceptual and style losses need ImageNet VGG16 weights: set '
      f'--config.loss.vgg_weights=PATH. {vgg_weights.where_to_get_weights()}')


def sample_grid(outputs: Mapping[str, jax.Array], batch: Batch, max_samples: int = 4) -> np.ndarray:
  """Rows of [masked input, merged1..mergedS, ground truth] as one (1, H', W', 3) image in [0, 1]."""
  images, masks = np.asarray(batch['image'])[:max_samples], np.asarray(batch['mask'])[:max_samples]
  stages = sorted(k for k in outputs if k.startswith('merged'))
  columns = [images * (1 - masks) + masks] + [np.asarray(outputs[k])[:max_samples] for k in stages]
  columns.append(images)
  rows = np.concatenate(columns, axis=2)  # (N, H, S*W, 3)
  grid = np.concatenate(list(rows), axis=0)[None]  # (1, N*H, S*W, 3)
  return np.clip((grid + 1.0) / 2.0, 0.0, 1.0)


def format_duration(seconds: float) -> str:
  """`42s`, `7m05s` or `3h20m`."""
  seconds = max(int(round(seconds)), 0)
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


class ConsoleProgress:
  """The console's line per log interval: step, images/s, ETA and the headline losses.

  Times run from the moment the first step of this run had finished (so compiling is not
  counted): images/s over the interval since the previous line, the ETA from the average
  step time since then.
  """

  def __init__(self, num_train_steps: int, batch_size: int):
    self.num_train_steps, self.batch_size = num_train_steps, batch_size
    self._start: tuple[int, float] | None = None  # (step, time) the clock started at
    self._previous: tuple[int, float] | None = None  # the previous line's

  def finished(self, step: int) -> None:
    """`step`'s results are on the host; the first call starts the clock."""
    if self._start is None:
      self._start = self._previous = (step, time.monotonic())

  def line(self, step: int, scalars: Mapping[str, float]) -> str:
    """`[step] images/s, ETA, train/total_g=..., train/l1_hole_S=...` (S the last stage)."""
    self.finished(step)
    now = time.monotonic()
    (start_step, start), (previous_step, previous) = self._start, self._previous
    self._previous = (step, now)
    if step > previous_step:
      seconds = max(now - previous, 1e-6)
      speed = f'{(step - previous_step) * self.batch_size / seconds:.2f} img/s'
      eta = format_duration((now - start) / (step - start_step) * (self.num_train_steps - step))
    else:
      speed, eta = '- img/s', '-'
    holes = sorted((k for k in scalars if k.startswith('train/l1_hole_')),
                   key=lambda k: int(k.rsplit('_', 1)[1]))
    shown = [k for k in ('train/total_g', *holes[-1:]) if k in scalars]
    terms = [f'{k}={scalars[k]:.4f}' for k in shown]
    if scalars.get('train/skipped_images'):
      terms.append(f'train/skipped_images={int(scalars["train/skipped_images"])}')
    return f'[{step}] {speed}, ETA {eta}, ' + ', '.join(terms)


def write_samples(writer: metric_writers.MetricWriter, workdir: epath.Path, step: int,
                  grid: np.ndarray) -> None:
  """The sample grid to TensorBoard and, as the latest one, to WORKDIR/samples.png (process 0)."""
  writer.write_images(step, {'samples': grid})
  if jax.process_index() == 0:
    image_io.save_image_atomic(workdir / SAMPLES_FILE, np.round(grid[0] * 255).astype(np.uint8))


class StopSignal:
  """SIGTERM or SIGINT: finish the step, save, exit 0.

  With several processes every one must stop after the same step (the save is collective),
  so the decision goes through JAX's preemption sync: SIGTERM to any process is the
  runtime's preemption notice, SIGINT is forwarded to it as SIGTERM, and
  `should_stop(step)` turns true on every process at the same step.
  """

  def __init__(self):
    self.received: int | None = None
    self._multi_process = jax.process_count() > 1
    self._previous = {}
    # Multi-process: SIGTERM stays with the runtime's own preemption notifier.
    for sig in (signal.SIGINT,) if self._multi_process else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('received signal %d: finishing the step, saving, exiting', signum)
    self.received = signum
    if self._multi_process:
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step`; called after every step on every process."""
    if self._multi_process:
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = self.received or signal.SIGTERM
        return True
      return False
    return self.received is not None

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_finite(step: int, terms: Mapping[str, jax.Array]) -> dict[str, float]:
  """Host values of the loss terms; a NaN or Inf stops training naming the step and term."""
  values = {k: float(v) for k, v in jax.device_get(dict(terms)).items()}
  bad = [f'{k}={v}' for k, v in sorted(values.items()) if not math.isfinite(v)]
  if bad:
    raise TrainingError(f'non-finite loss at step {step}: {", ".join(bad)}; training stopped, '
                        'the last checkpoint is the last good state')
  return values


def _init_from(state: TrainState, source: str, config: ml_collections.ConfigDict) -> TrainState:
  """Networks (not optimizers) of another workdir's latest checkpoint, e.g. an imported one."""
  source_config = workdir_lib.load_config(source)
  for key, default in (('variant', None), ('ngf', None), ('ngf_local', None), ('ndf', 64)):
    there, here = source_config.model.get(key, default), config.model.get(key, default)
    if there != here:
      raise ConfigError(f'init_from {source}: model.{key} is {there!r} there but {here!r} here')
  fields = ('g_params', 'g_batch_stats', 'd_params', 'd_spectral')
  restored = workdir_lib.restore_state(source, source_config, fields=fields,
                                       sharding=state.step.sharding)
  logging.info('initialised the networks from %s', source)
  return state.replace(**restored, g_opt_state=state.g_tx.init(restored['g_params']),
                       d_opt_state=state.d_tx.init(restored['d_params']))


def _compile_everywhere(step_fn: Callable, timeout_s: float, *args) -> Callable:
  """The step compiled for `args`, returned once every process has compiled it."""
  compiled = step_fn.lower(*args).compile()
  distributed.barrier('train_step_compiled', timeout_s)
  return compiled


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from `workdir`'s latest checkpoint if any) and returns the final state."""
  workdir = workdir_lib.as_path(workdir)
  mesh = create_mesh()
  replicated = NamedSharding(mesh, PartitionSpec())
  data_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  batch_size = config.train.batch_size
  if config.optim.get('optimizer', 'adam') not in train_state_lib.OPTIMIZERS:
    raise ConfigError(f'optim.optimizer {config.optim.optimizer!r} is not one of '
                      f'{", ".join(train_state_lib.OPTIMIZERS)}')
  if batch_size % jax.device_count():
    raise ConfigError(f'train.batch_size {batch_size} is not divisible by {jax.device_count()} devices')
  if config.model.image_size % 256:  # the U-Nets halve the size eight times
    raise ConfigError(f'model.image_size {config.model.image_size} is not a multiple of 256')

  manager = workdir_lib.checkpoint_manager(workdir, max_to_keep=config.train.keep_checkpoints,
                                           async_save=config.train.async_checkpointing)
  resume_step = manager.latest_step()
  # The input position is restored from the checkpoint when it was written by as many
  # processes as now; otherwise every process starts at global batch `resume_step`, which
  # is the same position (see input_pipeline.GlobalBatchSampler).
  restore_data = resume_step is not None and workdir_lib.has_data_state(manager, resume_step)
  train_iter, num_images = input_pipeline.create_train_iterator(
      config, start_batch=0 if resume_step is None or restore_data else resume_step)
  vgg_params = load_vgg_params(config)
  steps_per_epoch = max(math.ceil(num_images / batch_size), 1)
  num_train_steps = config.train.get('num_train_steps') or (
      (config.optim.n_epochs + config.optim.n_epochs_decay) * steps_per_epoch)

  create = functools.partial(train_state_lib.create_train_state, config,
                             steps_per_epoch=steps_per_epoch)
  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(create, rng)
  state_shardings = jax.tree.map(lambda _: replicated, abstract_state)

  workdir_lib.save_config(workdir, config)
  if resume_step is not None:
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract_state, state_shardings)
    items = {workdir_lib.STATE_ITEM: ocp.args.StandardRestore(abstract)}
    if restore_data:
      items[workdir_lib.DATA_ITEM] = grain.checkpoint.CheckpointRestore(train_iter)
    state = manager.restore(resume_step, args=ocp.args.Composite(**items))[workdir_lib.STATE_ITEM]
    logging.info('resumed from %s at step %d%s', manager.directory, resume_step,
                 '' if restore_data else ' (written by another number of processes: the input '
                 f'continues at global batch {resume_step})')
  else:
    state = jax.jit(create, out_shardings=replicated)(rng)
    if config.get('init_from'):
      state = _init_from(state, config.init_from, config)
  # The optimizers are static fields, new objects on every trace of `create`: the step's
  # shardings tree is taken from the state it will receive.
  state_shardings = jax.tree.map(lambda _: replicated, state)

  vgg_params = jax.device_put(vgg_params, replicated)
  step_fn = compile_train_step(config, mesh, state_shardings)
  generator, _ = train_state_lib.build_networks(config)
  # Samples are gathered on every process (replicated), so process 0 can write them.
  sample_fn = jax.jit(lambda variables, batch: (generator.apply(
      variables, batch['image'], batch['mask'], train=False), batch), out_shardings=replicated)
  schedule = train_state_lib.learning_rate_schedule(config.optim, steps_per_epoch)

  # Only process 0 writes summaries and logs metrics; the others write nothing.
  writer = (metric_writers.create_default_writer(str(workdir)) if jax.process_index() == 0
            else metric_writers.MultiWriter([]))
  report_progress = periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer)
  progress = ConsoleProgress(num_train_steps, batch_size)
  stop = StopSignal()
  first_step = int(state.step)
  logging.info('training steps %d..%d (%d per epoch, global batch %d on %d devices)', first_step + 1,
               num_train_steps, steps_per_epoch, batch_size, jax.device_count())

  def save(step: int, terms: Mapping[str, jax.Array]) -> None:
    check_finite(step, terms)  # never checkpoint a broken state
    manager.save(step, force=True, args=ocp.args.Composite(**{
        workdir_lib.STATE_ITEM: ocp.args.StandardSave(state),
        workdir_lib.DATA_ITEM: grain.checkpoint.CheckpointSave(train_iter)}))

  metrics_type, accumulated = None, None
  skipped_images = 0  # unreadable training images replaced by the next good one, this run
  pending: tuple[int, dict] | None = None
  sample_batch = None
  started = time.monotonic()
  try:
    with metric_writers.ensure_flushes(writer):
      for step in range(first_step + 1, num_train_steps + 1):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          local_batch = next(train_iter)
          skipped_images += int(np.sum(local_batch.pop('skipped', 0)))
          batch = make_global_batch(local_batch, data_sharding)
          if step == first_step + 1:
            step_fn = _compile_everywhere(step_fn, config.distributed.initialization_timeout_s,
                                          state, batch, vgg_params)
          state, terms = step_fn(state, batch, vgg_params)
        if sample_batch is None:
          sample_batch = batch
        if pending is not None:  # checked one step late so the device keeps busy
          check_finite(*pending)
          progress.finished(pending[0])
        pending = (step, terms)
        if metrics_type is None:
          metrics_type = metrics.Collection.create(
              **{name: metrics.Average.from_output(name) for name in terms})
        update = metrics_type.single_from_model_output(**terms)
        accumulated = update if accumulated is None else accumulated.merge(update)
        report_progress(step)

        last = step == num_train_steps
        if step % config.train.log_every_steps == 0 or last:
          scalars = {f'train/{k}': float(v) for k, v in accumulated.compute().items()}
          scalars['train/learning_rate'] = float(schedule(step - 1))
          scalars['train/skipped_images'] = int(np.sum(
              multihost_utils.process_allgather(np.asarray(skipped_images))))
          writer.write_scalars(step, scalars)
          if jax.process_index() == 0:
            logging.info('%s', progress.line(step, scalars))
          accumulated = None
        if step % config.train.sample_every_steps == 0 or last:
          outputs, inputs = jax.device_get(sample_fn(state.generator_variables, sample_batch))
          write_samples(writer, workdir, step, sample_grid(outputs, inputs))
        stopping = stop.should_stop(step)
        if step % config.train.checkpoint_every_steps == 0 or last or stopping:
          save(step, terms)
        if stopping:
          logging.warning('stopped by signal %d at step %d; checkpoint saved', stop.received, step)
          break
      if pending is not None:
        check_finite(*pending)
  finally:
    stop.restore()
    manager.wait_until_finished()
    manager.close()
  if jax.process_index() == 0 and int(state.step) == num_train_steps > first_step:
    logging.info('finished %d steps in %s: checkpoints, TensorBoard logs and %s in %s',
                 num_train_steps - first_step, format_duration(time.monotonic() - started),
                 SAMPLES_FILE, workdir)
  return state
