"""Multi-process runs on this machine: processes with fake CPU devices joined by gloo.

One 2-process run (2 fake devices each) is shared by the tests below: it trains until its
second step's checkpoint, then one process is killed. Its checkpoint matches what one
process with one device trains on the same global batches; the survivor exits within the
heartbeat timeout; a relaunch resumes, and a SIGTERM to one process stops both at the same
step; one process with one device continues the run, and evaluation over 2 processes gives
the table that one process gives.
"""

import dataclasses
import functools
import json
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from lgnet_jax.runtime import distributed
from lgnet_jax.evaluation import evaluate
from lgnet_jax.serving import inpaint
from lgnet_jax.training import loop as train
from lgnet_jax.training import state as train_state_lib
from lgnet_jax import workdir as workdir_lib
from helpers import (
    EXACT_ARGS,
    FAST_COMPILE,
    REPO_ROOT,
    TINY_ARGS,
    absl_messages,
    pipeline_batches,
    run_cli_in_process,
    run_module,
    shared_folder,
    subprocess_env,
    tiny_config,
    train_in_process,
    write_random_images,
)

# The tiny configuration with plain gradient descent on a global batch of 4 (one image per
# device).
TINY = (*TINY_ARGS, *EXACT_ARGS)
# Long enough that a loaded 2-core machine does not miss heartbeats of live processes.
HEARTBEAT_TIMEOUT_S = 30
# How long the survivor of a killed process may take to exit: the heartbeat timeout, then the
# runtime's shutdown (config.distributed.shutdown_timeout_s, 60 s) and the exit itself, with
# room for a loaded 2-core host. It catches a survivor that hangs, not a slow one.
SURVIVOR_EXIT_S = HEARTBEAT_TIMEOUT_S + 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(
    workdir: pathlib.Path,
    *args: str,
    processes: int = 2,
    devices: int = 2,
    module: str = 'lgnet_jax.main',
) -> list[tuple[subprocess.Popen, pathlib.Path]]:
  """Starts `processes` copies of `module` on localhost; returns (process, log file) pairs."""
  port = free_port()
  env = subprocess_env(
      **FAST_COMPILE,
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
      PYTHONUNBUFFERED='1',
  )
  started = []
  for index in range(processes):
    log = workdir.parent / f'{workdir.name}.process{index}.log'
    dashes = '-' if module == 'lgnet_jax.inpaint' else '_'
    command = [
        sys.executable,
        '-m',
        module,
        *args,
        f'--coordinator{dashes}address=localhost:{port}',
        f'--num{dashes}processes={processes}',
        f'--process{dashes}id={index}',
    ]
    with log.open('w') as out:
      started.append(
          (
              subprocess.Popen(
                  command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
              ),
              log,
          )
      )
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
    worst = max(
        worst,
        (
            float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))),
            jax.tree_util.keystr(path),
        ),
    )
  return worst


# ------------------------------------------------------------------------------------------
# Settings.


def test_single_process_unless_a_coordinator_or_scheduler_says_otherwise(monkeypatch):
  for name in (
      'JAX_COORDINATOR_ADDRESS',
      'JAX_NUM_PROCESSES',
      'JAX_PROCESS_ID',
      'SLURM_NTASKS',
      'OMPI_COMM_WORLD_SIZE',
  ):
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
  assert (
      arguments['coordinator_address'],
      arguments['num_processes'],
      arguments['process_id'],
  ) == ('host0:1234', 4, 3)
  flags = distributed.resolve(distributed.Settings(coordinator_address='other:9', process_id=1))
  assert (flags['coordinator_address'], flags['process_id']) == ('other:9', 1)
  # 'on' with nothing given leaves everything to JAX's cluster detection (TPU pods).
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(name)
  assert distributed.resolve(distributed.Settings(mode='on'))['coordinator_address'] is None


@pytest.mark.parametrize(
    'settings, message',
    [
        (dict(num_processes=2, process_id=1), 'need a coordinator address'),
        (dict(coordinator_address='localhost'), 'must be HOST:PORT'),
        (
            dict(coordinator_address='h:1', num_processes=2, process_id=2),
            'process_id 2 is not in 0..1',
        ),
        (dict(coordinator_address='h:1', num_processes=0), 'num_processes must be at least 1'),
        (dict(mode='maybe'), "mode 'maybe' is not one of auto, on, off"),
    ],
)
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
  result = run_module(
      'lgnet_jax.main', *TINY, f'--workdir={tmp_path}', '--num_processes=2', '--process_id=1'
  )
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'coordinator address' in errors[0]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'checkpoints').exists()


# ------------------------------------------------------------------------------------------
# Training, failures, evaluation and inference over several processes.

# Checkpoints every 2 steps; the survivor of a killed process exits within this timeout.
RUN_ARGS = (
    *TINY,
    '--config.train.checkpoint_every_steps=2',
    f'--config.distributed.heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S}',
    '--config.train.num_train_steps=1000',
)


@dataclasses.dataclass
class KilledRun:
  """The shared 2-process run: its workdir (checkpoint 2 complete), logs, the survivor."""

  workdir: pathlib.Path
  logs: list[str]
  survivor_code: int | None  # None: it did not exit
  survivor_seconds: float  # from the kill to the survivor's exit


@pytest.fixture(scope='session')
def killed_run(tmp_path_factory) -> KilledRun:
  """2 processes x 2 devices train until checkpoint 2 is committed; then process 1 is killed."""

  def build(folder: pathlib.Path) -> None:
    workdir = folder / 'workdir'
    started = launch(workdir, *RUN_ARGS, f'--workdir={workdir}')
    wait_for_checkpoint(workdir, 2, started)
    started[1][0].kill()
    killed_at = time.time()
    try:
      code = started[0][0].wait(timeout=SURVIVOR_EXIT_S)
    except subprocess.TimeoutExpired:
      code = None  # still running: test_killed_process_stops_the_other fails
    started[0][0].kill()
    started[0][0].wait()
    seconds = time.time() - killed_at
    (folder / 'survivor.json').write_text(json.dumps({'code': code, 'seconds': seconds}))
    for index, (_, log) in enumerate(started):
      shutil.copy(log, folder / f'process{index}.log')

  folder = shared_folder(tmp_path_factory, 'killed_run', build)
  survivor = json.loads((folder / 'survivor.json').read_text())
  return KilledRun(
      folder / 'workdir',
      [(folder / f'process{i}.log').read_text() for i in range(2)],
      survivor['code'],
      survivor['seconds'],
  )


def copy_workdir(run: KilledRun, tmp_path: pathlib.Path) -> pathlib.Path:
  workdir = tmp_path / 'workdir'
  shutil.copytree(run.workdir, workdir)
  return workdir


def test_two_processes_train_as_one_process_with_one_device(killed_run, fast_compile):
  config = tiny_config(*TINY)
  one, _ = train_in_process(config, jax.devices()[:1], pipeline_batches(config, 2))
  trained = workdir_lib.restore_state(killed_run.workdir, step=2)
  difference, where = max_difference(one, trained)
  assert difference < 1e-5, (difference, where)
  # Every network moved far more than the tolerance, so a wrong shard or statistic would show.
  fresh = jax.jit(functools.partial(train_state_lib.create_train_state, config))(
      jax.random.PRNGKey(config.seed)
  )
  assert max_difference(fresh.g_params, trained.g_params)[0] > 1e-3
  assert max_difference(fresh.d_params, trained.d_params)[0] > 1e-3

  # Each process read its own half of each global batch; only process 0 wrote summaries.
  first, second = killed_run.logs
  assert 'process 0 reads 2' in first and 'process 1 reads 2' in second
  assert 'train/total_g' in first and 'train/total_g' not in second
  assert len(list(killed_run.workdir.glob('events.out.tfevents.*'))) == 1
  data = killed_run.workdir / 'checkpoints' / '2' / 'data'
  assert sorted(p.name for p in data.glob('process_*')) == [
      'process_0-of-2.json',
      'process_1-of-2.json',
  ]


def test_killed_process_stops_the_other(killed_run):
  """The survivor exits with an error (within SURVIVOR_EXIT_S) instead of waiting forever."""
  assert killed_run.survivor_code not in (None, 0), (
      f'after {killed_run.survivor_seconds:.0f} s: ' + killed_run.logs[0][-3000:]
  )


def test_relaunch_resumes_and_sigterm_stops_all_at_one_step(killed_run, tmp_path):
  """The relaunch resumes from the last complete checkpoint. Then a SIGTERM to one process (a
  preemption notice) stops both after the same step, saved, with exit status 0."""
  workdir = copy_workdir(killed_run, tmp_path)
  last = workdir_lib.checkpoint_manager(workdir, read_only=True).latest_step()
  assert last >= 2
  started = launch(workdir, *RUN_ARGS, f'--workdir={workdir}')
  wait_for_checkpoint(workdir, last + 2 - last % 2, started)
  started[1][0].send_signal(signal.SIGTERM)
  assert wait_all(started, timeout=600) == [0, 0], logs(started)
  first = started[0][1].read_text()
  assert re.search(rf'resumed from .* at step {last}\b', first), logs(started)
  stops = [re.findall(r'stopped by signal 15 at step (\d+)', log.read_text()) for _, log in started]
  assert stops[0] and stops[0] == stops[1], logs(started)
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).latest_step() == int(stops[0][0])


def test_one_process_continues_and_evaluates_as_two(killed_run, tmp_path, fast_compile):
  workdir = copy_workdir(killed_run, tmp_path)
  last = workdir_lib.checkpoint_manager(workdir, read_only=True).latest_step()
  # One process with one device continues the 2-process run from its checkpoint.
  with absl_messages() as lines:
    train.train_and_evaluate(
        tiny_config(*TINY, f'--config.train.num_train_steps={last + 1}'),
        str(workdir),
        devices=jax.devices()[:1],
    )
  messages = '\n'.join(lines)
  assert re.search(
      rf'resumed from .* at step {last} \(written by another number of processes: the '
      rf'input continues at global batch {last}\)',
      messages,
  ), messages[-3000:]
  assert workdir_lib.checkpoint_manager(workdir, read_only=True).latest_step() == last + 1

  # Evaluation over 2 processes gives the table that this process (8 devices) gives.
  eval_args = [
      '--config.eval.batch_size=8',
      '--config.eval.num_samples=1',
      '--config.data.test_masks_per_bucket=1',
  ]
  run_processes(workdir, *TINY, *eval_args, '--mode=eval', f'--workdir={workdir}')
  results = workdir / 'eval' / f'step_{last + 1}' / 'results.json'
  table_two = json.loads(results.read_text())['table']
  table_one = evaluate.evaluate(
      tiny_config(*TINY, *eval_args), str(workdir), devices=jax.devices()[:1]
  )
  assert table_two.keys() == table_one.keys()
  for bucket in table_one:
    for metric, value in table_one[bucket].items():
      assert table_two[bucket][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (bucket, metric)


def test_inpaint_folder_over_two_processes(tmp_path, official_workdir, capsys):
  images, masks, out = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  write_random_images(images, 5)
  masks.mkdir()
  for i in range(5):
    mask = np.zeros((256, 256), np.uint8)
    mask[64:128, 32 * i : 32 * i + 64] = 255
    Image.fromarray(mask).save(masks / f'{i}.png')
  logs_ = run_processes(
      out,
      '--workdir',
      str(official_workdir),
      '--image-dir',
      str(images),
      '--mask-dir',
      str(masks),
      '--output-dir',
      str(out),
      '--batch-size',
      '2',
      module='lgnet_jax.inpaint',
      devices=1,
  )
  assert sorted(p.name for p in out.iterdir()) == [f'{i}.png' for i in range(5)]
  assert 'wrote 3 images' in logs_[0].read_text() and 'wrote 2 images' in logs_[1].read_text()
  single = tmp_path / 'single'
  result = run_cli_in_process(
      capsys,
      inpaint,
      '--workdir',
      official_workdir,
      '--image-dir',
      images,
      '--mask-dir',
      masks,
      '--output-dir',
      single,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  for i in range(5):
    a = np.asarray(Image.open(out / f'{i}.png'), np.int16)
    b = np.asarray(Image.open(single / f'{i}.png'), np.int16)
    assert np.abs(a - b).max() <= 1, i  # batch size 2 vs 8: float rounding may move a level
