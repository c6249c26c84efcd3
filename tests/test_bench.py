"""Smoke tests of `python -m lgnet_jax.bench` on a tiny model (ngf 4, 256x256, batch 2, CPU).

Each run is a subprocess with one CPU device. The image size stays 256: the U-Net
down-samples eight times.
"""

import json
import subprocess
import sys

import pytest

from helpers import FAST_COMPILE, REPO_ROOT, run_module, subprocess_env

TINY = (
    '--config=configs/demo.py',
    '--config.model.ngf=4',
    '--config.model.ngf_local=4',
    '--config.model.ndf=8',
    '--batch-size=2',
)
DEVICE_KEYS = {
    'what',
    'batch_size',
    'devices',
    'backend',
    'compile_s',
    'step_s_median',
    'step_s_min',
    'images_per_s',
    'flops_per_image',
    'peak_bytes',
    'dtype',
    'config',
    'image_size',
    'ngf',
    'ndf',
    'freed_memory_kept',
}


def _json_lines(result: subprocess.CompletedProcess) -> list[dict]:
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.splitlines()]


# The training step on the first stage only (the loop tests' configuration); inference on all.
@pytest.mark.parametrize('what, steps, variant', [('train', 2, 'C'), ('infer', 2, 'lgnet')])
def test_train_and_infer_print_one_json_line(what, steps, variant):
  result = run_module(
      'lgnet_jax.bench',
      f'--what={what}',
      *TINY,
      f'--config.model.variant={variant}',
      f'--steps={steps}',
      '--warmup=1',
      '--json',
      env=FAST_COMPILE,
  )
  (record,) = _json_lines(result)  # nothing else on stdout
  assert DEVICE_KEYS <= set(record)
  assert record['what'] == what and record['batch_size'] == 2 and record['devices'] == 1
  assert record['backend'] == 'cpu' and record['peak_bytes'] is None  # CPU reports no memory stats
  assert record['config'] == 'demo' and record['dtype'] == 'float32'
  assert record['image_size'] == 256 and record['ngf'] == 4 and record['ndf'] == 8
  assert record['steps'] == steps
  assert record['freed_memory_kept'] is True  # the entry point set glibc's malloc (host_memory)
  assert record['compile_s'] > 0 and 0 < record['step_s_min'] <= record['step_s_median']
  assert record['images_per_s'] == pytest.approx(2 / record['step_s_median'], rel=1e-3)
  assert record['flops_per_image'] > 1e8
  if what == 'train':
    assert 'last step:' in result.stderr  # the loss terms of the last timed step are logged


def test_stages_print_every_component():
  # The coarse and the attention U-Net (the ablation 'C+G_att', whose G2 is LGNet's G3) at
  # batch 1 keep this run short; the demo's step runs no VGG16, so none is timed.
  result = run_module(
      'lgnet_jax.bench',
      '--what=stages',
      *TINY[:-1],
      '--config.model.variant=C+G_att',
      '--batch-size=1',
      '--steps=1',
      '--warmup=0',
      env=FAST_COMPILE,
  )
  records = _json_lines(result)
  assert [r['component'] for r in records] == ['G1', 'G2', 'attention', 'D']
  by_name = {r['component']: r for r in records}
  for record in records:
    assert record['forward_ms'] > 0 and record['forward_backward_ms'] > 0, record
    assert 0 < record['flops_forward'] < record['flops_forward_backward'], record
  assert by_name['G1']['inputs'] == [[1, 256, 256, 4]] and by_name['D']['calls_per_step'] == 3
  # The attention runs after the 16x16, 32x32 and 64x64 up steps, on 8, 4 and 2 ngf channels.
  assert by_name['attention']['inputs'] == [[1, 16, 16, 32], [1, 32, 32, 16], [1, 64, 64, 8]]
  # The attention U-Net contains the attention.
  assert (
      by_name['G2']['flops_forward']
      > by_name['G1']['flops_forward'] + by_name['attention']['flops_forward'] * 0.9
  )


def test_errors_are_one_line():
  result = run_module(
      'lgnet_jax.bench',
      '--what=train',
      *TINY[:-1],
      '--batch-size=3',
      env={'XLA_FLAGS': '--xla_force_host_platform_device_count=2'},
  )
  assert result.returncode == 2 and result.stdout == ''  # bad input
  assert result.stderr.strip().splitlines()[-1] == (
      'bench --what=train: error: BenchError: batch size 3 is not divisible by 2 devices'
  )
  assert 'Traceback' not in result.stderr
  result = run_module('lgnet_jax.bench', '--what=infer', '--config=configs/demo.py', '--steps=0')
  assert result.returncode != 0 and 'Traceback' not in result.stderr and '--steps' in result.stderr


def test_device_benchmarks_import_no_data_stack():
  """The GPU hosts the benchmark runs on lack clu, TensorFlow, TFDS and grain."""
  code = (
      'import sys, lgnet_jax.bench; print([m for m in sys.modules if m.split(".")[0] in '
      '("clu", "tensorflow", "tensorflow_datasets", "grain")])'
  )
  result = subprocess.run(
      [sys.executable, '-c', code],
      cwd=REPO_ROOT,
      env=subprocess_env(),
      capture_output=True,
      text=True,
      timeout=120,
      check=True,
  )
  assert result.stdout.strip() == '[]'
