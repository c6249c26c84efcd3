"""The benchmarks on a tiny model (ngf 4, 256x256, CPU, batch 2 or 1).

One real `python -m lgnet_jax.bench` run (the entry point's set-up: global flags, glibc's
malloc settings, logging); the others run the command line in this process on flags of their
own. The image size stays 256: the U-Net down-samples eight times.
"""

import json
import subprocess

import pytest
from absl import flags

from helpers import (FAST_COMPILE, CliResult, assert_usage_error, run_module, run_python)
from lgnet_jax import cli
from lgnet_jax.bench import main as bench_main

TINY = (
    '--config=configs/demo.py',
    '--config.model.ngf=4',
    '--config.model.ngf_local=4',
    '--config.model.ndf=8',
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
    'host',
}


def run_bench(capsys: pytest.CaptureFixture, *args: str) -> CliResult:
  """`python -m lgnet_jax.bench ARGS` in this process, its flags defined on flags of their own
  (the entry point defines them on absl's process-wide flags)."""
  argv = ['bench', *args]
  flag_values = flags.FlagValues()
  bench_main.define_flags(argv, flag_values)
  capsys.readouterr()

  def command():
    bench_main.main(cli.parse_absl_flags(argv, flag_values), flag_values)

  try:
    cli.run_cli(command)
    code = 0
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return CliResult(code, out, err)


def json_lines(result: CliResult | subprocess.CompletedProcess) -> list[dict]:
  assert result.returncode == 0, result.stderr[-3000:]
  return [json.loads(line) for line in result.stdout.splitlines()]


def check_device_record(record: dict, what: str, steps: int) -> None:
  assert DEVICE_KEYS <= set(record)
  assert record['what'] == what and record['batch_size'] == 2 and record['devices'] == 1
  assert record['backend'] == 'cpu' and record['peak_bytes'] is None  # CPU reports no memory stats
  assert record['config'] == 'demo' and record['dtype'] == 'float32'
  assert record['image_size'] == 256 and record['ngf'] == 4 and record['ndf'] == 8
  assert record['steps'] == steps
  assert record['compile_s'] > 0 and 0 < record['step_s_min'] <= record['step_s_median']
  assert record['images_per_s'] == pytest.approx(2 / record['step_s_median'], rel=1e-3)
  assert record['flops_per_image'] > 1e8
  # The floor: the direct-convolution arithmetic of the batch at this device's matmul rate.
  assert record['matmul_gflops'] > 0 and record['reference_flops_per_image'] > 1e8
  floor_s = record['reference_flops_per_image'] * 2 / (record['matmul_gflops'] * 1e9)
  assert record['floor_s'] == pytest.approx(floor_s, rel=1e-3)
  assert record['floor_fraction'] == pytest.approx(
      record['floor_s'] / record['step_s_median'], rel=1e-3
  )


@pytest.mark.slow
def test_train_as_a_process_prints_one_json_line():
  """The training step of the first stage alone (the loop tests' configuration), in a process
  with one device, the bundled config named, the flags spelled with dashes."""
  result = run_module(
      'lgnet_jax.bench',
      '--what=train',
      '--config=demo',
      *TINY[1:],
      '--config.model.variant=C',
      '--batch-size=2',
      '--steps=2',
      '--warmup=1',
      '--json',
      env=FAST_COMPILE,
  )
  (record,) = json_lines(result)  # nothing else on stdout
  check_device_record(record, 'train', steps=2)
  assert record['variant'] == 'C'
  assert record['freed_memory_kept'] is True  # the entry point set glibc's malloc (host_memory)
  assert 'last step:' in result.stderr  # the loss terms of the last timed step are logged


@pytest.mark.slow
def test_infer_prints_one_json_line(capsys, plain_compile):
  result = run_bench(
      capsys,
      '--what=infer',
      *TINY,
      '--config.model.variant=lgnet',
      '--batch_size=2',  # the underscore spelling is an alias
      '--steps=2',
      '--warmup=1',
      '--json',
  )
  (record,) = json_lines(result)
  check_device_record(record, 'infer', steps=2)
  assert record['variant'] == 'lgnet' and record['ngf_local'] == 4


@pytest.mark.slow
def test_stages_print_every_component(capsys, plain_compile):
  # The coarse and the attention U-Net (the ablation 'C+G_att', whose G2 is LGNet's G3) at
  # batch 1 keep this run short; the demo's step runs no VGG16, so none is timed.
  result = run_bench(
      capsys,
      '--what=stages',
      *TINY,
      '--config.model.variant=C+G_att',
      '--batch-size=1',
      '--steps=1',
      '--warmup=0',
  )
  records = json_lines(result)
  assert [r['component'] for r in records] == ['G1', 'G2', 'attention', 'D']
  by_name = {r['component']: r for r in records}
  for record in records:
    assert record['forward_ms'] > 0 and record['forward_backward_ms'] > 0, record
    assert 0 < record['flops_forward'] < record['flops_forward_backward'], record
    assert record['config'] == 'demo' and record['batch'] == 1
  assert by_name['G1']['inputs'] == [[1, 256, 256, 4]] and by_name['D']['calls_per_step'] == 3
  # The attention runs after the 16x16, 32x32 and 64x64 up steps, on 8, 4 and 2 ngf channels.
  assert by_name['attention']['inputs'] == [[1, 16, 16, 32], [1, 32, 32, 16], [1, 64, 64, 8]]
  # The attention U-Net contains the attention.
  assert (
      by_name['G2']['flops_forward']
      > by_name['G1']['flops_forward'] + by_name['attention']['flops_forward'] * 0.9
  )


@pytest.mark.parametrize(
    'args, message',
    [
        # This process has 8 devices (conftest.py).
        (('--what=train', '--batch-size=3'), 'error: batch size 3 is not divisible by 8 devices'),
        (('--what=infer', '--steps=0'), '--steps'),
        (('--what=infer', 'extra'), 'unexpected arguments: extra'),
        (('--what=infer', '--config.model.bogus=1'), "model has no field 'bogus'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
  result = run_bench(capsys, *TINY, *args)
  assert_usage_error(result, message)
  assert result.stdout == ''


def test_a_failed_benchmark_is_one_line_and_exit_1(capsys):
  result = run_bench(capsys, '--what=infer', *TINY, '--config.model.variant=bogus')
  assert result.returncode == 1 and result.stdout == '' and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: the infer benchmark failed: ValueError: unknown model.variant 'bogus'; choose one "
      'of lgnet, lgnet_share, lgnet_light, C, C+L, C+G_att, C+G+G_att, C+L+G, C+L+G_att'
  )


def test_help_lists_the_benchmark_flags():
  flag_values = flags.FlagValues()
  bench_main.define_flags(['lgnet-bench', '--config=demo'], flag_values)
  text = flag_values.module_help('lgnet-bench')
  for name in ('what', 'config', 'batch_size', 'profile_dir', '[no]json', 'num_workers'):
    assert f'--{name}:' in text


def test_device_benchmarks_import_no_data_stack():
  """The GPU hosts the benchmark runs on lack clu, TensorFlow, TFDS and grain."""
  code = (
      'import sys, lgnet_jax.bench.main; print([m for m in sys.modules if m.split(".")[0] in '
      '("clu", "tensorflow", "tensorflow_datasets", "grain")])'
  )
  result = run_python(code, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '[]'
