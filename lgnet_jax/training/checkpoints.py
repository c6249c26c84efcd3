"""The training run's checkpoints: saving them (`CheckpointWriter`), resuming from the newest
readable one (state and input position), and starting from another workdir's networks
(`init_from`)."""

import shutil

import grain
import grain.python as grain_python
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from lgnet_jax import workdir as workdir_lib
from lgnet_jax.config_checks import ConfigError
from lgnet_jax.data import batching
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.training.failures import TrainingError
from lgnet_jax.training.state import TrainState

InputIterator = grain_python.PyGrainDatasetIterator  # the training input


def save_args(state: TrainState, train_iter: InputIterator) -> ocp.args.Composite:
  """What a training checkpoint holds: the state and the input position."""
  return ocp.args.Composite(
      **{
          workdir_lib.STATE_ITEM: ocp.args.StandardSave(state),
          workdir_lib.DATA_ITEM: grain.checkpoint.CheckpointSave(train_iter),
      }
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


def restore_newest(
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


def restore_input(
    config: ml_collections.ConfigDict,
    reader: ocp.CheckpointManager,
    step: int,
    train_iter: InputIterator,
) -> tuple[InputIterator, str]:
  """The input iterator positioned after checkpoint `step`, and a note for the log line.

  The position is restored into `train_iter` (a fresh iterator) when the checkpoint was
  written by as many processes as now; otherwise, or when it cannot be restored, every
  process starts at global batch `step`: the same position for the same global batch size
  (see the input pipeline's GlobalBatchSampler).
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


def init_from(state: TrainState, source: str, config: ml_collections.ConfigDict) -> TrainState:
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
