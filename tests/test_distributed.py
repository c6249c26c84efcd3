"""Multi-process runs on this machine: processes with fake CPU devices joined by gloo.

One run of 2 processes (2 fake devices each; see distributed_driver.py for what each process
does) is shared by the tests below: it trains to checkpoint 2, which matches what one process
with one device trains on the same global batches; resumes, and a SIGTERM to one process
stops both at the same step; evaluates and inpaints over both processes, giving what one
process gives; and when one process is killed, the other exits within the heartbeat timeout.
One process with one device then continues the run.
"""

import atexit
import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

import distributed_driver
import environment
from lgnet_jax.runtime import distributed
from lgnet_jax.evaluation import evaluate
from lgnet_jax.serving import inpaint
from lgnet_jax.training import loop
from lgnet_jax import workdir as workdir_lib
from helpers import (
    FAST_COMPILE,
    REPO_ROOT,
    absl_messages,
    run_cli_in_process,
    run_main_in_process,
    shared_folder,
    subprocess_env,
    tiny_config,
    write_random_images,
)

# Every test here reads the one real two-process run (about 2 minutes on 2 cores).
pytestmark = pytest.mark.slow

# How long the survivor of a killed process may take to exit: the heartbeat timeout, then the
# runtime's shutdown (config.distributed.shutdown_timeout_s, 60 s) and the exit itself, with
# room for a loaded 2-core host. It catches a survivor that hangs, not a slow one.
SURVIVOR_EXIT_S = distributed_driver.HEARTBEAT_TIMEOUT_S + 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(folder: pathlib.Path, *args: str, processes: int = 2, devices: int = 2) -> list:
  """Starts `processes` copies of distributed_driver on localhost; (process, log file) pairs."""
  port = free_port()
  env = subprocess_env(
      **FAST_COMPILE,
      XLA_FLAGS=f'{environment.XLA_FLAGS} --xla_force_host_platform_device_count={devices}',
      PYTHONUNBUFFERED='1',
  )
  started = []
  for index in range(processes):
    log = folder / f'process{index}.log'
    command = [
        sys.executable,
        '-m',
        'distributed_driver',
        *args,
        f'--coordinator-address=localhost:{port}',
        f'--num-processes={processes}',
        f'--process-id={index}',
    ]
    with log.open('w') as out:
      process = subprocess.Popen(
          command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
      )
    started.append((process, log))
  return started


def logs(started) -> str:
  return '\n'.join(f'--- {log.name}\n' + log.read_text()[-3000:] for _, log in started)


def wait_until(done, started, what: str, timeout: float = 900) -> None:
  """Until `done()`, failing with the logs if a process ends or `timeout` passes first."""
  deadline = time.time() + timeout
  while not done():
    assert all(p.poll() is None for p, _ in started), f'{what}:\n{logs(started)}'
    assert time.time() < deadline, f'{what} (timed out):\n{logs(started)}'
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


def test_main_reports_bad_settings_in_one_line(tmp_path, capsys):
  result = run_main_in_process(
      capsys, tmp_path, f'--workdir={tmp_path}', '--num-processes=2', '--process-id=1'
  )
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'coordinator address' in errors[0]
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'checkpoints').exists()


# ------------------------------------------------------------------------------------------
# The run of 2 processes: training, a signal, evaluation, inference, a killed process.


@dataclasses.dataclass
class MultiProcessRun:
  """The shared run: its workdir, test images, inpainting folders, logs, and the file where
  the survivor's exit is recorded once it has exited (see `watch_survivor`)."""

  workdir: pathlib.Path
  test_dir: pathlib.Path
  images: pathlib.Path
  masks: pathlib.Path
  inpainted: pathlib.Path
  logs: list[str]
  survivor_file: pathlib.Path


def watch_survivor(process: subprocess.Popen, record: pathlib.Path) -> None:
  """Waits, in a thread, for the process left after the other was killed, and writes its exit
  code (None: still running after SURVIVOR_EXIT_S, then killed) and the seconds it took to
  `record`: the heartbeat timeout passes while this worker runs other tests."""
  killed_at = time.time()

  def wait() -> None:
    try:
      code = process.wait(timeout=SURVIVOR_EXIT_S)
    except subprocess.TimeoutExpired:
      code = None
      process.kill()
      process.wait()
    partial = record.with_suffix('.partial')
    partial.write_text(json.dumps({'code': code, 'seconds': time.time() - killed_at}))
    partial.rename(record)

  atexit.register(process.kill)  # a session that ends first leaves no process behind
  threading.Thread(target=wait, name='survivor', daemon=True).start()


def write_inpainting_inputs(images: pathlib.Path, masks: pathlib.Path) -> None:
  """5 random photos and a hole in each."""
  write_random_images(images, 5)
  masks.mkdir()
  for i in range(5):
    mask = np.zeros((256, 256), np.uint8)
    mask[64:128, 32 * i : 32 * i + 64] = 255
    Image.fromarray(mask).save(masks / f'{i}.png')


@pytest.fixture(scope='session')
def two_process_run(tmp_path_factory) -> MultiProcessRun:
  """distributed_driver in 2 processes x 2 devices: SIGTERM to process 1 once the resumed
  training has written checkpoint 4, then, when both are done, process 1 killed."""

  def build(folder: pathlib.Path) -> None:
    workdir, images, masks = folder / 'workdir', folder / 'images', folder / 'masks'
    write_inpainting_inputs(images, masks)
    write_random_images(folder / 'test', 4, seed=2)
    started = launch(
        folder,
        f'--workdir={workdir}',
        f'--test-dir={folder / "test"}',
        f'--inpaint-workdir={workdir}',  # the networks it trained (one stage: cheap to compile)
        f'--image-dir={images}',
        f'--mask-dir={masks}',
        f'--output-dir={folder / "inpainted"}',
    )
    try:
      committed = workdir / 'checkpoints' / '4' / 'commit_success.txt'
      wait_until(committed.is_file, started, 'checkpoint 4 of the resumed training')
      started[1][0].send_signal(signal.SIGTERM)
      wait_until(
          lambda: all(distributed_driver.READY in log.read_text() for _, log in started),
          started,
          'training, evaluation and inference',
      )
      started[1][0].kill()
      started[1][0].wait()
    except BaseException:
      for process, _ in started:
        process.kill()
        process.wait()
      raise
    watch_survivor(started[0][0], survivor_file)

  survivor_file = tmp_path_factory.getbasetemp().parent / 'two_process_survivor.json'
  if not os.environ.get('PYTEST_XDIST_WORKER'):
    survivor_file = tmp_path_factory.getbasetemp() / 'two_process_survivor.json'
  folder = shared_folder(tmp_path_factory, 'two_process_run', build)
  return MultiProcessRun(
      folder / 'workdir',
      folder / 'test',
      folder / 'images',
      folder / 'masks',
      folder / 'inpainted',
      [(folder / f'process{i}.log').read_text() for i in range(2)],
      survivor_file,
  )


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_one_device(two_process_run, one_device_reference):
  trained = workdir_lib.restore_state(two_process_run.workdir, step=2)
  one = one_device_reference.state_like(trained)
  difference, where = max_difference(one, trained)
  assert difference < 1e-5, (difference, where)
  # Every network moved far more than the tolerance, so a wrong shard or statistic would show.
  fresh = one_device_reference.state_like(trained, 'initial')
  assert max_difference(fresh.g_params, trained.g_params)[0] > 1e-3
  assert max_difference(fresh.d_params, trained.d_params)[0] > 1e-3

  # Each process read its own half of each global batch; only process 0 wrote summaries (one
  # events file per training, named with its process id).
  first, second = two_process_run.logs
  assert 'process 0 reads 2' in first and 'process 1 reads 2' in second
  assert 'train/total_g' in first and 'train/total_g' not in second
  pid = re.search(r'^pid (\d+)$', first, re.MULTILINE).group(1)
  events = list(two_process_run.workdir.glob('events.out.tfevents.*'))
  assert len(events) == 2 and all(f'.{pid}.' in path.name for path in events), events
  data = two_process_run.workdir / 'checkpoints' / '2' / 'data'
  assert sorted(p.name for p in data.glob('process_*')) == [
      'process_0-of-2.json',
      'process_1-of-2.json',
  ]


def stop_step(log: str) -> int:
  (step,) = re.findall(r'stopped by signal 15 at step (\d+)', log)
  return int(step)


def test_a_resumed_run_stops_every_process_at_one_step_on_sigterm(two_process_run):
  """The second training resumes from checkpoint 2 in both processes; a SIGTERM to one
  process (a preemption notice) stops both after the same step, saved, and training returns
  normally (the program then exits 0)."""
  for log in two_process_run.logs:
    assert re.search(r'resumed from .* at step 2$', log, re.MULTILINE), log[-3000:]
  first, second = (stop_step(log) for log in two_process_run.logs)
  assert first == second >= 4
  for log in two_process_run.logs:
    assert f'training returned at step {first}' in log
  steps = workdir_lib.checkpoint_manager(two_process_run.workdir, read_only=True).all_steps()
  assert steps[-1] == first and 2 in steps and 4 in steps


def test_one_process_evaluates_as_two_and_continues(two_process_run, tmp_path, plain_compile):
  workdir = tmp_path / 'workdir'
  shutil.copytree(two_process_run.workdir, workdir)
  last = stop_step(two_process_run.logs[0])
  # Evaluation over 2 processes gave the table that this process (1 device) gives.
  table_two = json.loads((workdir / 'eval' / f'step_{last}' / 'results.json').read_text())['table']
  eval_config = tiny_config(
      *distributed_driver.TRAIN_ARGS, *distributed_driver.eval_args(two_process_run.test_dir)
  )
  table_one = evaluate.evaluate(eval_config, str(workdir), devices=jax.devices()[:1])
  assert table_two.keys() == table_one.keys()
  for bucket in table_one:
    for metric, value in table_one[bucket].items():
      assert table_two[bucket][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (bucket, metric)

  # One process with one device continues the 2-process run from its checkpoint.
  with absl_messages() as lines:
    loop.train_and_evaluate(
        tiny_config(*distributed_driver.TRAIN_ARGS, f'--config.train.num_train_steps={last + 1}'),
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


def test_inpaint_folder_over_two_processes(two_process_run, tmp_path, capsys, plain_compile):
  out = two_process_run.inpainted
  assert sorted(p.name for p in out.iterdir()) == [f'{i}.png' for i in range(5)]
  first, second = two_process_run.logs
  assert 'wrote 3 images' in first and 'wrote 2 images' in second
  single = tmp_path / 'single'
  result = run_cli_in_process(
      capsys,
      inpaint,
      '--workdir',
      two_process_run.workdir,
      '--image-dir',
      two_process_run.images,
      '--mask-dir',
      two_process_run.masks,
      '--output-dir',
      single,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  for i in range(5):
    a = np.asarray(Image.open(out / f'{i}.png'), np.int16)
    b = np.asarray(Image.open(single / f'{i}.png'), np.int16)
    assert np.abs(a - b).max() <= 1, i  # batch size 2 vs 8: float rounding may move a level


# Last in the module: the survivor's heartbeat timeout passes while the tests above run.
def test_a_killed_process_stops_the_other(two_process_run):
  """The survivor exits with an error (within SURVIVOR_EXIT_S) instead of waiting forever."""
  deadline = time.time() + SURVIVOR_EXIT_S + 60
  while not two_process_run.survivor_file.is_file():
    assert time.time() < deadline, 'the survivor was not watched'
    time.sleep(0.5)
  survivor = json.loads(two_process_run.survivor_file.read_text())
  log = (two_process_run.workdir.parent / 'process0.log').read_text()
  assert survivor['code'] not in (None, 0), f'after {survivor["seconds"]:.0f} s: ' + log[-3000:]
