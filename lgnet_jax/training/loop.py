"""LGNet training: `train_and_evaluate(config, workdir)`, the loop read top to bottom.

Start (start.py: every check, the state restored or fresh, the input), compile the step on
every process, then step; after each step the periodic actions, by name: log (the console
line and summaries), sample, evaluate, checkpoint, stop (on a signal). The loss terms are
checked for NaN and Inf one step late, so the device keeps busy meanwhile.
"""

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from lgnet_jax import workdir as workdir_lib
from lgnet_jax.runtime import distributed
from lgnet_jax.runtime import sharding as sharding_lib
from lgnet_jax.training import checkpoints, samples, start
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.training.failures import check_finite
from lgnet_jax.training.progress import ConsoleProgress, format_duration
from lgnet_jax.training.state import TrainState
from lgnet_jax.training.step import Batch, compile_train_step
from lgnet_jax.training.stop import StopSignal

Writer = Any  # a clu MetricWriter; clu's writers import TensorFlow (see open_writer)


def open_writer(workdir: epath.Path) -> Writer:
  """Process 0's TensorBoard writer; the other processes write nothing.

  clu's metric writers import TensorFlow (seconds, and TensorFlow's console lines), so they are
  imported here, when a run is about to write, not with this module: a run that stops at a
  check never loads TensorFlow.
  """
  from clu import metric_writers  # pylint: disable=import-outside-toplevel  # imports TensorFlow

  if jax.process_index() == 0:
    return metric_writers.create_default_writer(str(workdir))
  return metric_writers.MultiWriter([])


def progress_reporter(num_train_steps: int, writer: Writer) -> Callable[[int], None]:
  """clu's steps/s and uptime summaries, called after every step."""
  from clu import periodic_actions  # pylint: disable=import-outside-toplevel  # imports TensorFlow

  return periodic_actions.ReportProgress(num_train_steps=num_train_steps, writer=writer)


def global_batches(
    train_iter: checkpoints.InputIterator, data_sharding: NamedSharding
) -> Iterator[tuple[Batch, int]]:
  """Global batches from this process's input, each with its count of unreadable images
  (replaced by the next good one)."""
  for local_batch in train_iter:
    skipped = int(np.sum(local_batch.pop('skipped', 0)))
    yield sharding_lib.make_global_batch(local_batch, data_sharding), skipped


def compile_everywhere(step_fn: Callable, timeout_s: float, *args) -> Callable:
  """The step compiled for `args`, returned once every process has compiled it."""
  compiled = step_fn.lower(*args).compile()
  distributed.barrier('train_step_compiled', timeout_s)
  return compiled


def add_terms(sums: Mapping[str, jax.Array], terms: Mapping[str, jax.Array]) -> dict:
  """Running sums of the loss terms on the device (no wait for the step)."""
  return {name: sums.get(name, 0.0) + value for name, value in terms.items()}


def log_metrics(
    writer: Writer,
    progress: ConsoleProgress,
    step: int,
    means: Mapping[str, float],
    learning_rate: float,
    skipped_images: int,
) -> None:
  """The interval's mean loss terms as summaries and the console line (process 0)."""
  scalars = {f'train/{name}': value for name, value in means.items()}
  scalars['train/learning_rate'] = learning_rate
  scalars['train/skipped_images'] = int(
      np.sum(multihost_utils.process_allgather(np.asarray(skipped_images)))
  )
  writer.write_scalars(step, scalars)
  if jax.process_index() == 0:
    logging.info('%s', progress.line(step, scalars))


def write_sample(
    writer: Writer,
    workdir: epath.Path,
    sample_fn: Callable,
    state: TrainState,
    batch: Batch,
    step: int,
) -> None:
  """The generators' outputs on the fixed sample batch, to TensorBoard and samples.png."""
  outputs, inputs = jax.device_get(sample_fn(state.generator_variables, batch))
  samples.write_samples(writer, workdir, step, samples.sample_grid(outputs, inputs))


def evaluate(
    writer: Writer, evaluator: start.Evaluator, state: TrainState, step: int, num_images: int
) -> None:
  """Scores the generators on the fixed test subset; `eval/METRIC/BUCKET` summaries."""
  started = time.monotonic()
  table = evaluator(state.generator_variables)
  writer.write_scalars(
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
        num_images,
        time.monotonic() - started,
        '; '.join(
            f'{title} ' + ', '.join(f'{k} {v:.4f}' for k, v in row.items())
            for title, row in table.items()
        ),
    )


def save_checkpoint(
    writer: checkpoints.CheckpointWriter,
    step: int,
    state: TrainState,
    terms: Mapping[str, jax.Array],
    train_iter: checkpoints.InputIterator,
) -> None:
  """Checkpoint `step` (the state and the input position), never of a broken state."""
  check_finite(step, terms)
  writer.save(step, checkpoints.save_args(state, train_iter))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, devices: list | None = None
) -> TrainState:
  """Trains (resuming from `workdir`'s newest readable checkpoint if any); the final state.

  The batch is split over `devices` (default: every device of every process).
  """
  workdir = workdir_lib.as_path(workdir)
  mesh = sharding_lib.create_mesh(devices)
  replicated = sharding_lib.replicated(mesh)
  run = start.start(config, workdir, replicated)
  state, first_step, num_train_steps = run.state, int(run.state.step), run.num_train_steps
  if first_step >= num_train_steps:
    logging.info('%s is at step %d of %d: nothing to train', workdir, first_step, num_train_steps)
    return state
  train = config.train

  # The first batch compiles the step and is the fixed batch of every sample grid.
  batches = global_batches(run.train_iter, sharding_lib.batch_split(mesh))
  first = next(batches)
  sample_batch, batches = first[0], itertools.chain([first], batches)
  step_fn = compile_everywhere(
      compile_train_step(config, mesh, run.steps_per_epoch),
      config.distributed.initialization_timeout_s,
      state,
      sample_batch,
      run.vgg_params,
  )
  sample_fn = samples.sample_fn(train_state_lib.build_networks(config)[0], replicated)
  schedule = train_state_lib.learning_rate_schedule(config.optim, run.steps_per_epoch)
  progress = ConsoleProgress(num_train_steps, train.batch_size)
  writer = open_writer(workdir)
  report_progress = progress_reporter(num_train_steps, writer)
  checkpoint_writer = checkpoints.CheckpointWriter(workdir, config)
  sums, count, skipped_images = {}, 0, 0  # the loss terms since the last console line
  unchecked: list[tuple[int, dict]] = []  # the previous step's terms, checked one step late
  logging.info(
      'training steps %d..%d (%d per epoch, global batch %d on %d devices)',
      first_step + 1,
      num_train_steps,
      run.steps_per_epoch,
      train.batch_size,
      mesh.size,
  )
  started = time.monotonic()
  stop = StopSignal()  # start-up is over: a signal now finishes the step and saves
  try:
    for step in range(first_step + 1, num_train_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch, skipped = next(batches)
        state, terms = step_fn(state, batch, run.vgg_params)
      for previous in unchecked:
        check_finite(*previous)
        progress.finished(previous[0])
      unchecked = [(step, terms)]
      sums, count, skipped_images = add_terms(sums, terms), count + 1, skipped_images + skipped
      report_progress(step)
      checkpoint_writer.check()  # a failed background save stops training here
      last = step == num_train_steps
      if step % train.log_every_steps == 0 or last:
        means = {name: float(total) / count for name, total in jax.device_get(sums).items()}
        log_metrics(writer, progress, step, means, float(schedule(step - 1)), skipped_images)
        sums, count = {}, 0
      if step % train.sample_every_steps == 0 or last:
        write_sample(writer, workdir, sample_fn, state, sample_batch, step)
      if run.evaluator is not None and step % train.eval_every_steps == 0:
        evaluate(writer, run.evaluator, state, step, train.eval_num_images)
      stopping = stop.should_stop(step)
      if step % train.checkpoint_every_steps == 0 or last or stopping:
        save_checkpoint(checkpoint_writer, step, state, terms, run.train_iter)
      if stopping:
        logging.warning('stopped by signal %d at step %d; checkpoint saved', stop.received, step)
        break
    for previous in unchecked:
      check_finite(*previous)
  finally:
    stop.restore()
    checkpoint_writer.close()
    writer.flush()
  if jax.process_index() == 0 and int(state.step) == num_train_steps:
    logging.info(
        'finished %d steps in %s: checkpoints, TensorBoard logs and %s in %s',
        num_train_steps - first_step,
        format_duration(time.monotonic() - started),
        samples.SAMPLES_FILE,
        workdir,
    )
  return state
