"""Entry point: `python -m lgnet_jax.main --config=configs/places2.py [--workdir=DIR] [--mode=train]`.

Flags, config, distributed start-up, then one call. `--config.a.b=value` overrides any field.
Multi-process runs (several hosts, or one process per GPU) start the same command in every
process; see launch/README.md:

  python -m lgnet_jax.main --config=configs/places2.py --workdir=gs://bucket/lgnet \
      --coordinator_address=HOST0:1234 --num_processes=4 --process_id=I

The console shows this project's own lines (one per log interval while training) and every
library's warnings and errors, each line prefixed with the time only. absl's --verbosity
flag chooses: -1 warnings and errors only; 0 (the default) as described; 1 or more absl's
own logging, unfiltered: the INFO (and DEBUG) lines of orbax, clu, JAX and absl too, with
absl's full prefix. TensorFlow's C++ INFO lines are off unless TF_CPP_MIN_LOG_LEVEL is set.
"""

import functools
import logging as std_logging
import os
import pathlib
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # before anything imports TensorFlow

# pylint: disable=wrong-import-position
import jax
from absl import app, flags, logging
from clu import platform
from ml_collections import config_flags

from lgnet_jax import distributed, evaluate, input_pipeline, train, vgg_weights
from lgnet_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, logs and samples (default: workdirs/<config name>).')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                  'train (resumes from the workdir), or eval (scores its latest checkpoint).')
flags.DEFINE_enum('distributed', 'auto', distributed.MODES,
                  'Multi-process start-up: auto (when a coordinator address is given, or SLURM or '
                  'Open MPI started several tasks), on (also Cloud TPU pod slices), off.')
flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (default: $JAX_NUM_PROCESSES).')
flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 (default: $JAX_PROCESS_ID).')
flags.mark_flags_as_required(['config'])

# Errors caused by the user's data or configuration: one line, exit code 2.
USER_ERRORS = (input_pipeline.DataError, vgg_weights.VGGWeightsError, workdir_lib.WorkdirError,
               train.ConfigError, distributed.DistributedError)


def default_workdir(config_path: str) -> str:
  return str(pathlib.Path('workdirs') / pathlib.Path(config_path).stem)


def distributed_settings(config) -> distributed.Settings:
  timeouts = config.get('distributed') or {}
  return distributed.Settings(
      mode=FLAGS.distributed, coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
      **{key: int(value) for key, value in timeouts.items()})


PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))


@functools.lru_cache(maxsize=None)
def in_project(pathname: str) -> bool:
  """Whether a log record's source file is one of this package's modules."""
  return os.path.realpath(pathname).startswith(PACKAGE_DIR + os.sep)


class ProjectFilter(std_logging.Filter):
  """Everyone's warnings and errors; lower levels only from this package's own modules."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or in_project(record.pathname)


class ConsoleFormatter(std_logging.Formatter):
  """`HH:MM:SS message`, with the level named for warnings and errors."""

  def format(self, record: std_logging.LogRecord) -> str:
    level = f'{record.levelname}: ' if record.levelno >= std_logging.WARNING else ''
    return f'{self.formatTime(record, "%H:%M:%S")} {level}{super().format(record)}'


def configure_console(verbosity: int) -> None:
  """At verbosity 0 or below, filters and shortens absl's console lines (see the docstring).

  Every library logs through absl's handler on the root logger (orbax and clu through absl,
  JAX through its own loggers), so one filter on that handler quiets them all. Above 0
  absl's logging is left exactly as absl sets it up.
  """
  handler = logging.get_absl_handler()
  if verbosity > 0:
    return
  handler.addFilter(ProjectFilter())
  handler.setFormatter(ConsoleFormatter())


def fail(error: Exception, code: int) -> None:
  """One line on stderr (and, at --verbosity 1 or more, the full message in the log); exit."""
  if FLAGS.verbosity > 0:
    logging.error('%s', error)
  print(f'error: {" ".join(str(error).split())}', file=sys.stderr)
  sys.exit(code)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  configure_console(FLAGS.verbosity)
  config = FLAGS.config
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS['config']))
  try:
    distributed.initialize(distributed_settings(config))
  except distributed.DistributedError as e:
    fail(e, 2)
  logging.info('JAX process %d / %d, local devices %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  platform.work_unit().set_task_status(f'process {jax.process_index()}/{jax.process_count()}')
  platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, workdir, 'workdir')
  try:
    if FLAGS.mode == 'eval':
      evaluate.evaluate(config, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  except USER_ERRORS as e:
    fail(e, 2)
  except train.TrainingError as e:
    fail(e, 1)


if __name__ == '__main__':
  app.run(main)
