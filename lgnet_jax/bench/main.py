"""Benchmarks of the input pipeline, the training step, inference and each network component.

  python -m lgnet_jax.bench --config=places2 --what=data|train|infer|stages|profile [--json]

--what=data    Input-pipeline throughput (images/s) of the training iterator with the config's
               preprocessing (bicubic resize, flips, mask-folder augmentation or brush strokes)
               on generated data: a temporary folder of random smooth JPEGs, half 256x256 (as
               places365_small) and half 683x512 (Places2's high-resolution size), and, unless
               the config names one, a folder of 512x512 free-form mask PNGs (as the NVIDIA
               irregular masks). Times --batches batches after --warmup batches (default 5)
               and prints one line (a JSON object with --json).
--what=train   The real data-parallel training step (`training.step.compile_train_step`) over
               every device, on random weights and random inputs (images in [-1, 1], binary
               masks with rectangular holes) of the config's image size and model widths; the
               global batch (--batch-size, default train.batch_size) is split over the 'data'
               axis. A randomly initialised VGG16 stands in for the ImageNet one (no file is
               read; none is used when the perceptual and style weights are both 0).
--what=infer   The evaluation-mode forward pass of every stage, jitted as `inference.Inpainter`
               runs it, on one device; --batch-size defaults to 1.
--what=stages  Per-component times at the config's size and --batch-size (default
               train.batch_size): each generator stage alone in training mode (BatchNorm batch
               statistics), forward and forward + backward w.r.t. its params; G3's three
               cosine-affinity attention read-outs alone, on the decoder maps they see (H/16,
               H/8 and H/4 with 8, 4 and 2 ngf channels), backward w.r.t. their input; VGG16 on
               the batch the losses give it (ground truth plus out and merged of every later
               stage), backward w.r.t. its input, when the perceptual or style weight is not 0
               (the step runs it only then); D, backward w.r.t. its params. One JSON line
               per component: component, forward_ms, forward_backward_ms (medians),
               flops_forward, flops_forward_backward, batch, input shapes and calls_per_step
               (how often the training step runs it).
--what=profile The training step as --what=train, traced with `jax.profiler` (--steps, default 1,
               after --warmup) into --profile-dir (default workdirs/profile: open it with
               `tensorboard --logdir` or load the .trace.json.gz in Perfetto); prints the time
               per network and pass, per class of work and the slowest XLA operations. On CPU
               it turns on XLA's per-operation trace events for this run.

train and infer compile ahead of time (`.lower(...).compile()`, timed as compile_s: tracing,
lowering and XLA compilation) and read XLA's cost analysis; then --steps calls after --warmup
calls (default 2) are timed one by one, each waiting for its result. flops_per_image is the
per-device program's flops times the devices over the global batch (replicated work such
as the optimizer update is counted once per device). peak_bytes is the first local device's
peak memory use where the backend reports it (GPU, TPU), else null; host names the machine
(CPU model and vector ISA, or the accelerator), since CPU figures differ between hosts.
They also carry the machine's floor (see `bench/floor.py`): matmul_gflops, the rate of a
jitted 4096x4096 matrix product in the run's dtype on one device; reference_flops_per_image,
the program's convolutions counted as direct convolutions and its matrix products as they are
(fixed by the network and batch, whatever algorithm runs them); floor_s, that arithmetic for
the batch at the matmul rate; floor_fraction = floor_s / step_s_median (1 = the step runs at
the speed of a large matrix product).

With --json the one result line is the only output on stdout; logs go to stderr. Flags are
spelled with dashes (--batch-size, --num-workers, --profile-dir); the underscore spelling is
accepted too. Bad input (flags, config, a batch the devices cannot split) is one `error:` line
and exit status 2; a benchmark that fails (no backend, out of memory) exits with status 1.
"""

import json
import os
import pathlib
import sys
from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from lgnet_jax import cli, errors
from lgnet_jax.bench import data, profiling, stages, steps
from lgnet_jax.runtime import host_memory

WHAT = ('data', 'train', 'infer', 'stages', 'profile')
DATA_WARMUP, DEVICE_WARMUP, DEVICE_STEPS = 5, 2, 10


def define_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the benchmark's flags on `flag_values`, as the flags `--help` lists for the program
  `argv[0]`; `argv` names the `--config.a.b` overrides.

  Called by `run` (not on import), so that another command's flags can live in the same process.
  """
  on = {'flag_values': flag_values}
  config_flags.DEFINE_config_file(
      'config', None, 'Config file or bundled config name.', sys_argv=list(argv), **on
  )
  flags.DEFINE_enum('what', 'data', WHAT, 'What to measure.', **on)
  flags.DEFINE_string('profile_dir', 'workdirs/profile', 'Where --what=profile writes.', **on)
  flags.DEFINE_integer(
      'num_workers', None, "grain worker processes (data; default: the config's).", **on
  )
  flags.DEFINE_integer('batches', 50, 'Batches timed (--what=data).', lower_bound=1, **on)
  flags.DEFINE_integer(
      'warmup',
      None,
      'Untimed batches (data; default 5) or calls (default 2) first.',
      **on,
      lower_bound=0,
  )
  flags.DEFINE_integer(
      'steps',
      None,
      'Calls timed (train, infer, stages: default 10; profile: 1).',
      **on,
      lower_bound=1,
  )
  flags.DEFINE_integer(
      'batch_size', None, 'Global batch (default: train.batch_size; infer: 1).', **on, lower_bound=1
  )
  flags.DEFINE_integer('images', 64, 'Generated images (--what=data).', lower_bound=1, **on)
  flags.DEFINE_enum(
      'masks',
      'folder',
      ['folder', 'procedural'],
      'Training masks when the config names no mask folder: generated mask files '
      '(augmented by masks.MaskFolder) or the brush-stroke generator.',
      **on,
  )
  flags.DEFINE_bool('json', False, 'Print the result as one JSON object.', **on)
  flags.mark_flags_as_required(['config'], **on)
  for flag in flag_values.get_flags_for_module(__name__):  # the program's own, for --help
    flag_values.register_key_flag_for_module(argv[0], flag)


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Runs the benchmark `flag_values` (parsed) ask for and prints its result."""
  if len(argv) > 1:
    raise cli.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  what, config = flag_values.what, flag_values.config
  if what == 'data':
    warmup = DATA_WARMUP if flag_values.warmup is None else flag_values.warmup
    result = data.throughput(
        config,
        flag_values.num_workers,
        flag_values.batches,
        warmup,
        flag_values.images,
        flag_values.masks,
    )
    _print([_named(result, flag_values)], flag_values.json, _data_line)
    return
  if what == 'profile':
    profiling.enable_cpu_op_events()  # before the backend starts
  _check_backend()
  warmup = DEVICE_WARMUP if flag_values.warmup is None else flag_values.warmup
  batch_size = flag_values.batch_size
  try:
    if what == 'stages':
      records = stages.components(config, batch_size, flag_values.steps or DEVICE_STEPS, warmup)
    elif what == 'profile':
      records = [
          steps.profile(config, batch_size, flag_values.steps or 1, warmup, flag_values.profile_dir)
      ]
    else:
      bench = steps.train if what == 'train' else steps.infer
      records = [bench(config, batch_size, flag_values.steps or DEVICE_STEPS, warmup)]
  except errors.UserError:
    raise
  except (RuntimeError, ValueError, MemoryError) as e:  # devices, memory, the model config
    logging.debug('benchmark failed', exc_info=True)
    _fail(f'the {what} benchmark failed: {_described(e)}')
  records = [_named(record, flag_values) for record in records]
  if what == 'stages':  # one JSON line per component
    _print(records, True, None)
  else:
    _print(records, flag_values.json, _profile_report if what == 'profile' else _step_line)


def run() -> None:
  """The console-script entry point (`lgnet-bench`), also what `python -m` runs."""
  host_memory.keep_freed_memory()  # before JAX starts its backend
  define_flags(sys.argv)
  cli.run_cli(lambda: app.run(main, flags_parser=cli.parse_absl_flags))


def _check_backend() -> None:
  """Exits with status 1 when JAX has no usable backend."""
  try:
    jax.devices()
  except Exception as e:  # pylint: disable=broad-except  # whatever the backend's start raises
    logging.debug('no backend', exc_info=True)
    _fail(
        f'no usable JAX backend (JAX_PLATFORMS={os.environ.get("JAX_PLATFORMS", "")!r}): '
        f'{_described(e)}'
    )


def _described(error: BaseException) -> str:
  """A failure as one line that names its kind (XlaRuntimeError, MemoryError, ...)."""
  name, text = type(error).__name__, errors.one_line(error)
  return text if text == name else f'{name}: {text}'


def _fail(message: str) -> None:
  """One error line on stderr (the traceback is logged at --verbosity=1); exit status 1."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(errors.FAILURE_EXIT)


def _named(record: dict, flag_values: flags.FlagValues) -> dict:
  """`record` with the name of the config it measured (the config file's name)."""
  filename = config_flags.get_config_filename(flag_values['config'])
  return {**record, 'config': pathlib.Path(filename.split(':')[0]).stem}


def _print(records: list[dict], as_json: bool, text) -> None:
  """Each record on stdout, as one JSON line or as `text(record)`; and in the log."""
  for record in records:
    logging.info('%s', record)
    print(json.dumps(record) if as_json else text(record))


def _data_line(record: dict) -> str:
  return (
      f'{record["what"]}: {record["images_per_s"]} images/s (batch {record["batch_size"]}, '
      f'{record["num_workers"]} workers, {record["masks"]} masks)'
  )


def _step_line(record: dict) -> str:
  flops = record['flops_per_image']
  return (
      f'{record["what"]}: {record["images_per_s"]} images/s, '
      f'{record["step_s_median"] * 1e3:.1f} ms median ({record["step_s_min"] * 1e3:.1f} min) '
      f'per batch of {record["batch_size"]} on {record["devices"]} {record["backend"]} '
      f'device(s), compile {record["compile_s"]:.1f} s'
      + ('' if flops is None else f', {flops / 1e9:.1f} GFLOP/image')
      + (
          f'; floor {record["floor_s"] * 1e3:.1f} ms at {record["matmul_gflops"]:.0f} GFLOP/s '
          f'({record["floor_fraction"]:.0%} of it reached)'
          if 'floor_s' in record
          else ''
      )
  )


def _profile_report(record: dict) -> str:
  """The profile summary as a few readable lines."""
  lines = [
      f'train step, batch {record["batch_size"]} on {record["devices"]} {record["backend"]} '
      f'device(s) ({record["host"]}): {record["step_s_traced"]:.2f} s per traced step, '
      f'{record["ops_ms_per_step"] / 1e3:.2f} s in XLA operations; trace in '
      f'{record["profile_dir"]} (TensorBoard --logdir, or Perfetto)'
  ]
  for title, key in (('by network and pass', 'by_network_ms'), ('by class of work', 'by_class_ms')):
    lines.append(f'{title} (ms per step):')
    lines += [f'  {ms:10.1f}  {name}' for name, ms in record[key].items()]
  lines.append('slowest operations (ms per step):')
  lines += [
      f'  {op["ms"]:10.1f}  {op["op"]} {op["shape"]}  {op["where"]}' for op in record['top_ops']
  ]
  return '\n'.join(lines)
