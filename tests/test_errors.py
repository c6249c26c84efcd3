"""The error convention: bad input is an errors.UserError, one line on stderr, exit status 2."""

import pytest

from lgnet_jax import cli, errors
from lgnet_jax.runtime import distributed
from lgnet_jax.data import image_io, pipeline as input_pipeline, masks
from lgnet_jax.weights import official, pth, torch_weights, vgg as vgg_weights
from lgnet_jax.config_checks import ConfigError
from lgnet_jax.training.failures import TrainingError
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.evaluation.metrics_nets import inception, lpips

USER_ERRORS = [
    cli.UsageError,
    distributed.DistributedError,
    image_io.ImageError,
    input_pipeline.DataError,
    masks.MaskError,
    official.OfficialCheckpointError,
    pth.CheckpointFormatError,
    ConfigError,
    vgg_weights.VGGWeightsError,
    workdir_lib.WorkdirError,
    inception.FIDInceptionWeightsError,
    lpips.LPIPSWeightsError,
    torch_weights.TorchWeightsError,
]


@pytest.mark.parametrize('error', USER_ERRORS, ids=lambda e: e.__name__)
def test_every_module_error_is_a_user_error(error):
  assert issubclass(error, errors.UserError) and issubclass(error, ValueError)


def test_a_training_failure_is_not_a_user_error():
  assert not issubclass(TrainingError, errors.UserError)


@pytest.mark.parametrize('error', USER_ERRORS, ids=lambda e: e.__name__)
def test_run_cli_prints_one_line_and_exits_2(error, capsys):
  def main():
    raise error('mask m.png:\n  is   empty')

  with pytest.raises(SystemExit) as exit_info:
    cli.run_cli(main)
  assert exit_info.value.code == errors.USAGE_ERROR_EXIT == 2
  assert capsys.readouterr().err == 'error: mask m.png: is empty\n'


def test_run_cli_lets_other_errors_through():
  def main():
    raise RuntimeError('a bug')

  with pytest.raises(RuntimeError, match='a bug'):
    cli.run_cli(main)
