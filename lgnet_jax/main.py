"""`python -m lgnet_jax.main --config=configs/places2.py [--workdir=DIR] [--mode=train|eval]`.

Flags, then training (training/loop.py, which resumes from the workdir) or evaluation
(evaluation/evaluate.py, which scores its newest checkpoint). `--config.a.b=value` overrides
any field; `--config=NAME` names a bundled config, configs/NAME.py. Installed as a package,
the same program is the `lgnet-train` command. A multi-process run starts this command in
every process (see launch/README.md):

  python -m lgnet_jax.main --config=configs/places2.py --workdir=gs://bucket/lgnet \
      --coordinator-address=HOST0:1234 --num-processes=4 --process-id=I

The console (see console.py) shows this project's own lines and every library's warnings
and errors; absl's --verbosity chooses: -1 warnings and errors only, 0 (the default) as
said, 1 or more absl's own logging of every library.
"""

import pathlib
import sys

from lgnet_jax.runtime import signals

if __name__ == '__main__':  # Ctrl-C and SIGTERM stop the start-up at once (see signals.py)
  signals.exit_during_startup()

# pylint: disable=wrong-import-position
import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lgnet_jax import cli, console, errors
from lgnet_jax.evaluation import evaluate
from lgnet_jax.runtime import distributed, host_memory
from lgnet_jax.training import loop
from lgnet_jax.training.failures import TrainingError

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


def distributed_settings(config) -> distributed.Settings:
  return distributed.Settings(
      mode=FLAGS.distributed,
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      **{key: int(value) for key, value in config.distributed.items()},
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
  config_name = pathlib.Path(config_flags.get_config_filename(FLAGS['config'])).stem
  workdir = FLAGS.workdir or str(pathlib.Path('workdirs') / config_name)
  try:
    distributed.initialize(distributed_settings(config))
    logging.info(
        'JAX process %d / %d, local devices %s',
        jax.process_index(),
        jax.process_count(),
        jax.local_devices(),
    )
    if FLAGS.mode == 'eval':
      evaluate.evaluate(config, workdir)
    else:
      loop.train_and_evaluate(config, workdir)
  except errors.UserError as e:  # the data, the configuration, the workdir, the processes
    fail(e, errors.USAGE_ERROR_EXIT)
  except TrainingError as e:
    fail(e, errors.FAILURE_EXIT)


def run() -> None:
  """The console-script entry point (`lgnet-train`), also what `python -m` runs."""
  signals.exit_during_startup()  # a no-op when the start of this module already called it
  host_memory.keep_freed_memory()  # before JAX starts its backend
  app.run(main, flags_parser=cli.parse_absl_flags)


if __name__ == '__main__':
  run()
