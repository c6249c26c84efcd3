"""The console a person reads, and the permissions of the files the project writes."""

import contextlib
import logging
import os
import pathlib
import re
import stat

import numpy as np
import pytest
from absl import logging as absl_logging

from helpers import TINY_ARGS, run_module
from lgnet_jax import console, fileio
from lgnet_jax.data import image_io
from lgnet_jax.training import loop as train
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
  assert [train.format_duration(s) for s in (0, 42.4, 60, 425, 3599, 3600, 12000)] == [
      '0s',
      '42s',
      '1m00s',
      '7m05s',
      '59m59s',
      '1h00m',
      '3h20m',
  ]


def test_progress_line_fields():
  progress = train.ConsoleProgress(num_train_steps=100, batch_size=4)
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


def test_training_console_one_line_per_interval_and_umask_files(straight_run):
  """conftest's straight run: 6 steps, a line every 2, under umask 027."""
  lines = (straight_run.stdout + straight_run.stderr).splitlines()
  progress = [PROGRESS_LINE.fullmatch(line) for line in lines]
  assert [int(m.group(1)) for m in progress if m] == [2, 4, 6], lines
  assert not [line for line in lines if LIBRARY_INFO.search(line)], lines
  # Every Python log line: devices, data, steps, 3 progress lines, 2 evaluations (one line
  # each), finished. (XLA's C++ "Very slow compile?" alarm, which a busy machine can add, is
  # not one of them.)
  python_lines = [line for line in lines if re.match(r'\d\d:\d\d:\d\d ', line)]
  assert len(python_lines) == 9, lines
  assert [line.split()[1] for line in python_lines if 'evaluation on 2 test images' in line] == [
      '[3]',
      '[6]',
  ], lines
  assert 'finished 6 steps' in python_lines[-1]
  for name in ('config.json', train.SAMPLES_FILE):
    assert mode(straight_run.workdir / name) == 0o640, name


def test_verbosity_brings_library_logs_back_and_errors_stay_one_line(tmp_path):
  # Missing VGG16 weights: fails after the checkpoint manager is made, before anything compiles.
  args = [*TINY_ARGS, '--config.loss.lambda_perceptual=0.05', '--config.loss.vgg_random_init=False']
  quiet = run_module('lgnet_jax.main', *args, f'--workdir={tmp_path / "quiet"}')
  verbose = run_module(
      'lgnet_jax.main', *args, f'--workdir={tmp_path / "verbose"}', '--verbosity=1'
  )
  for result in (quiet, verbose):
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    (error,) = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
    assert 'vgg16-397923af.pth' in error and '--config.loss.vgg_weights' in error, error
  assert not [l for l in quiet.stderr.splitlines() if LIBRARY_INFO.search(l)], quiet.stderr
  assert 'ERROR' not in quiet.stderr  # the error once, not again as a log line
  assert 'checkpoint_manager.py' in verbose.stderr
