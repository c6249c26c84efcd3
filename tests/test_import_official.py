"""The importer: a workdir from the authors' files, and a clear error for every bad input."""

import json
import shutil

import numpy as np
import pytest

from helpers import OFFICIAL_FIXTURE, OFFICIAL_KEYS, assert_usage_error, run_cli_in_process
from lgnet_jax.weights import official, pth
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.tools import import_official

NETWORKS = ('G1', 'G2', 'G3', 'D')


def _copy_fixture(tmp_path, networks=NETWORKS, epoch='latest'):
  folder = tmp_path / 'checkpoints'
  folder.mkdir()
  for name in networks:
    shutil.copy(OFFICIAL_FIXTURE / f'latest_net_{name}.pth', folder / f'{epoch}_net_{name}.pth')
  return folder


@pytest.fixture
def run_importer(capsys):
  """Runs `python -m lgnet_jax.tools.import_official ARGS` in this process."""
  return lambda *args: run_cli_in_process(capsys, import_official, *args)


def _import(run_importer, source, out, *extra):
  return run_importer(
      '--checkpoint-dir', source, '--workdir', out, '--ngf', '16', '--ngf-local', '16', *extra
  )


def test_workdir_has_training_layout_and_the_weights(official_workdir):
  config = json.loads((official_workdir / 'config.json').read_text())
  assert config['model']['variant'] == 'lgnet'
  assert (config['model']['ngf'], config['model']['ngf_local']) == (16, 16)
  manager = workdir_lib.checkpoint_manager(official_workdir, read_only=True)
  assert manager.all_steps() == [0]
  restored = workdir_lib.restore_state(
      official_workdir, fields=('g_batch_stats', 'd_spectral', 'd_params')
  )
  g2 = pth.load_state_dict(OFFICIAL_FIXTURE / 'latest_net_G2.pth')
  np.testing.assert_array_equal(
      restored['g_batch_stats']['G2']['stem_bn']['var'], g2['model.2.running_var']
  )
  d = pth.load_state_dict(OFFICIAL_FIXTURE / 'latest_net_D.pth')
  np.testing.assert_array_equal(restored['d_spectral']['conv1']['u'], d['encoder.0.weight_u'])
  np.testing.assert_array_equal(
      restored['d_params']['conv1']['kernel'],
      np.transpose(d['encoder.0.weight_orig'], (2, 3, 1, 0)),
  )


@pytest.mark.slow
def test_other_epoch_and_missing_discriminator(tmp_path, run_importer, caplog, plain_compile):
  source = _copy_fixture(tmp_path, ('G1', 'G2', 'G3'), epoch='200')
  result = _import(run_importer, source, tmp_path / 'out', '--epoch', '200')
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'wrote {tmp_path / "out"}' in result.stdout
  assert 'discriminator starts from random weights' in caplog.text
  assert workdir_lib.checkpoint_manager(tmp_path / 'out', read_only=True).all_steps() == [0]


def test_wrong_width_names_the_widths(tmp_path, run_importer):
  result = run_importer('--checkpoint-dir', OFFICIAL_FIXTURE, '--workdir', tmp_path / 'out')
  assert_usage_error(
      result,
      'latest_net_G1.pth does not match the network',
      'wrong shapes',
      'model.model.0.weight: shape (16, 4, 4, 4), expected (64, 4, 4, 4)',
      'G1 width 16',
      '--ngf',
  )
  assert not (tmp_path / 'out' / 'checkpoints').exists()


def test_missing_network_file(tmp_path, run_importer):
  source = _copy_fixture(tmp_path, ('G1', 'G3', 'D'))
  assert_usage_error(
      _import(run_importer, source, tmp_path / 'out'), 'latest_net_G2.pth does not exist'
  )


def test_truncated_checkpoint(tmp_path, run_importer):
  source = _copy_fixture(tmp_path)
  path = source / 'latest_net_G3.pth'
  path.write_bytes(path.read_bytes()[:5000])
  assert_usage_error(_import(run_importer, source, tmp_path / 'out'), 'latest_net_G3.pth')


def test_swapped_networks_list_missing_and_unexpected_keys(tmp_path, run_importer):
  source = _copy_fixture(tmp_path)
  shutil.copy(source / 'latest_net_G1.pth', source / 'latest_net_G3.pth')
  assert_usage_error(
      _import(run_importer, source, tmp_path / 'out'),
      'latest_net_G3.pth does not match',
      'missing keys: model1.0.weight',
      'unexpected keys: model.model.0.weight',
  )


def test_refuses_a_workdir_with_checkpoints(official_workdir, run_importer):
  assert_usage_error(
      _import(run_importer, OFFICIAL_FIXTURE, official_workdir), 'already holds checkpoints'
  )


def test_key_mapping_covers_every_official_key():
  """The entry lists produce exactly the official key names (spec/official_keys)."""
  suffixes = {
      official.CONV: ['weight'],
      official.CONV_BIAS: ['weight', 'bias'],
      official.BN: ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'],
      official.SN_CONV: ['weight_orig', 'weight_u', 'weight_v'],
  }
  for name, entries in (
      ('G1', official.unet_entries(flat=False, attention=False)),
      ('G2', official.local_refiner_entries()),
      ('G3', official.unet_entries(flat=True, attention=True)),
      ('D', official.discriminator_entries()),
  ):
    listed = {
        line.split('\t')[0]
        for line in (OFFICIAL_KEYS / f'net_{name}.txt').read_text().splitlines()
        if line.strip()
    }
    produced = {f'{e.torch_prefix}.{s}' for e in entries for s in suffixes[e.kind]}
    assert produced == listed, name


@pytest.mark.parametrize('variant', ['lgnet_share', 'C+L'])
def test_unpublished_variants_are_refused(tmp_path, variant, run_importer):
  result = run_importer(
      '--checkpoint-dir', OFFICIAL_FIXTURE, '--workdir', tmp_path / 'out', '--variant', variant
  )
  assert result.returncode == 2
  assert 'invalid choice' in result.stderr and not (tmp_path / 'out').exists()
