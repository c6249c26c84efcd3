"""Training: the reference schedule, data parallelism, resume, signals, errors, the demo."""

import json
import math
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import demo
from lgnet_jax import train
from lgnet_jax import train_state as train_state_lib
from lgnet_jax import workdir as workdir_lib
from conftest import (EXACT_ARGS, FAST_COMPILE, REPO_ROOT, STRAIGHT_ARGS, TINY_ARGS, pipeline_batches,
                      run_module, subprocess_env, tiny_config, train_in_process)

def run_main(*args: str, check: bool = False) -> subprocess.CompletedProcess:
  """`python -m lgnet_jax.main ARGS` with cheap compilation: these runs check behaviour."""
  return run_module('lgnet_jax.main', *args, env=FAST_COMPILE, check=check)


def main_args(workdir: pathlib.Path, *extra: str) -> list[str]:
  return [*TINY_ARGS, f'--workdir={workdir}', *extra]


def restore_state(workdir: pathlib.Path, step: int | None = None):
  return jax.device_get(workdir_lib.restore_state(workdir, step=step))


def data_position(workdir: pathlib.Path, step: int) -> dict:
  return json.loads((workdir / 'checkpoints' / str(step) / 'data' / 'process_0-of-1.json').read_text())


def logged_scalars(stderr: str, name: str) -> dict[int, float]:
  return {int(step): float(value)
          for step, value in re.findall(rf'\[(\d+)\] .*?train/{name}=([-\w.+]+)', stderr)}


def test_schedule_is_the_references():
  optim = ml_collections.ConfigDict({'learning_rate': 2e-4, 'n_epochs': 100, 'n_epochs_decay': 100,
                                     'decay_per_step': False})
  schedule = train_state_lib.learning_rate_schedule(optim, steps_per_epoch=10)
  for epoch in (0, 50, 99, 100, 150, 199):
    expected = 2e-4 * (1 - max(0, epoch + 1 - 100) / 101)
    for step in (epoch * 10, epoch * 10 + 9):
      assert math.isclose(float(schedule(step)), expected, rel_tol=1e-6), (epoch, step)
  assert math.isclose(float(schedule(1999)), 2e-4 / 101, rel_tol=1e-5)
  optim.decay_per_step = True
  per_step = train_state_lib.learning_rate_schedule(optim, steps_per_epoch=10)
  assert math.isclose(float(per_step(999)), 2e-4, rel_tol=1e-6)
  assert float(per_step(1000)) > float(per_step(1500)) > float(per_step(1999)) > 0


def test_four_devices_match_one_and_compile_once(four_device_reference, fast_compile):
  """2 steps on a global batch of 4: 4 devices give what 1 device gives, each compiled once.

  Parameters are compared after SGD steps. Under Adam they cannot agree to 1e-5 in float32
  for any data-parallel split: Adam turns each gradient that is zero in exact arithmetic
  (or float noise, which this model's ReLU networks amplify to ~1e-3 relative on one
  device alone) into a full +-lr step whose sign follows the summation order.
  """
  assert jax.device_count() == 8, 'conftest sets 8 fake CPU devices'
  config = tiny_config(*EXACT_ARGS)
  one, compiled = train_in_process(config, jax.devices()[:1], pipeline_batches(config, 2))
  four = four_device_reference.state_like(one)
  # Each step compiled during its first call and never again (nothing else either).
  assert compiled == four_device_reference.compiled == ['jit(train_step)'], compiled
  assert int(one.step) == int(four.step) == 2
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one), jax.tree_util.tree_leaves(four)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))
  # The steps moved every network by much more than the tolerance.
  fresh = jax.device_get(train_state_lib.create_train_state(config, jax.random.PRNGKey(0)))
  for name in ('G1', 'G2', 'G3'):
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), fresh.g_params[name], four.g_params[name])
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-3, name
  d_moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), fresh.d_params, four.d_params)
  assert max(jax.tree_util.tree_leaves(d_moved)) > 1e-3
  assert not np.allclose(fresh.g_batch_stats['G2']['stem_bn']['var'], four.g_batch_stats['G2']['stem_bn']['var'])


def test_straight_run_writes_its_workdir(straight_run):
  workdir = straight_run.workdir
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).all_steps() == [3, 6]
  assert workdir_lib.load_config(workdir).model.ndf == 8
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1
  with Image.open(workdir / 'samples.png') as grid:  # 2 rows of [input, 3 stages, truth]
    assert grid.size == (5 * 256, 2 * 256)
  assert data_position(workdir, 3) != data_position(workdir, 6)


def test_sigterm_saves_and_the_resumed_run_is_bit_exact(tmp_path, straight_run):
  """SIGTERM: the step finishes, a checkpoint is saved, exit 0. Resuming from it ends where
  the straight run ended, bit for bit, with the input pipeline at the same position."""
  workdir = tmp_path / 'workdir'
  command = [sys.executable, '-m', 'lgnet_jax.main', *main_args(workdir, *STRAIGHT_ARGS),
             '--config.train.num_train_steps=10000']
  process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(**FAST_COMPILE),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  output = []
  for line in process.stdout:
    output.append(line)
    if re.search(r'\[2\] .*train/total_g', line):
      process.send_signal(signal.SIGTERM)
      break
  output.extend(process.stdout)
  assert process.wait(timeout=600) == 0, ''.join(output[-30:])  # a hang, not slowness
  stopped = re.search(r'stopped by signal 15 at step (\d+)', ''.join(output))
  assert stopped, ''.join(output[-30:])
  stop_step = int(stopped.group(1))
  assert 2 <= stop_step < 6, f'the signal came too late to test resuming: step {stop_step}'
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).latest_step() == stop_step

  resumed = run_main(*main_args(workdir, *STRAIGHT_ARGS), '--config.train.num_train_steps=6',
                     check=True)
  assert re.search(rf'resumed from .* at step {stop_step}\b', resumed.stderr), resumed.stderr[-3000:]
  a, b = restore_state(straight_run.workdir, 6), restore_state(workdir, 6)
  assert int(a.step) == int(b.step) == 6
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  assert data_position(straight_run.workdir, 6) == data_position(workdir, 6)


@pytest.mark.parametrize('args, message', [
    (['--config.optim.optimizer=adagrad'], "optim.optimizer 'adagrad' is not one of"),
    (['--config.train.batch_size=4'], 'train.batch_size 4 is not divisible by 8 devices'),
    (['--config.model.image_size=384'], 'model.image_size 384 is not a multiple of 256'),
])
def test_bad_settings_stop_before_anything_is_written(tmp_path, args, message):
  config = tiny_config('--config.train.batch_size=8', *args)
  with pytest.raises(train.ConfigError, match=re.escape(message)):
    train.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists()


def test_places2_without_data_exits_2_with_instructions(tmp_path):
  result = run_main('--config=configs/places2.py', f'--workdir={tmp_path / "w"}',
                      f'--config.data.tfds_data_dir={tmp_path / "tfds"}')
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(error_lines) == 1
  assert 'places365_small is not prepared' in error_lines[0]
  assert 'tfds build places365_small' in error_lines[0]
  assert '--config.data.tfds_data_dir' in error_lines[0]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, straight_run):
  workdir = tmp_path / 'workdir'
  shutil.copytree(straight_run.workdir, workdir)  # checkpoints 3 and 6
  result = run_main(*main_args(workdir, '--config.train.num_train_steps=8',
                               '--config.train.checkpoint_every_steps=1', '--config.loss.lambda_hole=nan'))
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert re.search(r'error: non-finite loss at step 7: .*total_g=nan', result.stderr)
  manager = workdir_lib.checkpoint_manager(workdir, read_only=True)
  assert manager.all_steps() == [3, 6]
  state = restore_state(workdir, 6)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state.g_params))


def test_fine_tune_starts_from_the_imported_networks(official_workdir):
  """`init_from`: the networks of another workdir (here the imported reference), fresh optimizers."""
  config = demo.get_config()
  config.model.ngf = config.model.ngf_local = 16
  config.model.ndf = 64  # the reference discriminator's width (the demo's is 16)
  config.init_from = str(official_workdir)
  fresh = jax.jit(lambda rng: train_state_lib.create_train_state(config, rng))(jax.random.PRNGKey(0))
  state = jax.device_get(train._init_from(fresh, config.init_from, config))
  imported = restore_state(official_workdir)
  for field in ('g_params', 'g_batch_stats', 'd_params', 'd_spectral'):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(getattr(imported, field)),
                            jax.tree_util.tree_leaves(getattr(state, field))):
      np.testing.assert_array_equal(a, b, err_msg=f'{field}{jax.tree_util.keystr(path)}')
  assert int(state.step) == 0
  assert all(not np.any(m) for m in jax.tree_util.tree_leaves(state.g_opt_state[0].mu))

  config.model.ndf = 32  # another discriminator: named, nothing restored
  with pytest.raises(train.ConfigError, match=r'model\.ndf is 64 there but 32 here'):
    train._init_from(fresh, config.init_from, config)


def test_demo_config_trains_and_loss_decreases(tmp_path):
  """The demo configuration as shipped, 16 steps (cheap compilation: this checks behaviour)."""
  result = run_main('--config=configs/demo.py', f'--workdir={tmp_path}',
                    '--config.train.num_train_steps=16', '--config.train.log_every_steps=8',
                    '--config.train.sample_every_steps=16', check=True)
  assert 'VGG16' not in result.stderr  # the demo's perceptual and style terms are off
  total = logged_scalars(result.stderr, 'total_g')  # each the mean over its 8 steps
  assert sorted(total) == [8, 16] and sorted(logged_scalars(result.stderr, 'l1_hole_3')) == [8, 16]
  assert total[16] < total[8], total
  assert (tmp_path / 'config.json').is_file()
  assert list(tmp_path.glob('events.out.tfevents.*'))
  assert workdir_lib.checkpoint_manager(tmp_path, read_only=True).latest_step() == 16


def test_bad_files_are_skipped_and_counted(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(6):
    Image.fromarray(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(folder / f'good{i}.png')
  good_jpeg = folder / 'good.jpg'
  Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(good_jpeg, quality=90)
  (folder / 'truncated.jpg').write_bytes(good_jpeg.read_bytes()[:600])
  good_jpeg.unlink()
  (folder / 'empty.png').write_bytes(b'')
  # 8 files, batch 2, 4 steps: a whole pass over the shuffled folder (6 good images) and two
  # more. 4 steps per epoch, as the straight run: its compiled step is reused.
  result = run_main(*main_args(
      tmp_path / 'workdir', *STRAIGHT_ARGS, '--config.data.source=folder',
      f'--config.data.train_dir={folder}', '--config.train.num_train_steps=4'), check=True)
  skipped = logged_scalars(result.stderr, 'skipped_images')
  assert skipped[4] >= 2, skipped
  assert result.stderr.count('truncated.jpg') >= 1 and result.stderr.count('empty.png') >= 1
