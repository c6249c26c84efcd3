"""Multi-process runs on this machine: processes with fake CPU devices joined by gloo.

The same global batch is trained by 2 processes x 2 devices and by 1 process x 4 devices;
a checkpoint written by one layout is read by another; a SIGTERM to one process stops all
at the same step; a killed process makes the other exit within the heartbeat timeout, and
the relaunch resumes.
"""

import json
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from lgnet_jax import distributed
from lgnet_jax import train_state as train_state_lib
from lgnet_jax import workdir as workdir_lib
from conftest import FAST_COMPILE, REPO_ROOT, run_module, subprocess_env, write_random_images

# Every stage and D, narrow, no VGG; a global batch of 4 (one image per device).
TINY = ['--config=configs/demo.py', '--config.model.ngf=4', '--config.model.ngf_local=4',
        '--config.loss.lambda_perceptual=0', '--config.loss.lambda_style=0',
        '--config.train.log_every_steps=1', '--config.train.sample_every_steps=1000',
        '--config.data.demo_num_images=8', '--config.train.batch_size=4']
# Plain gradient descent: Adam's first steps are +-lr whatever the gradient's size, which
# turns float32 rounding differences between device layouts (the all-reduce sums in another
# order) into +-lr differences (see train_state.make_optimizer).
EXACT = ['--config.optim.optimizer=sgd', '--config.optim.learning_rate=1e-3']
# Long enough that a loaded 2-core machine does not miss heartbeats of live processes.
HEARTBEAT_TIMEOUT_S = 30


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(workdir: pathlib.Path, *args: str, processes: int = 2, devices: int = 2,
           module: str = 'lgnet_jax.main') -> list[tuple[subprocess.Popen, pathlib.Path]]:
  """Starts `processes` copies of `module` on localhost; returns (process, log file) pairs."""
  port = free_port()
  env = subprocess_env(**FAST_COMPILE, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
                       PYTHONUNBUFFERED='1')
  started = []
  for index in range(processes):
    log = workdir.parent / f'{workdir.name}.process{index}.log'
    dashes = '-' if module == 'lgnet_jax.inpaint' else '_'
    command = [sys.executable, '-m', module, *args,
               f'--coordinator{dashes}address=localhost:{port}',
               f'--num{dashes}processes={processes}', f'--process{dashes}id={index}']
    with log.open('w') as out:
      started.append((subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out,
                                       stderr=subprocess.STDOUT), log))
  return started


def wait_all(started, timeout: float = 600) -> list[int]:
  deadline = time.time() + timeout
  codes = []
  for process, _ in started:
    try:
      codes.append(process.wait(timeout=max(deadline - time.time(), 1)))
    except subprocess.TimeoutExpired:
      for other, _ in started:
        other.kill()
      raise
  return codes


def logs(started) -> str:
  return '\n'.join(f'--- {log.name}\n' + log.read_text()[-3000:] for _, log in started)


def run_processes(workdir: pathlib.Path, *args: str, **kwargs) -> list[pathlib.Path]:
  started = launch(workdir, *args, **kwargs)
  codes = wait_all(started)
  assert codes == [0] * len(started), logs(started)
  return [log for _, log in started]


def wait_for_checkpoint(workdir: pathlib.Path, step: int, started, timeout: float = 900) -> None:
  """Until checkpoint `step` is committed by every process."""
  committed = workdir / 'checkpoints' / str(step) / 'commit_success.txt'
  deadline = time.time() + timeout
  while not committed.is_file():
    assert all(p.poll() is None for p, _ in started), logs(started)
    assert time.time() < deadline, logs(started)
    time.sleep(0.1)


def max_difference(a, b) -> tuple[float, str]:
  worst = (0.0, '')
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    worst = max(worst, (float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))),
                        jax.tree_util.keystr(path)))
  return worst


# ------------------------------------------------------------------------------------------
# Settings.


def test_single_process_unless_a_coordinator_or_scheduler_says_otherwise(monkeypatch):
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_NTASKS',
               'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(name, raising=False)
  assert distributed.resolve(distributed.Settings()) is None
  assert distributed.resolve(distributed.Settings(mode='off', coordinator_address='h:1')) is None
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert distributed.resolve(distributed.Settings()) is None

  monkeypatch.setenv('SLURM_NTASKS', '8')  # JAX reads the rest from SLURM's variables
  arguments = distributed.resolve(distributed.Settings(heartbeat_timeout_s=7))
  assert arguments['coordinator_address'] is None and arguments['heartbeat_timeout_seconds'] == 7
  monkeypatch.delenv('SLURM_NTASKS')

  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'host0:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '4')
  monkeypatch.setenv('JAX_PROCESS_ID', '3')
  arguments = distributed.resolve(distributed.Settings())
  assert (arguments['coordinator_address'], arguments['num_processes'], arguments['process_id']) == (
      'host0:1234', 4, 3)
  flags = distributed.resolve(distributed.Settings(coordinator_address='other:9', process_id=1))
  assert (flags['coordinator_address'], flags['process_id']) == ('other:9', 1)
  # 'on' with nothing given leaves everything to JAX's cluster detection (TPU pods).
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(name)
  assert distributed.resolve(distributed.Settings(mode='on'))['coordinator_address'] is None


@pytest.mark.parametrize('settings, message', [
    (dict(num_processes=2, process_id=1), 'need a coordinator address'),
    (dict(coordinator_address='localhost'), 'must be HOST:PORT'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2), 'process_id 2 is not in 0..1'),
    (dict(coordinator_address='h:1', num_processes=0), 'num_processes must be at least 1'),
    (dict(mode='maybe'), "mode 'maybe' is not one of auto, on, off"),
])
def test_bad_settings_are_named(monkeypatch, settings, message):
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_NTASKS'):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(distributed.DistributedError, match=re.escape(message)):
    distributed.resolve(distributed.Settings(**settings))


def test_bad_environment_value_is_named(monkeypatch):
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'two')
  with pytest.raises(distributed.DistributedError, match="JAX_NUM_PROCESSES='two'"):
    distributed.resolve(distributed.Settings())


def test_main_reports_bad_settings_in_one_line(tmp_path):
  result = run_module('lgnet_jax.main', *TINY, f'--workdir={tmp_path}', '--num_processes=2',
                      '--process_id=1')
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'coordinator address' in errors[0]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'checkpoints').exists()


# ------------------------------------------------------------------------------------------
# Training, evaluation and inference over several processes.


def test_two_processes_train_as_one_and_any_layout_restores(tmp_path):
  """2 processes x 2 devices == 1 process x 4 devices; 1 process x 1 device resumes that."""
  two, one = tmp_path / 'two_processes', tmp_path / 'one_process'
  args = [*TINY, *EXACT, '--config.train.num_train_steps=2', '--config.train.checkpoint_every_steps=2']
  logs_two = run_processes(two, *args, f'--workdir={two}')
  run_processes(one, *args, f'--workdir={one}', processes=1, devices=4)

  a, b = workdir_lib.restore_state(one, step=2), workdir_lib.restore_state(two, step=2)
  difference, where = max_difference(a, b)
  assert difference < 1e-5, (difference, where)
  # Every network moved far more than the tolerance, so a wrong shard or statistic would show.
  config = workdir_lib.load_config(two)
  fresh = train_state_lib.create_train_state(config, jax.random.PRNGKey(config.seed))
  for name in ('G1', 'G2', 'G3'):
    assert max_difference(fresh.g_params[name], b.g_params[name])[0] > 1e-3, name
  assert max_difference(fresh.d_params, b.d_params)[0] > 1e-3

  # Each process read its own half of each global batch; only process 0 wrote summaries.
  first, second = (log.read_text() for log in logs_two)
  assert 'process 0 reads 2' in first and 'process 1 reads 2' in second
  assert 'train/total_g' in first and 'train/total_g' not in second
  assert len(list(two.glob('events.out.tfevents.*'))) == 1
  data = two / 'checkpoints' / '2' / 'data'
  assert sorted(p.name for p in data.glob('process_*')) == ['process_0-of-2.json', 'process_1-of-2.json']

  # One process with one device continues the 2-process run from its checkpoint.
  resumed = run_module('lgnet_jax.main', *args, f'--workdir={two}', '--config.train.num_train_steps=3',
                       env=FAST_COMPILE, check=True)
  assert re.search(r'resumed from .* at step 2 \(written by another number of processes: the '
                   r'input continues at global batch 2\)', resumed.stderr), resumed.stderr[-3000:]
  assert workdir_lib.checkpoint_manager(two, read_only=True).latest_step() == 3

  # Evaluation over 2 processes gives the table that 1 process gives.
  eval_args = [*TINY, '--mode=eval', '--config.eval.batch_size=4', '--config.eval.num_samples=1',
               '--config.data.test_masks_per_bucket=1']
  run_processes(two, *eval_args, f'--workdir={two}')
  table_two = json.loads((two / 'eval' / 'step_3' / 'results.json').read_text())['table']
  (two / 'eval' / 'step_3' / 'results.json').unlink()
  run_module('lgnet_jax.main', *eval_args, f'--workdir={two}', env=FAST_COMPILE, check=True)
  table_one = json.loads((two / 'eval' / 'step_3' / 'results.json').read_text())['table']
  assert table_two.keys() == table_one.keys()
  for bucket in table_one:
    for metric, value in table_one[bucket].items():
      assert table_two[bucket][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (bucket, metric)


def test_inpaint_folder_over_two_processes(tmp_path, official_workdir):
  images, masks, out = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  write_random_images(images, 5)
  masks.mkdir()
  for i in range(5):
    mask = np.zeros((256, 256), np.uint8)
    mask[64:128, 32 * i:32 * i + 64] = 255
    Image.fromarray(mask).save(masks / f'{i}.png')
  logs_ = run_processes(out, '--workdir', str(official_workdir), '--image-dir', str(images),
                        '--mask-dir', str(masks), '--output-dir', str(out), '--batch-size', '2',
                        module='lgnet_jax.inpaint', devices=1)
  assert sorted(p.name for p in out.iterdir()) == [f'{i}.png' for i in range(5)]
  assert 'wrote 3 images' in logs_[0].read_text() and 'wrote 2 images' in logs_[1].read_text()
  single = tmp_path / 'single'
  run_module('lgnet_jax.inpaint', '--workdir', str(official_workdir), '--image-dir', str(images),
             '--mask-dir', str(masks), '--output-dir', str(single), env=FAST_COMPILE, check=True)
  for i in range(5):
    a = np.asarray(Image.open(out / f'{i}.png'), np.int16)
    b = np.asarray(Image.open(single / f'{i}.png'), np.int16)
    assert np.abs(a - b).max() <= 1, i  # batch size 2 vs 8: float rounding may move a level


# ------------------------------------------------------------------------------------------
# Failures.


def test_killed_process_stops_the_other_and_sigterm_stops_all_at_one_step(tmp_path):
  workdir = tmp_path / 'workdir'
  # EXACT as above: the programs of the first test, from the compilation cache.
  args = [*TINY, *EXACT, f'--workdir={workdir}', '--config.train.checkpoint_every_steps=2',
          f'--config.distributed.heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S}',
          '--config.train.num_train_steps=1000']

  # Killing one process makes the other exit with an error within the heartbeat timeout.
  started = launch(workdir, *args)
  wait_for_checkpoint(workdir, 2, started)
  started[1][0].kill()
  killed_at = time.time()
  code = started[0][0].wait(timeout=HEARTBEAT_TIMEOUT_S + 60)
  assert code != 0, logs(started)
  assert time.time() - killed_at < HEARTBEAT_TIMEOUT_S + 30

  # The relaunch resumes from the last complete checkpoint. Then a SIGTERM to one process
  # (a preemption notice) stops both after the same step, saved, with exit status 0.
  last = workdir_lib.checkpoint_manager(workdir, read_only=True).latest_step()
  assert last >= 2
  started = launch(workdir, *args)
  wait_for_checkpoint(workdir, last + 2 - last % 2, started)
  started[1][0].send_signal(signal.SIGTERM)
  assert wait_all(started, timeout=300) == [0, 0], logs(started)
  first = started[0][1].read_text()
  assert re.search(rf'resumed from .* at step {last}\b', first), logs(started)
  stops = [re.findall(r'stopped by signal 15 at step (\d+)', log.read_text()) for _, log in started]
  assert stops[0] and stops[0] == stops[1], logs(started)
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).latest_step() == int(stops[0][0])
