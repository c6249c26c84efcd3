"""Entry point: `python -m lgnet_jax.main --config=configs/places2.py [--workdir=DIR] [--mode=train]`.

Flags, config, distributed start-up, then one call. `--config.a.b=value` overrides any field.
`--config=NAME` (e.g. `--config=demo`) names a bundled config, configs/NAME.py.
Installed as a package (`pip install .`), the same program is the `lgnet-train` command.
Multi-process runs (several hosts, or one process per GPU) start the same command in every
process; see launch/README.md:

  python -m lgnet_jax.main --config=configs/places2.py --workdir=gs://bucket/lgnet \
      --coordinator_address=HOST0:1234 --num_processes=4 --process_id=I

The console (see console.py) shows this project's own lines, one per log interval while
training, and every library's warnings and errors. absl's --verbosity flag chooses: -1
warnings and errors only; 0 (the default) as said; 1 or more absl's own logging, unfiltered
(the INFO and DEBUG lines of orbax, clu, JAX and absl too). TensorFlow's C++ INFO lines stay
off unless TF_CPP_MIN_LOG_LEVEL is set.
"""

import os
import pathlib
import sys

from lgnet_jax.runtime import signals

if __name__ == '__main__':  # Ctrl-C and SIGTERM stop the start-up at once (see signals.py)
  signals.exit_during_startup()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # before anything imports TensorFlow

# pylint: disable=wrong-import-position
import jax
from absl import app, flags, logging
from clu import platform
from ml_collections import config_flags

from lgnet_jax import cli, console, errors
from lgnet_jax.runtime import distributed, host_memory
from lgnet_jax.evaluation import evaluate
from lgnet_jax.training import loop as train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string(
    'workdir', None, 'Checkpoints, logs and samples (default: workdirs/<config name>).'
)
flags.DEFINE_enum(
    'mode',
    'train',
    ['train', 'eval'],
    'train (resumes from the workdir), or eval (scores its latest checkpoint).',
)
flags.DEFINE_enum(
    'distributed',
    'auto',
    distributed.MODES,
    'Multi-process start-up: auto (when a coordinator address is given, or SLURM or '
    'Open MPI started several tasks), on (also Cloud TPU pod slices), off.',
)
flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS).'
)
flags.DEFINE_integer('num_processes', None, 'Number of processes (default: $JAX_NUM_PROCESSES).')
flags.DEFINE_integer(
    'process_id', None, 'This process, 0..num_processes-1 (default: $JAX_PROCESS_ID).'
)
flags.mark_flags_as_required(['config'])


def default_workdir(config_path: str) -> str:
  return str(pathlib.Path('workdirs') / pathlib.Path(config_path).stem)


def distributed_settings(config) -> distributed.Settings:
  timeouts = config.distributed
  return distributed.Settings(
      mode=FLAGS.distributed,
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      **{key: int(value) for key, value in timeouts.items()},
  )


def fail(error: Exception, code: int) -> None:
  """One line on stderr (and, at --verbosity 1 or more, the full message in the log); exit."""
  if FLAGS.verbosity > 0:
    logging.error('%s', error)
  print(f'error: {errors.one_line(error)}', file=sys.stderr)
  sys.exit(code)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  console.configure(FLAGS.verbosity)
  config = FLAGS.config
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS['config']))
  try:
    distributed.initialize(distributed_settings(config))
  except distributed.DistributedError as e:
    fail(e, errors.USAGE_ERROR_EXIT)
  logging.info(
      'JAX process %d / %d, local devices %s',
      jax.process_index(),
      jax.process_count(),
      jax.local_devices(),
  )
  platform.work_unit().set_task_status(f'process {jax.process_index()}/{jax.process_count()}')
  platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, workdir, 'workdir')
  try:
    if FLAGS.mode == 'eval':
      evaluate.evaluate(config, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  except errors.UserError as e:  # the data, the configuration or the workdir
    fail(e, errors.USAGE_ERROR_EXIT)
  except train.TrainingError as e:
    fail(e, errors.FAILURE_EXIT)


def run() -> None:
  """The console-script entry point (`lgnet-train`), also what `python -m` runs."""
  signals.exit_during_startup()  # a no-op when the start of this module already called it
  host_memory.keep_freed_memory()  # before JAX starts its backend
  app.run(main, flags_parser=cli.parse_absl_flags)


if __name__ == '__main__':
  run()
