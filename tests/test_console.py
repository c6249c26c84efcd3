"""The console a person reads, and the permissions of the files the project writes."""

import contextlib
import importlib
import logging
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
from absl import logging as absl_logging

import lgnet_jax
from helpers import (
    FAST_COMPILE,
    FIXTURES,
    REPO_ROOT,
    TINY_ARGS,
    run_main_in_process,
    subprocess_env,
    run_python,
)
from lgnet_jax import console, fileio
from lgnet_jax.data import image_io
from lgnet_jax.training import samples
from lgnet_jax.training.progress import ConsoleProgress, format_duration
from lgnet_jax import workdir as workdir_lib

PROGRESS_LINE = re.compile(
    r'\d\d:\d\d:\d\d \[(\d+)\] \d+\.\d\d img/s, ETA \w+, '
    r'train/total_g=\d+\.\d{4}, train/l1_hole_1=\d+\.\d{4}'
)
# What orbax, clu and JAX log at INFO (absl's prefix: level letter, date, time, thread, file).
LIBRARY_INFO = re.compile(r'^I\d{4} |checkpoint_manager\.py|Setting work unit|Unable to initialize')


@contextlib.contextmanager
def umask(mask: int):
  previous = os.umask(mask)
  try:
    yield
  finally:
    os.umask(previous)


def mode(path: pathlib.Path) -> int:
  return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize('mask', [0o022, 0o027, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
  config = workdir_lib.load_config_file(workdir_lib.DEFAULT_CONFIG_FILE)
  with umask(mask):
    workdir_lib.save_config(tmp_path, config)
    workdir_lib.atomic_write_text(tmp_path / 'tables' / 'results.md', '| metric |\n')
    image_io.save_image_atomic(tmp_path / 'image.png', np.zeros((4, 4, 3), np.uint8))
  for name in ('config.json', 'tables/results.md', 'image.png'):
    assert mode(tmp_path / name) == 0o666 & ~mask, name
  assert not list(tmp_path.rglob('*.tmp'))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / 'config.json'
  fileio.atomic_write_text(path, 'old')

  def write(f):
    f.write(b'half')
    raise RuntimeError('interrupted')

  with pytest.raises(RuntimeError):
    fileio.atomic_write(path, write)
  assert path.read_text() == 'old'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json']


def test_format_duration():
  assert [format_duration(s) for s in (0, 42.4, 60, 425, 3599, 3600, 12000)] == [
      '0s',
      '42s',
      '1m00s',
      '7m05s',
      '59m59s',
      '1h00m',
      '3h20m',
  ]


def test_progress_line_fields():
  progress = ConsoleProgress(num_train_steps=100, batch_size=4)
  scalars = {
      'train/total_g': 8.123456,
      'train/l1_hole_1': 0.5,
      'train/l1_hole_3': 0.41,
      'train/l1_hole_2': 0.45,
      'train/skipped_images': 0,
      'train/gan_d': 0.3,
  }
  first = progress.line(1, scalars)  # the clock starts here: no rate yet
  assert first == '[1] - img/s, ETA -, train/total_g=8.1235, train/l1_hole_3=0.4100'
  line = progress.line(11, {**scalars, 'train/skipped_images': 2})
  assert re.fullmatch(
      r'\[11\] \d+\.\d\d img/s, ETA \w+, train/total_g=8\.1235, '
      r'train/l1_hole_3=0\.4100, train/skipped_images=2',
      line,
  ), line
  # A variant without stage 3 shows its last stage.
  assert progress.line(12, {'train/total_g': 1.0, 'train/l1_hole_1': 0.2}).endswith(
      'train/total_g=1.0000, train/l1_hole_1=0.2000'
  )


def _record(pathname: str, level: int) -> logging.LogRecord:
  return logging.LogRecord('absl', level, pathname, 1, 'message', None, None)


def test_console_filter_keeps_project_lines_and_everyones_warnings():
  keep = console.ProjectFilter().filter
  project_file = str(pathlib.Path(console.__file__).with_name('train.py'))
  library_file = str(pathlib.Path(logging.__file__))
  assert keep(_record(project_file, logging.INFO))
  assert not keep(_record(library_file, logging.INFO))
  assert not keep(_record(library_file, logging.DEBUG))
  assert keep(_record(library_file, logging.WARNING))
  assert keep(_record(library_file, logging.ERROR))
  formatted = console.ConsoleFormatter().format(_record(library_file, logging.WARNING))
  assert re.fullmatch(r'\d\d:\d\d:\d\d WARNING: message', formatted), formatted


def test_configure_adds_one_filter_and_verbosity_removes_it():
  handler = absl_logging.get_absl_handler()
  try:
    console.configure(0)
    console.configure(0)
    assert sum(isinstance(f, console.ProjectFilter) for f in handler.filters) == 1
    assert isinstance(handler.python_handler.formatter, console.ConsoleFormatter)
    console.configure(1)
    assert not [f for f in handler.filters if isinstance(f, console.ProjectFilter)]
    assert isinstance(handler.python_handler.formatter, absl_logging.PythonFormatter)
  finally:
    console.configure(1)  # absl's own set-up for the rest of the session


@pytest.mark.slow
def test_training_console_one_line_per_interval_and_umask_files(straight_run):
  """conftest's straight run: 6 steps, a line every 2, under umask 027."""
  lines = straight_run.console.splitlines()
  progress = [PROGRESS_LINE.fullmatch(line) for line in lines]
  assert [int(m.group(1)) for m in progress if m] == [2, 4, 6], lines
  assert not [line for line in lines if LIBRARY_INFO.search(line)], lines
  # Every line: data, steps, 3 progress lines, 2 evaluations (one line each), finished (the
  # devices line is lgnet_jax.main's, see test_a_real_run_...).
  python_lines = [line for line in lines if re.match(r'\d\d:\d\d:\d\d ', line)]
  assert python_lines == lines and len(python_lines) == 8, lines
  assert [line.split()[1] for line in python_lines if 'evaluation on 2 test images' in line] == [
      '[3]',
      '[6]',
  ], lines
  assert 'finished 6 steps' in python_lines[-1]
  for name in ('config.json', samples.SAMPLES_FILE):
    assert mode(straight_run.workdir / name) == 0o640, name


def test_verbosity_brings_library_logs_back_and_errors_stay_one_line(tmp_path, capsys):
  # Missing VGG16 weights: fails after the checkpoint manager is made, before anything compiles.
  args = [
      '--config.train.batch_size=8',  # the session's 8 devices
      '--config.loss.lambda_perceptual=0.05',
      '--config.loss.vgg_random_init=False',
  ]
  quiet = run_main_in_process(capsys, tmp_path, *args, f'--workdir={tmp_path / "quiet"}')
  verbose = run_main_in_process(
      capsys, tmp_path, *args, f'--workdir={tmp_path / "verbose"}', '--verbosity=1'
  )
  for result in (quiet, verbose):
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    (error,) = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
    assert 'vgg16-397923af.pth' in error and '--config.loss.vgg_weights' in error, error
  assert not [l for l in quiet.stderr.splitlines() if LIBRARY_INFO.search(l)], quiet.stderr
  assert 'ERROR' not in quiet.stderr  # the error once, not again as a log line
  assert 'checkpoint_manager.py' in verbose.stderr


def test_the_package_quiets_tensorflow_before_anything_imports_it(monkeypatch):
  """Importing lgnet_jax (every command's first import) sets TensorFlow's console defaults:
  C++ INFO lines off, and oneDNN custom operations off (their 'oneDNN custom operations are
  on' line ignores TF_CPP_MIN_LOG_LEVEL). A value the user set is kept."""
  for name in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS'):
    monkeypatch.delenv(name, raising=False)
  importlib.reload(lgnet_jax)
  assert (os.environ['TF_CPP_MIN_LOG_LEVEL'], os.environ['TF_ENABLE_ONEDNN_OPTS']) == ('1', '0')
  monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '1')
  importlib.reload(lgnet_jax)
  assert os.environ['TF_ENABLE_ONEDNN_OPTS'] == '1'


def test_the_program_imports_tensorflow_only_to_write_summaries():
  """clu's summary writers import TensorFlow; the program imports them when it writes."""
  code = (
      'import sys, lgnet_jax.main; '
      'print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))'
  )
  result = run_python(code, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]', result.stdout


@pytest.mark.slow
def test_sigterm_to_a_real_run_saves_and_exits_0_with_a_quiet_console(tmp_path):
  """The program in a process of its own, as a user starts it, TensorFlow's settings left to
  it, resuming the tiny fixture workdir (no state to initialise): SIGTERM once a step has run
  finishes the step, saves it and exits 0; the console holds the program's lines only (no
  TensorFlow line, no library INFO line, no traceback)."""
  workdir = tmp_path / 'workdir'
  shutil.copytree(FIXTURES / 'workdir_v0_1', workdir)  # checkpoint 2
  env = subprocess_env(**FAST_COMPILE)
  for name in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS'):
    env.pop(name, None)
  process = subprocess.Popen(
      [
          sys.executable,
          '-m',
          'lgnet_jax.main',
          *TINY_ARGS,
          f'--workdir={workdir}',
          '--config.train.num_train_steps=1000',
      ],
      cwd=REPO_ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  lines = []
  for line in process.stdout:
    lines.append(line.rstrip('\n'))
    if PROGRESS_LINE.search(line):  # a step has run: start-up is over
      process.send_signal(signal.SIGTERM)
      break
  lines.extend(line.rstrip('\n') for line in process.stdout)
  assert process.wait(timeout=300) == 0, '\n'.join(lines[-30:])
  stops = [m for m in map(re.compile(r'stopped by signal 15 at step (\d+); ').search, lines) if m]
  assert len(stops) == 1, lines
  steps = workdir_lib.checkpoint_manager(workdir, read_only=True).all_steps()
  assert steps == [2, int(stops[0].group(1))], (steps, lines)
  assert any('JAX process 0 / 1' in line for line in lines), lines
  noise = [l for l in lines if LIBRARY_INFO.search(l) or 'oneDNN' in l or 'Traceback' in l]
  assert not noise, lines
