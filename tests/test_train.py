"""Training: the reference schedule, data parallelism, resume, signals, errors, the demo."""

import functools
import json
import math
import os
import pathlib
import re
import shutil
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from lgnet_jax import config_checks
from lgnet_jax.configs import demo
from lgnet_jax.data import batching, masks, sources
from lgnet_jax.training import checkpoints, failures, losses, loop, start
from lgnet_jax.models import attention
from lgnet_jax.runtime.sharding import DATA_AXIS, create_mesh
from lgnet_jax.training import state as train_state_lib
from lgnet_jax import workdir as workdir_lib
from helpers import (
    EXACT_ARGS,
    FIXTURES,
    STRAIGHT_ARGS,
    absl_messages,
    plain_programs,
    run_main_in_process,
    tiny_config,
)


def train_one_device(workdir: pathlib.Path, *args: str):
  """`python -m lgnet_jax.main TINY_ARGS ARGS --workdir=WORKDIR` in this process, on one device
  and with `plain_programs` as the straight run (so its compiled step is reused); the final
  state."""
  with plain_programs():
    return loop.train_and_evaluate(tiny_config(*args), str(workdir), devices=jax.devices()[:1])


def restore_state(workdir: pathlib.Path, step: int | None = None):
  return jax.device_get(workdir_lib.restore_state(workdir, step=step))


def data_position(workdir: pathlib.Path, step: int) -> dict:
  return json.loads(
      (workdir / 'checkpoints' / str(step) / 'data' / 'process_0-of-1.json').read_text()
  )


def logged_scalars(stderr: str, name: str) -> dict[int, float]:
  return {
      int(step): float(value)
      for step, value in re.findall(rf'\[(\d+)\] .*?train/{name}=([-\w.+]+)', stderr)
  }


def test_schedule_is_the_references():
  optim = ml_collections.ConfigDict(
      {'learning_rate': 2e-4, 'n_epochs': 100, 'n_epochs_decay': 100, 'decay_per_step': False}
  )
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


@pytest.mark.slow
def test_four_devices_match_one_and_compile_once(one_device_reference, four_device_reference):
  """2 steps on a global batch of 4: 4 devices give what 1 device gives, each compiled once.

  Parameters are compared after SGD steps. Under Adam they cannot agree to 1e-5 in float32
  for any data-parallel split: Adam turns each gradient that is zero in exact arithmetic
  (or float noise, which this model's ReLU networks amplify to ~1e-3 relative on one
  device alone) into a full +-lr step whose sign follows the summation order.
  """
  assert jax.device_count() == 8, 'conftest sets 8 fake CPU devices'
  config = tiny_config(*EXACT_ARGS)
  like = jax.eval_shape(
      functools.partial(train_state_lib.create_train_state, config), jax.random.PRNGKey(0)
  )
  one, four = (run.state_like(like) for run in (one_device_reference, four_device_reference))
  # Each step compiled during its first call and never again (nothing else either).
  compiled = (one_device_reference.compiled, four_device_reference.compiled)
  assert compiled == (['jit(train_step)'], ['jit(train_step)']), compiled
  assert int(one.step) == int(four.step) == 2
  for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(one), jax.tree_util.tree_leaves(four)
  ):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))
  # Both started from the same state, and the steps moved every network by much more than the
  # tolerance.
  fresh = four_device_reference.state_like(like, 'initial')
  for a, b in zip(one_device_reference.initial, four_device_reference.initial):
    np.testing.assert_array_equal(a, b)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), fresh.g_params, four.g_params)
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-3
  d_moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), fresh.d_params, four.d_params)
  assert max(jax.tree_util.tree_leaves(d_moved)) > 1e-3
  assert not np.allclose(
      fresh.g_batch_stats['G1']['down2_bn']['var'], four.g_batch_stats['G1']['down2_bn']['var']
  )


def test_attention_over_a_sharded_batch_matches_one_device(plain_compile):
  """G3's attention (the one layer of the later stages that mixes positions across a whole
  map) and its gradient, with the batch split over 4 devices as in the training step."""
  maps = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 8))

  def value_and_grad(x):
    return jax.value_and_grad(lambda x: jnp.mean(attention.cosine_affinity_attention(x) ** 2))(x)

  mesh = create_mesh(jax.devices()[:4])
  split = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
  sharded = jax.jit(value_and_grad, in_shardings=split, out_shardings=(None, split))(maps)
  single = jax.jit(value_and_grad)(maps)
  assert sharded[1].sharding.num_devices == 4
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-6)
  np.testing.assert_allclose(sharded[1], single[1], rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_straight_run_writes_its_workdir(straight_run):
  workdir = straight_run.workdir
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).all_steps() == [3, 6]
  assert workdir_lib.load_config(workdir).model.ndf == 8
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 1
  with Image.open(workdir / 'samples.png') as grid:  # 2 rows of [input, 1 stage, truth]
    assert grid.size == (3 * 256, 2 * 256)
  assert data_position(workdir, 3) != data_position(workdir, 6)
  # Its loss falls: the mean over steps 5-6 is below the mean over steps 1-2.
  total = logged_scalars(straight_run.console, 'total_g')
  assert sorted(total) == [2, 4, 6] and total[6] < total[2], total


def event_scalars(workdir: pathlib.Path) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the scalars in `workdir`'s TensorBoard event file."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  (path,) = workdir.glob('events.out.tfevents.*')
  scalars: dict[str, dict[int, float]] = {}
  for event in tf.compat.v1.train.summary_iterator(str(path)):
    for value in event.summary.value:
      if value.HasField('tensor') and not value.tensor.tensor_shape.dim:
        scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
  return scalars


@pytest.mark.slow
def test_training_logs_evaluation_and_norms(straight_run):
  """Every train.eval_every_steps (3) the fixed test subset is scored per bucket; every log
  step (2) carries per-network gradient, parameter and update norms."""
  scalars = event_scalars(straight_run.workdir)
  buckets = [f'{low * 100:.0f}-{high * 100:.0f}%' for low, high in masks.BUCKETS]
  for metric in ('l1', 'psnr', 'ssim'):
    for bucket in buckets:
      assert sorted(scalars[f'eval/{metric}/{bucket}']) == [3, 6], (metric, bucket)
  # Larger holes are harder: the l1 error of the largest bucket exceeds the smallest's.
  assert scalars[f'eval/l1/{buckets[-1]}'][6] > scalars[f'eval/l1/{buckets[0]}'][6]
  for kind in ('grad', 'param', 'update'):
    for net in ('G1', 'D'):
      values = scalars[f'train/{kind}_norm_{net}']
      assert sorted(values) == [2, 4, 6] and all(
          v > 0 and math.isfinite(v) for v in values.values()
      )
  # Adam's updates are about lr (1e-3) per parameter: far smaller than the parameters.
  assert scalars['train/update_norm_G1'][6] < 0.1 * scalars['train/param_norm_G1'][6]
  assert '[6] evaluation on 2 test images per bucket' in straight_run.console


@pytest.mark.slow
def test_sigterm_saves_and_the_resumed_run_is_bit_exact(tmp_path, monkeypatch, plain_compile):
  """SIGTERM: the step finishes, a checkpoint is saved, training returns. Resuming from it ends
    where a straight run of 4 steps ends, bit for bit, with the input pipeline at the same
    position. (Both runs in this process: another process may compile the step differently.
  Without evaluation while training, which the straight run covers.)"""
  args = (*STRAIGHT_ARGS, '--config.train.eval_every_steps=0')
  straight = tmp_path / 'straight'
  train_one_device(straight, *args, '--config.train.num_train_steps=4')
  workdir = tmp_path / 'workdir'
  log_metrics = loop.log_metrics

  def log_then_signal(writer, progress, step, *rest):
    log_metrics(writer, progress, step, *rest)
    if step == 2:  # as `kill -TERM` would, between two steps
      os.kill(os.getpid(), signal.SIGTERM)

  handler = signal.getsignal(signal.SIGTERM)
  with monkeypatch.context() as patch, absl_messages() as messages:
    patch.setattr(loop, 'log_metrics', log_then_signal)
    stopped = train_one_device(workdir, *args, '--config.train.num_train_steps=10000')
  assert signal.getsignal(signal.SIGTERM) == handler  # the loop's handler is gone again
  assert 'stopped by signal 15 at step 2; checkpoint saved' in messages
  assert int(stopped.step) == 2
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).all_steps() == [2]

  with absl_messages() as messages:
    train_one_device(workdir, *args, '--config.train.num_train_steps=4')
  assert any(re.match(r'resumed from .* at step 2$', m) for m in messages), messages
  a, b = restore_state(straight, 4), restore_state(workdir, 4)
  assert int(a.step) == int(b.step) == 4
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  assert data_position(straight, 4) == data_position(workdir, 4)


def leaves_by_path(tree) -> dict[str, np.ndarray]:
  """{'g_opt_state/0/mu/G1/...': value} for a train state or the same tree as orbax stored it
  (dicts and lists): paths spelled alike whatever the containers."""

  def name(key) -> str:
    for attribute in ('key', 'idx', 'name'):
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)

  return {
      '/'.join(map(name, path)): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
  }


def test_a_workdir_written_before_the_restructuring_resumes(tmp_path, plain_compile):
  """tests/fixtures/workdir_v0_1 holds checkpoint 2 of the tiny configuration, written by the
  code before the package restructuring (see its README): training restores exactly what was
  saved, then goes on from step 2 to 3 with the input where it was."""
  workdir = tmp_path / 'workdir'
  shutil.copytree(FIXTURES / 'workdir_v0_1', workdir)
  stored = workdir_lib.checkpoint_manager(workdir, read_only=True).restore(
      2, args=ocp.args.Composite(**{workdir_lib.STATE_ITEM: ocp.args.StandardRestore()})
  )[
      workdir_lib.STATE_ITEM
  ]  # the arrays as saved, without today's TrainState
  # Nothing left to train at 2 steps: the run returns the state it restored.
  with absl_messages() as messages:
    restored = train_one_device(workdir, '--config.train.num_train_steps=2')
  assert any(re.match(r'resumed from .* at step 2$', m) for m in messages), messages
  saved, restored = leaves_by_path(stored), leaves_by_path(restored)
  assert sorted(saved) == sorted(restored) and len(saved) > 100
  for path, value in saved.items():
    np.testing.assert_array_equal(restored[path], value, err_msg=path)

  trained = train_one_device(
      workdir, '--config.train.num_train_steps=3', '--config.train.checkpoint_every_steps=3'
  )
  assert int(trained.step) == 3
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).all_steps() == [2, 3]
  after = leaves_by_path(restore_state(workdir, 3))
  assert not np.array_equal(after['g_params/G1/down1/kernel'], saved['g_params/G1/down1/kernel'])
  # Batches of 2 images: the input went on from the 4 images of steps 1-2 to the 6th.
  assert data_position(workdir, 2)['last_seen_indices'] == {'0': 3}
  assert data_position(workdir, 3)['last_seen_indices'] == {'0': 5}


@pytest.mark.parametrize(
    'args, message',
    [
        (['--config.optim.optimizer=adagrad'], "optim.optimizer 'adagrad' is not one of"),
        (['--config.optim.learning_rate=-0.0002'], 'optim.learning_rate must be a number above 0'),
        (['--config.optim.learning_rate=0.0'], 'optim.learning_rate must be a number above 0'),
        (['--config.optim.eps=nan'], 'optim.eps must be a number above 0, got nan'),
        (['--config.optim.b1=1.0'], 'optim.b1 must be a number in [0, 1), got 1.0'),
        (['--config.optim.b2=-0.5'], 'optim.b2 must be a number in [0, 1), got -0.5'),
        (['--config.optim.n_epochs=-1'], 'optim.n_epochs must be a whole number of at least 0'),
        (
            ['--config.optim.n_epochs=0', '--config.optim.n_epochs_decay=0'],
            'optim.n_epochs + optim.n_epochs_decay must be at least 1',
        ),
        (['--config.train.batch_size=4'], 'train.batch_size 4 is not divisible by 8 devices'),
        (['--config.model.image_size=384'], 'model.image_size 384 is not a multiple of 256'),
    ],
)
def test_bad_settings_stop_before_anything_is_written(tmp_path, args, message):
  config = tiny_config('--config.train.batch_size=8', *args)
  with pytest.raises(config_checks.ConfigError, match=re.escape(message)):
    loop.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists()


def test_places2_without_data_stops_with_instructions(tmp_path):
  from lgnet_jax.configs import places2  # pylint: disable=import-outside-toplevel

  config = places2.get_config()
  config.data.tfds_data_dir = str(tmp_path / 'tfds')
  with pytest.raises(sources.DataError) as error:
    loop.train_and_evaluate(config, str(tmp_path / 'w'), devices=jax.devices()[:1])
  for fragment in (
      'places365_small is not prepared',
      'tfds build places365_small',
      '--config.data.tfds_data_dir',
  ):
    assert fragment in str(error.value)
  assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_a_training_error_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
  """`python -m lgnet_jax.main` turns a TrainingError (here raised at once) into one line."""

  def fail(config, workdir):
    raise failures.TrainingError('non-finite loss at step 7: total_g=nan; training stopped')

  monkeypatch.setattr(loop, 'train_and_evaluate', fail)
  result = run_main_in_process(capsys, tmp_path, f'--workdir={tmp_path / "workdir"}')
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [
      'error: non-finite loss at step 7: total_g=nan; training stopped'
  ], result.stderr


def test_non_finite_loss_stops_and_keeps_last_checkpoint(
    tmp_path, straight_run, monkeypatch, plain_compile
):
  """A step whose loss terms come back NaN (here: made so after the real step) stops training
  naming the step and term, before its checkpoint is written."""
  workdir = tmp_path / 'workdir'
  shutil.copytree(straight_run.workdir, workdir)  # checkpoints 3 and 6
  compile_everywhere = loop.compile_everywhere

  def compile_poisoned(*args):
    step_fn = compile_everywhere(*args)

    def step(state, batch, vgg_params):
      state, terms = step_fn(state, batch, vgg_params)
      return state, {**terms, 'total_g': terms['total_g'] * jnp.nan}

    return step

  monkeypatch.setattr(loop, 'compile_everywhere', compile_poisoned)
  with pytest.raises(failures.TrainingError, match=r'^non-finite loss at step 7: .*total_g=nan'):
    train_one_device(
        workdir, '--config.train.num_train_steps=8', '--config.train.checkpoint_every_steps=1'
    )
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).all_steps() == [3, 6]


def test_fine_tune_starts_from_the_imported_networks(official_workdir):
  """`init_from`: the networks of another workdir (here the imported reference), fresh optimizers."""
  config = demo.get_config()
  config.model.ngf = config.model.ngf_local = 16
  config.model.ndf = 64  # the reference discriminator's width (the demo's is 16)
  config.init_from = str(official_workdir)
  abstract = jax.eval_shape(
      functools.partial(train_state_lib.create_train_state, config), jax.random.PRNGKey(0)
  )
  fresh = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
  state = jax.device_get(checkpoints.init_from(fresh, config.init_from, config))
  imported = restore_state(official_workdir)
  for field in ('g_params', 'g_batch_stats', 'd_params', 'd_spectral'):
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(getattr(imported, field)),
        jax.tree_util.tree_leaves(getattr(state, field)),
    ):
      np.testing.assert_array_equal(a, b, err_msg=f'{field}{jax.tree_util.keystr(path)}')
  assert int(state.step) == 0
  assert all(not np.any(m) for m in jax.tree_util.tree_leaves(state.g_opt_state[0].mu))

  config.model.ndf = 32  # another discriminator: named, nothing restored
  with pytest.raises(config_checks.ConfigError, match=r'model\.ndf is 64 there but 32 here'):
    checkpoints.init_from(fresh, config.init_from, config)


def test_demo_config_as_shipped_is_ready_to_train(tmp_path):
  """configs/demo.py passes every check, needs no file (no VGG16: its perceptual and style terms
  are off) and reads its photos; it trains as the tiny configuration does, only wider (see
  test_straight_run_writes_its_workdir for a loss that falls)."""
  config = demo.get_config()
  config_checks.check_config(config, num_devices=1)
  assert not losses.uses_vgg(config.loss) and start.load_vgg_params(config) is None
  state = jax.eval_shape(
      functools.partial(train_state_lib.create_train_state, config), jax.random.PRNGKey(0)
  )
  assert state.g_params['G1']['down1']['kernel'].shape == (4, 4, 4, config.model.ngf)
  iterator, num_images = batching.create_train_iterator(config)
  assert num_images == config.data.demo_num_images == 32
  batch = next(iterator)
  assert batch['image'].shape == (2, 256, 256, 3) and batch['mask'].shape == (2, 256, 256, 1)
  assert 0 < batch['mask'].mean() < 1


@pytest.mark.slow
def test_bad_files_are_skipped_and_counted(tmp_path, plain_compile):
  rng = np.random.default_rng(0)
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(6):
    Image.fromarray(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(
        folder / f'good{i}.png'
    )
  good_jpeg = folder / 'good.jpg'
  Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(good_jpeg, quality=90)
  (folder / 'truncated.jpg').write_bytes(good_jpeg.read_bytes()[:600])
  good_jpeg.unlink()
  (folder / 'empty.png').write_bytes(b'')
  # 8 files, batch 2, 4 steps: a whole pass over the shuffled folder (6 good images) and two
  # more. 4 steps per epoch, as the straight run: its compiled step is reused.
  args = (
      *STRAIGHT_ARGS,
      '--config.data.source=folder',
      f'--config.data.train_dir={folder}',
      '--config.train.num_train_steps=4',
  )
  # Evaluation while training (every 3 steps) needs a test set: a clear error, nothing written.
  with pytest.raises(sources.DataError, match=r'test_dir.*eval_every_steps=0 turns it off'):
    train_one_device(tmp_path / 'workdir', *args)
  assert not (tmp_path / 'workdir' / workdir_lib.CONFIG_FILE).exists()
  with absl_messages() as messages:
    train_one_device(tmp_path / 'workdir', *args, '--config.train.eval_every_steps=0')
  text = '\n'.join(messages)
  skipped = logged_scalars(text, 'skipped_images')
  assert skipped[4] >= 2, skipped
  assert 'truncated.jpg' in text and 'empty.png' in text
