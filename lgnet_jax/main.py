"""Entry point: `python -m lgnet_jax.main --config=configs/places2.py [--workdir=DIR] [--mode=train]`.

Flags, config, distributed start-up, then one call. `--config.a.b=value` overrides any field.
"""

import pathlib
import sys

import jax
from absl import app, flags, logging
from clu import platform
from ml_collections import config_flags

from lgnet_jax import evaluate, input_pipeline, train, vgg_weights
from lgnet_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, logs and samples (default: workdirs/<config name>).')
flags.DEFINE_enum('mode', 'train', ['train', 'eval'],
                  'train (resumes from the workdir), or eval (scores its latest checkpoint).')
flags.mark_flags_as_required(['config'])

# Errors caused by the user's data or configuration: one line, exit code 2.
USER_ERRORS = (input_pipeline.DataError, vgg_weights.VGGWeightsError, workdir_lib.WorkdirError,
               train.ConfigError)


def default_workdir(config_path: str) -> str:
  return str(pathlib.Path('workdirs') / pathlib.Path(config_path).stem)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS['config']))
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
    logging.error('%s', e)
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(2)
  except train.TrainingError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
