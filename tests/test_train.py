"""Training: the reference schedule, data parallelism, resume, signals, errors, the demo."""

import functools
import json
import math
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
from PIL import Image

from configs import demo
from lgnet_jax import input_pipeline, train_step
from lgnet_jax import train_state as train_state_lib
from lgnet_jax import workdir as workdir_lib
from conftest import FAST_COMPILE, REPO_ROOT, run_module, subprocess_env

# A fast configuration for end-to-end runs: every stage and D, narrow, no VGG.
TINY = ['--config=configs/demo.py', '--config.model.ngf=4', '--config.model.ngf_local=4',
        '--config.loss.lambda_perceptual=0', '--config.loss.lambda_style=0',
        '--config.train.log_every_steps=1', '--config.train.sample_every_steps=1000',
        '--config.data.demo_num_images=8']


def run_main(*args: str, check: bool = False) -> subprocess.CompletedProcess:
  """`python -m lgnet_jax.main ARGS` with cheap compilation: these runs check behaviour."""
  return run_module('lgnet_jax.main', *args, env=FAST_COMPILE, check=check)


def main_args(workdir: pathlib.Path, *extra: str) -> list[str]:
  return [*TINY, f'--workdir={workdir}', *extra]


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


def _sharding_config() -> ml_collections.ConfigDict:
  """Every stage and D, narrow, without VGG (covered by the loss tests)."""
  config = demo.get_config()
  config.model.ngf, config.model.ngf_local = 4, 4
  config.loss.lambda_perceptual = config.loss.lambda_style = 0.0
  config.train.batch_size = 4
  return config


def _train_steps(config, devices, batches):
  """Trains from the seed-0 state on `devices`."""
  mesh = train_step.create_mesh(devices)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(train_step.DATA_AXIS))
  create = functools.partial(train_state_lib.create_train_state, config)
  shardings = jax.tree.map(lambda _: replicated, jax.eval_shape(create, jax.random.PRNGKey(0)))
  state = jax.jit(create, out_shardings=shardings)(jax.random.PRNGKey(0))
  step_fn = train_step.compile_train_step(config, mesh, shardings)
  history = []
  for batch in batches:
    state, terms = step_fn(state, train_step.make_global_batch(batch, data_sharding), None)
    history.append(jax.device_get(terms))
  return jax.device_get(state), history


def _demo_batches(count: int, batch_size: int) -> list[dict[str, np.ndarray]]:
  source = input_pipeline.DemoPhotoSource(count * batch_size)
  preprocess = input_pipeline.TrainPreprocess(256, crop=True, hole_ratio=(0.1, 0.4))
  records = [preprocess.random_map(source[i], np.random.default_rng(i)) for i in range(len(source))]
  return [{key: np.stack([r[key] for r in records[i:i + batch_size]]) for key in ('image', 'mask')}
          for i in range(0, len(records), batch_size)]


def test_four_devices_match_one(fast_compile):
  """2 steps on a global batch of 4: 4 devices give what 1 device gives.

  Parameters are compared after SGD steps. Under Adam they cannot agree to 1e-5 in float32
  for any data-parallel split: Adam turns each gradient that is zero in exact arithmetic
  (or float noise, which this model's ReLU networks amplify to ~1e-3 relative on one
  device alone) into a full +-lr step whose sign follows the summation order.
  """
  assert jax.device_count() == 8, 'conftest sets 8 fake CPU devices'
  config = _sharding_config()
  config.optim.optimizer, config.optim.learning_rate = 'sgd', 1e-3
  batches = _demo_batches(2, 4)
  one, _ = _train_steps(config, jax.devices()[:1], batches)
  four, _ = _train_steps(config, jax.devices()[:4], batches)
  assert int(four.step) == 2
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



def test_resume_is_bit_exact(tmp_path):
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  args = ['--config.train.num_train_steps=4', '--config.train.checkpoint_every_steps=2']
  run_main(*main_args(straight, *args), check=True)

  command = [sys.executable, '-m', 'lgnet_jax.main', *main_args(resumed, *args)]
  process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(**FAST_COMPILE),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  committed = resumed / 'checkpoints' / '2' / 'commit_success.txt'
  deadline = time.time() + 300
  while not (resumed / 'checkpoints' / '2').is_dir() or not any((resumed / 'checkpoints' / '2').iterdir()):
    assert process.poll() is None and time.time() < deadline, 'training ended before its checkpoint'
    time.sleep(0.05)
  time.sleep(1.0)  # let the step-2 save finish
  process.send_signal(signal.SIGKILL)
  process.wait()
  manager = workdir_lib.checkpoint_manager(resumed, read_only=True)
  assert manager.all_steps() == [2], f'killed too late: {manager.all_steps()} ({committed})'

  run_main(*main_args(resumed, *args), check=True)
  a, b = restore_state(straight, 4), restore_state(resumed, 4)
  assert int(a.step) == int(b.step) == 4
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  assert data_position(straight, 4) == data_position(resumed, 4)
  assert data_position(straight, 2) != data_position(straight, 4)


def test_sigterm_saves_and_exits_zero(tmp_path):
  command = [sys.executable, '-m', 'lgnet_jax.main',
             *main_args(tmp_path, '--config.train.num_train_steps=10000')]
  process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(**FAST_COMPILE), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  output = []
  for line in process.stdout:
    output.append(line)
    if re.search(r'\[2\] .*train/total_g', line):
      process.send_signal(signal.SIGTERM)
      break
  output.extend(process.stdout)
  assert process.wait(timeout=300) == 0, ''.join(output[-30:])
  stopped = re.search(r'stopped by signal 15 at step (\d+)', ''.join(output))
  assert stopped, ''.join(output[-30:])
  manager = workdir_lib.checkpoint_manager(tmp_path, read_only=True)
  assert manager.latest_step() == int(stopped.group(1)) >= 2
  assert manager.latest_step() < 10000


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


def test_missing_vgg_weights_is_a_clear_error(tmp_path):
  result = run_main('--config=configs/demo.py', f'--workdir={tmp_path}',
                    '--config.loss.lambda_perceptual=0.05', '--config.loss.vgg_random_init=False')
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert 'vgg16-397923af.pth' in result.stderr and '--config.loss.vgg_weights' in result.stderr


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
  run_main(*main_args(tmp_path, '--config.train.num_train_steps=1'), check=True)
  result = run_main(*main_args(
      tmp_path, '--config.train.num_train_steps=4', '--config.train.checkpoint_every_steps=1',
      '--config.loss.lambda_hole=nan'))
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert re.search(r'error: non-finite loss at step 2: .*total_g=nan', result.stderr)
  manager = workdir_lib.checkpoint_manager(tmp_path, read_only=True)
  assert manager.all_steps() == [1]
  state = restore_state(tmp_path, 1)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state.g_params))


def test_fine_tune_from_imported_checkpoint(tmp_path, official_workdir):
  result = run_main('--config=configs/demo.py', f'--workdir={tmp_path}',
                      '--config.model.ngf=16', '--config.model.ngf_local=16',
                      '--config.loss.lambda_perceptual=0', '--config.loss.lambda_style=0',
                      '--config.train.num_train_steps=1', '--config.data.demo_num_images=2',
                      f'--config.init_from={official_workdir}', check=True)
  assert 'initialised the networks from' in result.stderr
  imported, tuned = restore_state(official_workdir), restore_state(tmp_path)
  assert int(tuned.step) == 1
  before = imported.g_params['G2']['head']['kernel']
  after = tuned.g_params['G2']['head']['kernel']
  assert np.abs(before - after).max() < 1e-2 < np.abs(before).max()  # one small Adam step away
  assert not np.array_equal(before, after)


def test_demo_config_trains_and_loss_decreases(tmp_path):
  result = run_module('lgnet_jax.main', '--config=configs/demo.py', f'--workdir={tmp_path}',
                      '--config.train.num_train_steps=16', '--config.train.log_every_steps=8',
                      '--config.train.sample_every_steps=16', check=True)
  assert 'VGG16' not in result.stderr  # the demo's perceptual and style terms are off
  hole = logged_scalars(result.stderr, 'l1_hole_3')
  assert sorted(hole) == [8, 16]
  assert hole[16] < hole[8], hole
  assert (tmp_path / 'config.json').is_file()
  assert list(tmp_path.glob('events.out.tfevents.*'))
  assert workdir_lib.checkpoint_manager(tmp_path, read_only=True).latest_step() == 16


def test_bad_files_are_skipped_and_counted(tmp_path):
  rng = np.random.default_rng(0)
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(4):
    Image.fromarray(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(folder / f'good{i}.png')
  good_jpeg = folder / 'good.jpg'
  Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(good_jpeg, quality=90)
  (folder / 'truncated.jpg').write_bytes(good_jpeg.read_bytes()[:600])
  good_jpeg.unlink()
  (folder / 'empty.png').write_bytes(b'')
  # 6 files, batch 2, 3 steps: exactly one pass over the shuffled folder.
  result = run_main(*main_args(
      tmp_path / 'workdir', '--config.data.source=folder', f'--config.data.train_dir={folder}',
      '--config.train.num_train_steps=3'), check=True)
  skipped = logged_scalars(result.stderr, 'skipped_images')
  assert skipped[3] == 2, skipped
  assert result.stderr.count('truncated.jpg') >= 1 and result.stderr.count('empty.png') >= 1
