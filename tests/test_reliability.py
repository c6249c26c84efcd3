"""A workdir survives mistakes and faults (issue 16): every user mistake is one line and exit 2
with nothing written; a rerun with other networks changes nothing; an unreadable checkpoint
falls back to the newest readable one; a failed save stops training with one line and keeps
the previous checkpoint; SIGINT and SIGTERM stop the start-up at once; `inpaint` protects its
inputs and outputs.

Error paths run in this process; the workdirs are copies of the shared straight run (6 tiny
steps, checkpoints 3 and 6) and of the imported reference checkpoint.
"""

import dataclasses
import errno
import functools
import hashlib
import logging
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from helpers import (
    REPO_ROOT,
    STRAIGHT_ARGS,
    THREE_STAGES,
    CliResult,
    assert_usage_error,
    run_cli_in_process,
    shared_folder,
    subprocess_env,
    tiny_config,
)
from lgnet_jax import cli, fileio
from lgnet_jax.config_checks import ConfigError
from lgnet_jax.data import batching
from lgnet_jax.evaluation import evaluate
from lgnet_jax.serving import inpaint
from lgnet_jax.runtime import signals
from lgnet_jax.training import checkpoints, loop
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.training.failures import TrainingError
from lgnet_jax.training.stop import StopSignal
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.serving.inference import Inpainter

# The tiny configuration on the session's 8 devices (tiny_config's batch of 2 is for 1 device).
BATCH_8 = '--config.train.batch_size=8'


def snapshot(folder: pathlib.Path) -> dict[str, str]:
  """Every file under `folder` and a digest of its bytes."""
  return {
      str(path.relative_to(folder)): hashlib.sha1(path.read_bytes()).hexdigest()
      for path in sorted(folder.rglob('*'))
      if path.is_file()
  }


@pytest.fixture(scope='session')
def checkpointed_workdir(tmp_path_factory) -> pathlib.Path:
  """A workdir of the tiny configuration with checkpoints 3 and 6 as training writes them (the
  state and the input position), of a fresh state: no step compiled, for the fast subset."""

  def build(folder: pathlib.Path) -> None:
    config = tiny_config(*STRAIGHT_ARGS)
    workdir = workdir_lib.as_path(folder / 'workdir')
    workdir.mkdir()
    workdir_lib.save_config(workdir, config)
    state = jax.jit(functools.partial(train_state_lib.create_train_state, config))(
        jax.random.PRNGKey(config.seed)
    )
    train_iter, _ = batching.create_train_iterator(config)
    writer = checkpoints.CheckpointWriter(workdir, config)
    for step in range(1, 7):
      next(train_iter)
      if step % 3 == 0:
        state = state.replace(step=jax.numpy.asarray(step, jax.numpy.int32))
        writer.save(step, checkpoints.save_args(state, train_iter))
    writer.close()

  return shared_folder(tmp_path_factory, 'checkpointed_workdir', build) / 'workdir'


@pytest.fixture
def workdir(tmp_path, checkpointed_workdir) -> pathlib.Path:
  """A copy of `checkpointed_workdir`, free to break."""
  copy = tmp_path / 'workdir'
  shutil.copytree(checkpointed_workdir, copy)
  return copy


def corrupt(workdir: pathlib.Path, step: int, how: str) -> None:
  """Breaks checkpoint `step` as a crash, a full disk or a careless `rm` would."""
  state = workdir / 'checkpoints' / str(step) / 'state'
  if how == 'truncated data files':
    for data in (state / 'ocdbt.process_0' / 'd').iterdir():
      data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  elif how == 'no _METADATA':
    (state / '_METADATA').unlink()
  elif how == 'no manifest.ocdbt':
    (state / 'manifest.ocdbt').unlink()
  else:
    raise ValueError(how)


def read_only(monkeypatch, folder: pathlib.Path) -> None:
  """Makes `folder` refuse new files as a read-only mount would (permission bits do not bind
  root, and mounting needs privileges a test does not have)."""
  create = fileio._create_temporary  # pylint: disable=protected-access

  def refuse(path: pathlib.Path):
    if path.parent.resolve() == folder.resolve():
      raise OSError(errno.EROFS, 'Read-only file system')
    return create(path)

  monkeypatch.setattr(fileio, '_create_temporary', refuse)


# ------------------------------------------------------------------------------------------
# Mistakes in the flags, the config and the workdir: one line, exit 2, nothing written.


def parse_main_flags(argv: list[str]) -> None:
  """`cli.parse_absl_flags` on lgnet_jax.main's --config and --mode, defined on flags of their
  own (lgnet_jax.main's are process-wide, and so is the benchmark's --config)."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      'config', None, 'config', flag_values=values, lock_config=True, sys_argv=argv
  )
  flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'mode', flag_values=values)
  cli.parse_absl_flags(argv, values)


@pytest.mark.parametrize(
    'args, message',
    [
        (
            ['--config.train.bogus=3'],
            "unknown setting --config.train.bogus: train has no field 'bogus'",
        ),
        (['--config.trian.batch_size=3'], "the config has no field 'trian'; did you mean train?"),
        (['--config.train.checkpoint_every_step=1'], 'did you mean train.checkpoint_every_steps'),
        (['--config.train.checkpoint_every_steps=abc'], 'invalid literal for int()'),
        (['--mode=bogus'], 'value should be one of <train|eval>'),
    ],
)
def test_flag_mistakes_are_one_line(capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    parse_main_flags(['main', '--config=configs/demo.py', *args])
  assert exit_info.value.code == 2
  assert_usage_error(CliResult(2, '', capsys.readouterr().err), message)


@pytest.mark.parametrize(
    'content, message',
    [
        (None, 'does not exist'),
        ('def get_config(:\n', 'syntax error at line 1'),
        ('def get_config():\n  return 1 / 0\n', 'division by zero'),
    ],
)
def test_config_files_that_do_not_load_are_one_line(capsys, tmp_path, content, message):
  path = tmp_path / 'config.py'
  if content is not None:
    path.write_text(content)
  with pytest.raises(SystemExit) as exit_info:
    parse_main_flags(['main', f'--config={path}'])
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert error.count('error: ') == 1 and 'Traceback' not in error
  assert str(path) in error and message in error, error


@pytest.mark.parametrize(
    'args, message',
    [
        (['--config.model.variant=lgnet_foo'], "model.variant 'lgnet_foo' is not one of lgnet,"),
        (
            ['--config.train.checkpoint_every_steps=0'],
            'train.checkpoint_every_steps must be a whole number of at least 1, got 0',
        ),
        (['--config.train.log_every_steps=-1'], 'train.log_every_steps must be'),
        (['--config.train.sample_every_steps=0'], 'train.sample_every_steps must be'),
        (
            ['--config.model.param_dtype=int8'],
            "model.param_dtype 'int8' is not a floating-point type",
        ),
    ],
)
def test_bad_settings_are_named_before_anything_is_written(tmp_path, args, message):
  with pytest.raises(ConfigError, match=message):
    loop.train_and_evaluate(tiny_config(BATCH_8, *args), str(tmp_path / 'workdir'))
  assert not (tmp_path / 'workdir').exists()


def test_a_workdir_that_is_a_file_or_read_only(tmp_path, monkeypatch):
  config = tiny_config(BATCH_8)
  a_file = tmp_path / 'file'
  a_file.write_text('not a folder')
  for workdir, message in ((a_file, 'is a file'), (a_file / 'run', f'{a_file} is a file')):
    with pytest.raises(workdir_lib.WorkdirError, match=message):
      loop.train_and_evaluate(config, str(workdir))
  assert a_file.read_text() == 'not a folder'
  locked = tmp_path / 'locked'
  locked.mkdir()
  read_only(monkeypatch, locked)
  with pytest.raises(
      workdir_lib.WorkdirError, match='cannot write to workdir .*: Read-only file system'
  ):
    loop.train_and_evaluate(config, str(locked / 'run'))
  assert not list(locked.iterdir())


def test_evaluation_of_a_read_only_workdir_is_one_line(tmp_path, official_workdir, monkeypatch):
  workdir = tmp_path / 'workdir'
  shutil.copytree(official_workdir, workdir)
  before = snapshot(workdir)
  read_only(monkeypatch, workdir)
  with pytest.raises(workdir_lib.WorkdirError, match=f'cannot write to workdir {workdir}'):
    evaluate.evaluate(tiny_config('--config.eval.batch_size=8'), str(workdir))
  assert snapshot(workdir) == before


def test_too_little_free_space_for_a_checkpoint(tmp_path, monkeypatch):
  usage = shutil.disk_usage(tmp_path)
  workdir_lib.check_free_space(tmp_path / 'run', 1024)
  monkeypatch.setattr(
      workdir_lib.shutil, 'disk_usage', lambda path: usage._replace(free=10 * 2**20)
  )
  with pytest.raises(
      workdir_lib.WorkdirError, match='10 MiB free but a checkpoint needs about 100 MiB'
  ):
    workdir_lib.check_free_space(tmp_path / 'run', 100 * 2**20)


# ------------------------------------------------------------------------------------------
# A rerun with other networks.


def test_rerun_with_other_networks_refuses_and_changes_nothing(workdir):
  before = snapshot(workdir)
  with pytest.raises(ConfigError) as error:
    loop.train_and_evaluate(tiny_config(BATCH_8, '--config.model.ngf=8'), str(workdir))
  message = str(error.value)
  assert 'model.ngf is 4 there but 8 here' in message and '--workdir=NEW' in message
  assert 'init_from' not in message  # other shapes: init_from could not load them either
  with pytest.raises(
      ConfigError, match=f'model.image_size is 256 there but 512 here.*--config.init_from={workdir}'
  ):
    loop.train_and_evaluate(tiny_config(BATCH_8, '--config.model.image_size=512'), str(workdir))
  assert snapshot(workdir) == before


def test_model_differences_ignore_settings_that_keep_the_networks():
  here, there = tiny_config(THREE_STAGES), tiny_config(THREE_STAGES)
  here.model.remat, here.model.dtype, here.model.attention_query_chunk = True, 'bfloat16', 512
  assert workdir_lib.model_differences(there, here) == []
  there.model.ngf, here.model.ngf = None, 64  # unset: the variant's width, 64 for lgnet
  assert workdir_lib.model_differences(there, here) == []
  here.model.variant = 'lgnet_light'  # whose default width is 48, here set to 64
  assert workdir_lib.model_differences(there, here) == [
      "model.variant is 'lgnet' there but 'lgnet_light' here"
  ]
  assert workdir_lib.model_differences(there, here, workdir_lib.SHAPE_MODEL_FIELDS) == [
      "model.variant is 'lgnet' there but 'lgnet_light' here"
  ]


# ------------------------------------------------------------------------------------------
# Unreadable checkpoints.


@pytest.mark.parametrize('how', ['truncated data files', 'no _METADATA', 'no manifest.ocdbt'])
def test_unreadable_latest_checkpoint_falls_back_to_the_newest_readable(workdir, how, caplog):
  corrupt(workdir, 6, how)
  with caplog.at_level(logging.WARNING):
    step, state = workdir_lib.restore(workdir)
  assert step == 3 and int(state.step) == 3
  warnings = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert (
      len(warnings) == 1 and 'checkpoint 6' in warnings[0] and 'trying checkpoint 3' in warnings[0]
  )


def test_no_fallback_when_refused_and_none_readable(workdir, tmp_path, capsys):
  corrupt(workdir, 6, 'truncated data files')
  config = workdir_lib.load_config(workdir)
  config.train.restore_fallback = False
  with pytest.raises(
      workdir_lib.WorkdirError,
      match=r'checkpoint 6 in .* cannot be read .*move '
      r'.*checkpoints/6 away to use checkpoint 3',
  ):
    workdir_lib.restore(workdir, config)
  corrupt(workdir, 3, 'no manifest.ocdbt')
  image = tmp_path / 'image.png'
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
  mask = np.zeros((32, 32), np.uint8)
  mask[8:16, 8:16] = 255
  Image.fromarray(mask).save(tmp_path / 'mask.png')
  result = run_cli_in_process(
      capsys,
      inpaint,
      '--workdir',
      workdir,
      '--image',
      image,
      '--mask',
      tmp_path / 'mask.png',
      '--output',
      tmp_path / 'out.png',
  )
  assert_usage_error(result, 'no checkpoint in', 'can be read: checkpoints 6, 3')
  assert not (tmp_path / 'out.png').exists()


def test_training_resumes_from_the_newest_readable_checkpoint(workdir, caplog):
  """Step 6 is unreadable: training restores 3 (here: with nothing left to train), moves 6 to
  unreadable_checkpoints/ so the run can write step 6 again, and keeps config.json."""
  corrupt(workdir, 6, 'truncated data files')
  config_json = (workdir / 'config.json').read_text()
  with caplog.at_level(logging.WARNING):
    state = loop.train_and_evaluate(
        tiny_config(BATCH_8, '--config.train.num_train_steps=3', '--config.loss.lambda_tv=0.2'),
        str(workdir),
    )
  assert int(state.step) == 3
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).all_steps() == [3]
  assert (workdir / 'unreadable_checkpoints' / '6' / 'state').is_dir()
  assert any(
      'checkpoint 6' in r.getMessage() and 'cannot be read' in r.getMessage()
      for r in caplog.records
  )
  assert (workdir / 'config.json').read_text() == config_json  # written by the fresh start only


def test_checkpoints_of_states_with_an_rng_entry_still_restore(workdir, caplog):
  """States saved before the train state held arrays only had an `rng` entry (and no data
  position, as here): evaluation and training read them, skipping it."""
  state = workdir_lib.restore_state(workdir, step=6)
  shutil.rmtree(workdir / 'checkpoints' / '6')
  older = {
      **{f.name: getattr(state, f.name) for f in dataclasses.fields(state)},
      'rng': jax.random.PRNGKey(1),
  }
  manager = workdir_lib.checkpoint_manager(workdir)
  manager.save(6, args=ocp.args.Composite(**{workdir_lib.STATE_ITEM: ocp.args.StandardSave(older)}))
  manager.wait_until_finished()
  manager.close()
  for restored in (
      workdir_lib.restore_state(workdir, step=6),
      loop.train_and_evaluate(
          tiny_config('--config.train.num_train_steps=6'), str(workdir), devices=jax.devices()[:1]
      ),
  ):
    assert not hasattr(restored, 'rng')
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------
# A save that cannot be written.


def tiny_state() -> dict:
  return {'w': jax.numpy.arange(1000.0), 'b': jax.numpy.ones((3, 3))}


def save_args(state: dict) -> ocp.args.Composite:
  return ocp.args.Composite(**{workdir_lib.STATE_ITEM: ocp.args.StandardSave(state)})


def fail_commit_of(monkeypatch, step: int) -> None:
  """orbax's commit of checkpoint `step` fails in its background thread as on a full disk."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel

  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if self.get_final().name == str(step):
      raise OSError(errno.ENOSPC, 'No space left on device')
    return await original(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize', finalize)


def test_a_failed_background_save_stops_with_one_line_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch
):
  writer = checkpoints.CheckpointWriter(workdir_lib.as_path(tmp_path), tiny_config())
  writer.save(1, save_args(tiny_state()))
  fail_commit_of(monkeypatch, 2)
  writer.save(2, save_args(tiny_state()))  # written in the background
  for _ in range(6000):  # until the background write has ended (a hang fails below)
    if not writer.manager.is_saving_in_progress():
      break
    time.sleep(0.05)
  with pytest.raises(TrainingError) as error:
    writer.check()  # after a step: notices the failure without waiting
  assert str(error.value) == (
      f'cannot save checkpoint 2 in {tmp_path}: No space left on device; '
      'training stopped, checkpoint 1 is intact (rerun the command to resume)'
  )
  writer.close()
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1']  # no temporary
  restored = workdir_lib.checkpoint_manager(tmp_path, read_only=True).restore(
      1, args=ocp.args.Composite(**{workdir_lib.STATE_ITEM: ocp.args.StandardRestore()})
  )
  np.testing.assert_array_equal(restored[workdir_lib.STATE_ITEM]['w'], np.arange(1000.0))


def test_a_save_that_fails_at_once_or_at_the_end_stops_training(tmp_path, monkeypatch):
  writer = checkpoints.CheckpointWriter(workdir_lib.as_path(tmp_path), tiny_config())

  def no_room(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  with monkeypatch.context() as patch:
    patch.setattr(writer.manager, 'save', no_room)
    with pytest.raises(
        TrainingError,
        match='cannot save checkpoint 5 .*No space left on device; '
        'training stopped, no checkpoint was written',
    ):
      writer.save(5, save_args(tiny_state()))
  fail_commit_of(monkeypatch, 6)
  writer.save(6, save_args(tiny_state()))
  with pytest.raises(TrainingError, match='cannot save checkpoint 6 '):
    writer.close()  # the last save of a run
  assert not list((tmp_path / 'checkpoints').iterdir())


# ------------------------------------------------------------------------------------------
# Signals during start-up.


@pytest.mark.parametrize(
    'sig, code, name', [(signal.SIGTERM, 143, 'SIGTERM'), (signal.SIGINT, 130, 'SIGINT')]
)
def test_a_signal_during_a_long_native_call_exits_at_once(sig, code, name):
  """A start-up stuck in native code (XLA compiling; here a key derivation that would run
  for minutes) still ends on SIGTERM or Ctrl-C, with 128 + the signal's number and one line.
  (The process imports only the start-up handling, so the test costs a fraction of a second.)"""
  code_text = (
      'import hashlib; from lgnet_jax.runtime import signals; signals.exit_during_startup(); '
      'print("ready", flush=True); hashlib.pbkdf2_hmac("sha256", b"x", b"y", 2**31 - 1)'
  )
  process = subprocess.Popen(
      [sys.executable, '-c', code_text],
      cwd=REPO_ROOT,
      env=subprocess_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  assert process.stdout.readline() == 'ready\n'
  process.send_signal(sig)
  _, stderr = process.communicate(timeout=120)  # a hang fails here
  assert process.returncode == code
  assert stderr == f'error: stopped by {name} (nothing was saved)\n'


def test_the_program_stops_at_once_during_its_start_up(monkeypatch):
  """`python -m lgnet_jax.main` (and `lgnet-train`) hands SIGINT and SIGTERM to the start-up
  handling above before it parses a flag, and the loop takes them over once the step has
  compiled (see test_stop_signal_takes_over_from_start_up)."""
  from lgnet_jax import main  # pylint: disable=import-outside-toplevel  # defines absl's flags

  seen = []
  monkeypatch.setattr(main.host_memory, 'keep_freed_memory', lambda: None)
  monkeypatch.setattr(main.app, 'run', lambda *args, **kwargs: seen.append(signals.in_startup()))
  try:
    main.run()
  finally:
    signals.end_startup()
  assert seen == [True]


def wakeup_fd() -> int:
  fd = signal.set_wakeup_fd(-1)
  signal.set_wakeup_fd(fd)
  return fd


def test_stop_signal_takes_over_from_start_up():
  before = ({sig: signal.getsignal(sig) for sig in signals.SIGNALS}, wakeup_fd())
  signals.exit_during_startup()
  try:
    assert signals.in_startup()
    stop = StopSignal()  # after the first step
    assert not signals.in_startup()
    assert signal.getsignal(signal.SIGTERM) == stop._handle  # pylint: disable=protected-access
    stop.restore()
  finally:
    signals.end_startup()
  assert ({sig: signal.getsignal(sig) for sig in signals.SIGNALS}, wakeup_fd()) == before


# ------------------------------------------------------------------------------------------
# inpaint: its inputs and existing outputs are safe, output problems are one line.


@pytest.fixture
def pair(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
  """images/photo.png and masks/photo.png."""
  rng = np.random.default_rng(0)
  image, mask = tmp_path / 'images' / 'photo.png', tmp_path / 'masks' / 'photo.png'
  image.parent.mkdir()
  mask.parent.mkdir()
  Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
  holes = np.zeros((40, 48), np.uint8)
  holes[10:20, 10:30] = 255
  Image.fromarray(holes).save(mask)
  return image, mask


class FakeInpainter:
  """Fills every hole with white: the command line's logic without a network."""

  def __call__(self, images, masks):
    return np.where(masks > 0, 1.0, images)


@pytest.fixture
def no_network(monkeypatch) -> list:
  """Inpainter.from_workdir without loading anything; the list records its calls."""
  calls = []

  def load(cls, *args):
    calls.append(args)
    return FakeInpainter()

  monkeypatch.setattr(Inpainter, 'from_workdir', classmethod(load))
  return calls


def test_inpaint_never_writes_over_its_input(pair, official_workdir, no_network, capsys):
  image, mask = pair
  before = image.read_bytes()
  for output, what in ((image, 'image'), (mask, 'mask')):
    result = run_cli_in_process(
        capsys,
        inpaint,
        '--workdir',
        official_workdir,
        '--image',
        image,
        '--mask',
        mask,
        '--output',
        output,
        '--overwrite',
    )
    assert f'is the input {what}' in assert_usage_error(result, output)
  assert image.read_bytes() == before and not no_network


def test_inpaint_output_folder_and_existing_file(
    pair, tmp_path, official_workdir, no_network, capsys
):
  image, mask = pair
  args = ('--workdir', official_workdir, '--image', image, '--mask', mask, '--output')
  folder = run_cli_in_process(capsys, inpaint, *args, tmp_path)
  assert 'is a folder; give a file name such as' in assert_usage_error(folder, tmp_path)
  existing = tmp_path / 'out.png'
  existing.write_bytes(b'keep me')
  refused = run_cli_in_process(capsys, inpaint, *args, existing)
  assert '--overwrite' in assert_usage_error(refused, existing)
  assert existing.read_bytes() == b'keep me' and not no_network
  replaced = run_cli_in_process(capsys, inpaint, *args, existing, '--overwrite')
  assert replaced.returncode == 0, replaced.stderr
  with Image.open(existing) as result:
    assert result.size == (48, 40)
  out_dir = tmp_path / 'results'
  out_dir.mkdir()
  (out_dir / 'photo.png').write_bytes(b'old')
  folders = run_cli_in_process(
      capsys,
      inpaint,
      '--workdir',
      official_workdir,
      '--image-dir',
      image.parent,
      '--mask-dir',
      mask.parent,
      '--output-dir',
      out_dir,
  )
  assert_usage_error(folders, out_dir / 'photo.png', '--overwrite')


def test_inpaint_output_location_checked_before_the_network(
    pair, tmp_path, official_workdir, no_network, monkeypatch, capsys
):
  image, mask = pair
  locked = tmp_path / 'locked'
  locked.mkdir()
  read_only(monkeypatch, locked)
  result = run_cli_in_process(
      capsys,
      inpaint,
      '--workdir',
      official_workdir,
      '--image',
      image,
      '--mask',
      mask,
      '--output',
      locked / 'sub' / 'out.png',
  )
  assert_usage_error(result, f'cannot write to {locked / "sub"}')
  assert not no_network  # refused before the network was loaded


def test_inpaint_write_failure_is_one_line(
    pair, tmp_path, official_workdir, no_network, monkeypatch, capsys
):
  image, mask = pair

  def full_disk(path, write):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(fileio, 'atomic_write', full_disk)
  result = run_cli_in_process(
      capsys,
      inpaint,
      '--workdir',
      official_workdir,
      '--image',
      image,
      '--mask',
      mask,
      '--output',
      tmp_path / 'out.png',
  )
  assert_usage_error(result, f'cannot write {tmp_path / "out.png"}: No space left on device')
  assert not (tmp_path / 'out.png').exists()
