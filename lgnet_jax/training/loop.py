"""LGNet training: `train_and_evaluate(config, workdir)`.

The loop around the data-parallel step of `train_step.py`: state born sharded or restored,
the input pipeline, checkpoints, summaries, samples (also WORKDIR/samples.png, the latest),
signals, non-finite checks and one console line per log interval.
"""

import dataclasses
import functools
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping

import grain
import grain.python as grain_python
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, metrics, periodic_actions
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from lgnet_jax.runtime import distributed, signals
from lgnet_jax import errors, models
from lgnet_jax.data import batching, image_io, sources
from lgnet_jax.training import losses
from lgnet_jax.runtime import sharding as sharding_lib
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.weights import vgg as vgg_weights
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.models import vgg16
from lgnet_jax.runtime.sharding import batch_split, create_mesh, make_global_batch
from lgnet_jax.training.state import TrainState
from lgnet_jax.training.step import Batch, compile_train_step

SAMPLES_FILE = 'samples.png'  # the latest sample grid, next to the TensorBoard files
InputIterator = grain_python.PyGrainDatasetIterator  # the training input


class TrainingError(RuntimeError):
  """Training cannot go on (a non-finite loss, a failed save); the last good checkpoint is kept."""


class ConfigError(errors.UserError):
  """A configuration that cannot run."""


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


def _check_whole_numbers(config: ml_collections.ConfigDict, section: str) -> None:
  for name, least in WHOLE_NUMBER_SETTINGS[section].items():
    value = config[section][name]
    if value is None and name in OPTIONAL_SETTINGS:
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ConfigError(
          f'{section}.{name} must be a whole number of at least {least}, got {value!r}'
      )


def check_config(
    config: ml_collections.ConfigDict, mode: str = 'train', num_devices: int | None = None
) -> None:
  """A ConfigError for settings that cannot run, before anything is written or compiled.

  Training (`mode` 'train') and evaluation ('eval') both start here; the networks' settings
  are checked for both, the loop's or the evaluation's settings for each. The batch must
  split evenly over `num_devices` (default: every device).
  """
  model = config.model
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
  sections = ['eval' if mode == 'eval' else 'train']
  _check_whole_numbers(config, sections[0])
  if mode != 'eval' and config.train.eval_every_steps:  # evaluation while training
    sections.append('eval')
    _check_whole_numbers(config, 'eval')
  if mode != 'eval' and config.optim.optimizer not in train_state_lib.OPTIMIZERS:
    raise ConfigError(
        f'optim.optimizer {config.optim.optimizer!r} is not one of '
        f'{", ".join(train_state_lib.OPTIMIZERS)}'
    )
  num_devices = num_devices or jax.device_count()
  for section in sections:
    batch_size = config[section].batch_size
    if batch_size % num_devices:
      raise ConfigError(
          f'{section}.batch_size {batch_size} is not divisible by {num_devices} devices'
      )


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
    holes = sorted(
        (k for k in scalars if k.startswith('train/l1_hole_')),
        key=lambda k: int(k.rsplit('_', 1)[1]),
    )
    shown = [k for k in ('train/total_g', *holes[-1:]) if k in scalars]
    terms = [f'{k}={scalars[k]:.4f}' for k in shown]
    if scalars.get('train/skipped_images'):
      terms.append(f'train/skipped_images={int(scalars["train/skipped_images"])}')
    return f'[{step}] {speed}, ETA {eta}, ' + ', '.join(terms)


def write_samples(
    writer: metric_writers.MetricWriter, workdir: epath.Path, step: int, grid: np.ndarray
) -> None:
  """The sample grid to TensorBoard and, as the latest one, to WORKDIR/samples.png (process 0)."""
  writer.write_images(step, {'samples': grid})
  if jax.process_index() == 0:
    image_io.save_image_atomic(workdir / SAMPLES_FILE, np.round(grid[0] * 255).astype(np.uint8))


class StopSignal:
  """SIGTERM or SIGINT after the first step: finish the step, save, exit 0.

  Created once the first step has run; until then (imports, restoring, compiling) the
  program's start-up handling ends the process at once (see signals.py), which it takes over.
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
    handled = (signal.SIGINT,) if self._multi_process else (signal.SIGTERM, signal.SIGINT)
    signals.end_startup(handled)
    for sig in handled:
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
    raise TrainingError(
        f'non-finite loss at step {step}: {", ".join(bad)}; training stopped, '
        'the last checkpoint is the last good state'
    )
  return values


def _init_from(state: TrainState, source: str, config: ml_collections.ConfigDict) -> TrainState:
  """Networks (not optimizers) of another workdir's latest checkpoint, e.g. an imported one."""
  source_config = workdir_lib.load_config(source)
  differences = workdir_lib.model_differences(source_config, config, workdir_lib.SHAPE_MODEL_FIELDS)
  if differences:
    raise ConfigError(f'init_from {source}: {"; ".join(differences)}')
  fields = ('g_params', 'g_batch_stats', 'd_params', 'd_spectral')
  restored = workdir_lib.restore_state(
      source, source_config, fields=fields, sharding=state.step.sharding
  )
  logging.info('initialised the networks from %s', source)
  tx = train_state_lib.make_optimizer(config.optim, steps_per_epoch=1)  # for its initial state
  return state.replace(
      **restored,
      g_opt_state=tx.init(restored['g_params']),
      d_opt_state=tx.init(restored['d_params']),
  )


class CheckpointWriter:
  """The training run's checkpoint saves; one that fails stops training (TrainingError).

  orbax writes in a background thread; `check()` after every step notices a failed write
  as soon as it has ended, and `save`/`close` notice the rest. A failure names the step and
  the cause in one line, removes the step's temporary folder (it may hold most of a full
  disk) and leaves the previous checkpoint as it was, so rerunning the command resumes.
  """

  def __init__(self, workdir: epath.Path, config: ml_collections.ConfigDict):
    self.workdir = workdir
    self.manager = workdir_lib.checkpoint_manager(
        workdir,
        max_to_keep=config.train.keep_checkpoints,
        async_save=config.train.async_checkpointing,
    )
    self._writing: int | None = None  # the step orbax may still be writing

  def _failed(self, step: int, error: BaseException) -> TrainingError:
    directory = epath.Path(self.manager.directory)
    if jax.process_index() == 0:
      for temporary in directory.glob(f'{step}.orbax-checkpoint-tmp*'):
        shutil.rmtree(temporary, ignore_errors=True)
    self.manager.reload()
    previous = self.manager.latest_step()
    kept = 'no checkpoint was written' if previous is None else f'checkpoint {previous} is intact'
    return TrainingError(
        f'cannot save checkpoint {step} in {self.workdir}: '
        f'{workdir_lib.describe_error(error)}; training stopped, {kept} '
        '(rerun the command to resume)'
    )

  def _finish(self) -> None:
    step, self._writing = self._writing, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # whatever the writer raised
      raise self._failed(step, e) from None

  def check(self) -> None:
    """Raises if a background write has failed; never waits for one still running."""
    if self._writing is not None and not self.manager.is_saving_in_progress():
      self._finish()

  def save(self, step: int, args: ocp.args.Composite) -> None:
    self.check()
    try:
      self.manager.save(step, force=True, args=args)
    except Exception as e:  # pylint: disable=broad-except  # whatever the writer raised
      raise self._failed(step, e) from None
    self._writing = step

  def close(self) -> None:
    """Waits for the last write (raising if it failed) and closes the manager."""
    try:
      self._finish()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except  # a failure already raised above
        pass


def _compile_everywhere(step_fn: Callable, timeout_s: float, *args) -> Callable:
  """The step compiled for `args`, returned once every process has compiled it."""
  compiled = step_fn.lower(*args).compile()
  distributed.barrier('train_step_compiled', timeout_s)
  return compiled


def _resume_input(
    config: ml_collections.ConfigDict,
    reader: ocp.CheckpointManager,
    step: int,
    train_iter: InputIterator,
) -> tuple[InputIterator, str]:
  """The input iterator positioned after checkpoint `step`, and a note for the log line.

  The position is restored into `train_iter` (a fresh iterator) when the checkpoint was
  written by as many processes as now; otherwise, or when it cannot be restored, every
  process starts at global batch `step`: the same position for the same global batch size
  (see batching.GlobalBatchSampler).
  """
  if not workdir_lib.has_data_state(reader, step):
    note = ' (written by another number of processes: the input continues at global batch {})'
  else:
    try:
      reader.restore(
          step,
          args=ocp.args.Composite(
              **{workdir_lib.DATA_ITEM: grain.checkpoint.CheckpointRestore(train_iter)}
          ),
      )
      return train_iter, ''
    except Exception as e:  # pylint: disable=broad-except  # grain or orbax, e.g. another batch size
      logging.warning(
          'the input position in checkpoint %d cannot be restored (%s)',
          step,
          workdir_lib.describe_error(e),
      )
      note = ' (the input continues at global batch {})'
  return batching.create_train_iterator(config, start_batch=step)[0], note.format(step)


def check_same_model(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  """A ConfigError when `config` describes other networks than the workdir's checkpoints."""
  if not (workdir / workdir_lib.CONFIG_FILE).is_file():
    return
  there = workdir_lib.load_config(workdir)
  differences = workdir_lib.model_differences(there, config)
  if differences:
    shapes_differ = workdir_lib.model_differences(there, config, workdir_lib.SHAPE_MODEL_FIELDS)
    raise ConfigError(
        f'{workdir} holds checkpoints of other networks: {"; ".join(differences)}. Rerun with '
        'its settings or train in a new workdir (--workdir=NEW)'
        + (
            ''
            if shapes_differ
            else f', which may start from these networks with --config.init_from={workdir}'
        )
    )


def _resume(
    config: ml_collections.ConfigDict, reader: ocp.CheckpointManager, abstract: TrainState
) -> tuple[TrainState, int]:
  """The state of the newest readable checkpoint, and its step.

  Checkpoints newer than the one restored could not be read: they are moved aside (see
  workdir.move_aside) so this run can write those steps again.
  """

  def restore(step: int) -> TrainState:
    return reader.restore(
        step,
        args=ocp.args.Composite(
            **{workdir_lib.STATE_ITEM: workdir_lib.state_restore_args(abstract)}
        ),
    )[workdir_lib.STATE_ITEM]

  step, state = workdir_lib.restore_readable(
      reader, restore, fallback=config.train.restore_fallback
  )
  workdir_lib.move_aside(epath.Path(reader.directory), [s for s in reader.all_steps() if s > step])
  return state, step


def _state_bytes(tree) -> int:
  return sum(
      int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)
  )


@dataclasses.dataclass
class _Start:
  """Where a run starts: its state, input, length and the VGG16 weights of its losses."""

  state: TrainState
  train_iter: InputIterator
  steps_per_epoch: int
  num_train_steps: int
  vgg_params: object
  evaluator: Callable | None  # evaluation while training (see _evaluator)


def _start(
    config: ml_collections.ConfigDict, workdir: epath.Path, replicated: NamedSharding
) -> _Start:
  """Checks everything, then restores the newest readable checkpoint or starts afresh.

  Nothing is written before every check has passed; config.json only by a fresh start
  (or when a resumed workdir lacks it).
  """
  check_config(config, num_devices=replicated.mesh.size)
  workdir_lib.check_writable(workdir)
  reader = workdir_lib.checkpoint_manager(workdir, read_only=True)
  latest = reader.latest_step()
  if latest is not None:
    check_same_model(workdir, config)
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
    state, step = _resume(config, reader, abstract)
    train_iter, note = _resume_input(config, reader, step, train_iter)
    logging.info('resumed from %s at step %d%s', reader.directory, step, note)
  else:
    state = jax.jit(create, out_shardings=replicated)(rng)
    if config.init_from:
      state = _init_from(state, config.init_from, config)
  evaluator = _evaluator(config, replicated.mesh, num_train_steps, int(state.step))
  if latest is None or not (workdir / workdir_lib.CONFIG_FILE).is_file():
    workdir_lib.save_config(workdir, config)
  reader.close()
  return _Start(
      state,
      train_iter,
      steps_per_epoch,
      num_train_steps,
      jax.device_put(vgg_params, replicated),
      evaluator,
  )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, devices: list | None = None
) -> TrainState:
  """Trains (resuming from `workdir`'s newest readable checkpoint if any); the final state.

  The batch is split over `devices` (default: every device of every process).
  """
  workdir = workdir_lib.as_path(workdir)
  mesh = create_mesh(devices)
  replicated = sharding_lib.replicated(mesh)
  start = _start(config, workdir, replicated)
  step_fn = compile_train_step(config, mesh, start.steps_per_epoch)
  generator, _ = train_state_lib.build_networks(config)
  # Samples are gathered on every process (replicated), so process 0 can write them.
  sample_fn = jax.jit(
      lambda variables, batch: (
          generator.apply(variables, batch['image'], batch['mask'], train=False),
          batch,
      ),
      out_shardings=replicated,
  )
  # Only process 0 writes summaries and logs metrics; the others write nothing.
  writer = (
      metric_writers.create_default_writer(str(workdir))
      if jax.process_index() == 0
      else metric_writers.MultiWriter([])
  )
  loop = _Loop(
      config,
      workdir,
      start,
      step_fn,
      sample_fn,
      writer,
      CheckpointWriter(workdir, config),
      batch_split(mesh),
  )
  return loop.run(start.state)


def _evaluator(
    config: ml_collections.ConfigDict, mesh, num_train_steps: int, first_step: int
) -> Callable | None:
  """Evaluation while training (see evaluate.periodic_evaluator); None if the run makes none."""
  every = config.train.eval_every_steps
  if not every or num_train_steps // every == first_step // every:
    return None
  from lgnet_jax.evaluation import evaluate  # pylint: disable=import-outside-toplevel  (evaluate imports train)

  try:
    return evaluate.periodic_evaluator(config, mesh)
  except sources.DataError as e:
    raise sources.DataError(
        f'{e} (evaluation while training reads the test set every train.eval_every_steps={every} '
        'steps; --config.train.eval_every_steps=0 turns it off)'
    ) from None


class _Loop:
  """The training steps, with their logging, samples, checkpoints, signals and checks."""

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      workdir: epath.Path,
      start: _Start,
      step_fn: Callable,
      sample_fn: Callable,
      writer: metric_writers.MetricWriter,
      checkpoints: CheckpointWriter,
      data_sharding: NamedSharding,
  ):
    self.config, self.workdir, self.start = config, workdir, start
    self.step_fn, self.sample_fn, self.writer = step_fn, sample_fn, writer
    self.checkpoints, self.data_sharding = checkpoints, data_sharding
    self.schedule = train_state_lib.learning_rate_schedule(config.optim, start.steps_per_epoch)
    self.progress = ConsoleProgress(start.num_train_steps, config.train.batch_size)
    self.stop: StopSignal | None = None  # created after the first step (see StopSignal)
    self.metrics_type, self.accumulated = None, None
    self.skipped_images = 0  # unreadable training images replaced by the next good one, this run
    self.sample_batch = None

  def save(self, state: TrainState, step: int, terms: Mapping[str, jax.Array]) -> None:
    check_finite(step, terms)  # never checkpoint a broken state
    self.checkpoints.save(
        step,
        ocp.args.Composite(
            **{
                workdir_lib.STATE_ITEM: ocp.args.StandardSave(state),
                workdir_lib.DATA_ITEM: grain.checkpoint.CheckpointSave(self.start.train_iter),
            }
        ),
    )

  def step(self, state: TrainState, step: int, first: bool) -> tuple[TrainState, dict]:
    """One training step; the first compiles it (on every process) and ends start-up."""
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      local_batch = next(self.start.train_iter)
      self.skipped_images += int(np.sum(local_batch.pop('skipped', 0)))
      batch = make_global_batch(local_batch, self.data_sharding)
      if first:
        self.step_fn = _compile_everywhere(
            self.step_fn,
            self.config.distributed.initialization_timeout_s,
            state,
            batch,
            self.start.vgg_params,
        )
      state, terms = self.step_fn(state, batch, self.start.vgg_params)
    if first:
      self.stop, self.sample_batch = StopSignal(), batch
    update = self._metrics(terms).single_from_model_output(**terms)
    self.accumulated = update if self.accumulated is None else self.accumulated.merge(update)
    return state, terms

  def _metrics(self, terms: Mapping[str, jax.Array]):
    if self.metrics_type is None:
      self.metrics_type = metrics.Collection.create(
          **{name: metrics.Average.from_output(name) for name in terms}
      )
    return self.metrics_type

  def report(self, state: TrainState, step: int, last: bool) -> None:
    """The console line and summaries every log interval, the sample grid every sample one."""
    train = self.config.train
    if step % train.log_every_steps == 0 or last:
      scalars = {f'train/{k}': float(v) for k, v in self.accumulated.compute().items()}
      scalars['train/learning_rate'] = float(self.schedule(step - 1))
      scalars['train/skipped_images'] = int(
          np.sum(multihost_utils.process_allgather(np.asarray(self.skipped_images)))
      )
      self.writer.write_scalars(step, scalars)
      if jax.process_index() == 0:
        logging.info('%s', self.progress.line(step, scalars))
      self.accumulated = None
    if step % train.sample_every_steps == 0 or last:
      outputs, inputs = jax.device_get(self.sample_fn(state.generator_variables, self.sample_batch))
      write_samples(self.writer, self.workdir, step, sample_grid(outputs, inputs))
    if self.start.evaluator is not None and step % train.eval_every_steps == 0:
      self.evaluate(state, step)

  def evaluate(self, state: TrainState, step: int) -> None:
    """Scores the generators on the fixed test subset; `eval/METRIC/BUCKET` summaries."""
    started = time.monotonic()
    table = self.start.evaluator(state.generator_variables)
    self.writer.write_scalars(
        step,
        {
            f'eval/{name}/{title}': value
            for title, row in table.items()
            for name, value in row.items()
        },
    )
    if jax.process_index() == 0:
      logging.info(
          '[%d] evaluation on %d test images per bucket (%.0f s): %s',
          step,
          self.config.train.eval_num_images,
          time.monotonic() - started,
          '; '.join(
              f'{title} ' + ', '.join(f'{k} {v:.4f}' for k, v in row.items())
              for title, row in table.items()
          ),
      )

  def run(self, state: TrainState) -> TrainState:
    first_step, num_train_steps = int(state.step), self.start.num_train_steps
    logging.info(
        'training steps %d..%d (%d per epoch, global batch %d on %d devices)',
        first_step + 1,
        num_train_steps,
        self.start.steps_per_epoch,
        self.config.train.batch_size,
        self.data_sharding.mesh.size,
    )
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=num_train_steps, writer=self.writer
    )
    pending: tuple[int, dict] | None = None
    started = time.monotonic()
    try:
      with metric_writers.ensure_flushes(self.writer):
        for step in range(first_step + 1, num_train_steps + 1):
          state, terms = self.step(state, step, first=step == first_step + 1)
          if pending is not None:  # checked one step late so the device keeps busy
            check_finite(*pending)
            self.progress.finished(pending[0])
          pending = (step, terms)
          report_progress(step)
          self.checkpoints.check()  # a failed background save stops training here
          last = step == num_train_steps
          self.report(state, step, last)
          stopping = self.stop.should_stop(step)
          if step % self.config.train.checkpoint_every_steps == 0 or last or stopping:
            self.save(state, step, terms)
          if stopping:
            logging.warning(
                'stopped by signal %d at step %d; checkpoint saved', self.stop.received, step
            )
            break
        if pending is not None:
          check_finite(*pending)
    finally:
      if self.stop is not None:
        self.stop.restore()
      self.checkpoints.close()
    if jax.process_index() == 0 and int(state.step) == num_train_steps > first_step:
      logging.info(
          'finished %d steps in %s: checkpoints, TensorBoard logs and %s in %s',
          num_train_steps - first_step,
          format_duration(time.monotonic() - started),
          SAMPLES_FILE,
          self.workdir,
      )
    return state
