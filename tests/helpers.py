"""Helpers the test modules share: the fixtures folder, the tiny training configuration,
running a command in a child process or in this process, test images and a stand-in network,
and recipes for reference weights.

Test modules import them as `from helpers import ...` (pytest puts tests/ on the path; child
processes get it through `subprocess_env`). The environment every test runs in (CPU, eight
fake devices, the shared compilation cache) is set up by conftest.py.
"""

import ast
import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from types import ModuleType

import jax
import ml_collections
import numpy as np
import pytest
from absl import logging as absl_logging

from lgnet_jax import cli
import environment

COMPILATION_CACHE = os.environ.get('JAX_COMPILATION_CACHE_DIR', '')
TESTS_DIR = pathlib.Path(__file__).resolve().parent


REPO_ROOT = TESTS_DIR.parent


# All test data: copies of the authors' reference outputs (see fixtures/README.md).
FIXTURES = TESTS_DIR / 'fixtures'


OFFICIAL_FIXTURE = FIXTURES / 'official_lgnet_ngf16'


METRICS_FIXTURE = FIXTURES / 'metrics_reference'


OFFICIAL_KEYS = FIXTURES / 'official_keys'


BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'  # jax._src.dispatch


# The cheapest real training run, used by every test of the training loop (checkpoints,
# resuming, signals, data, the console, several processes): the first stage (the coarse U-Net,
# with BatchNorm) and D, narrow, no VGG (the demo config's perceptual and style terms are off),
# 8 demo photos, a console line every step. Its step compiles and runs several times faster
# than the three stages'. Tests that train the same way share compiled programs.
TINY_ARGS = (
    '--config=configs/demo.py',
    '--config.model.variant=C',
    '--config.model.ngf=4',
    '--config.model.ngf_local=4',
    '--config.model.ndf=8',
    '--config.data.demo_num_images=8',
    '--config.train.log_every_steps=1',
    '--config.train.sample_every_steps=1000',
)


def model_config(**overrides) -> ml_collections.ConfigDict:
  """configs/default.py's `model` section with `overrides` (e.g. variant='C', ngf=4)."""
  from lgnet_jax.configs import default  # pylint: disable=import-outside-toplevel

  model = default.get_config().model
  model.update(overrides)
  return model


def tiny_config(*extra_args: str) -> ml_collections.ConfigDict:
  """The configuration `python -m lgnet_jax.main TINY_ARGS EXTRA_ARGS` trains with."""
  from lgnet_jax.configs import demo  # pylint: disable=import-outside-toplevel

  config = demo.get_config()
  for arg in (*TINY_ARGS, *extra_args):
    if arg.startswith('--config.'):
      path, value = arg[len('--config.') :].split('=', 1)
      *parents, name = path.split('.')
      node = functools.reduce(getattr, parents, config)
      try:
        parsed = ast.literal_eval(value)
      except (ValueError, SyntaxError):  # a plain string, or nan / inf
        parsed = value
      setattr(node, name, float(parsed) if isinstance(getattr(node, name), float) else parsed)
  return config


# All three stages (local refiner, attention U-Net), for the bfloat16 step.
THREE_STAGES = '--config.model.variant=lgnet'


# Plain gradient descent on a global batch of 4, for comparisons across device layouts:
# Adam's first steps are +-lr whatever the gradient's size, which turns float32 rounding
# differences between layouts (the all-reduce sums in another order) into +-lr differences
# (see train_state.make_optimizer).
EXACT_ARGS = (
    '--config.train.batch_size=4',
    '--config.optim.optimizer=sgd',
    '--config.optim.learning_rate=1e-3',
)


# For child processes that check logic, not speed or numerics: XLA's cheaper optimisation
# (compiles a training step in about half the CPU time, runs it up to 2x slower).
FAST_COMPILE = {'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}


def subprocess_env(**overrides: str) -> dict[str, str]:
  """The environment for child processes: CPU, one device unless overridden, tests/ importable."""
  return {
      **os.environ,
      'PYTHONPATH': os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)]),
      'XLA_FLAGS': environment.XLA_FLAGS,
      'JAX_COMPILATION_CACHE_DIR': COMPILATION_CACHE,
      environment.CHILD_MARKER: '1',
      **overrides,
  }


def run_python(code: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """Runs `python -c code` from the repository root in the child environment; its output."""
  return subprocess.run(
      [sys.executable, '-c', code],
      cwd=REPO_ROOT,
      env=subprocess_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def run_module(
    module: str, *args: str, env: dict | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
  """Runs `python -m module args` from the repository root, capturing text output."""
  full_env = subprocess_env(**(env or {}))
  result = subprocess.run(
      [sys.executable, '-m', module, *map(str, args)],
      cwd=REPO_ROOT,
      env=full_env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  if check and result.returncode != 0:
    raise AssertionError(f'{module} exited {result.returncode}:\n{result.stdout}\n{result.stderr}')
  return result


@dataclasses.dataclass
class CliResult:
  """What an in-process command-line run left: its exit status and its output."""

  returncode: int
  stdout: str
  stderr: str


def run_cli_in_process(
    capsys: pytest.CaptureFixture, module: ModuleType, *args: object
) -> CliResult:
  """Runs `module`'s command line in this process, as `python -m module args` would.

  The module's `main(argv)` runs under `cli.run_cli`, exactly as its `__main__` block runs it;
  argparse's and run_cli's exits become the status.
  The absl log verbosity a command sets is restored afterwards.
  """
  capsys.readouterr()  # drop earlier output
  verbosity = absl_logging.get_verbosity()
  try:
    cli.run_cli(functools.partial(module.main, [str(arg) for arg in args]))
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    absl_logging.set_verbosity(verbosity)
  out, err = capsys.readouterr()
  return CliResult(code, out, err)


def assert_usage_error(result: CliResult | subprocess.CompletedProcess, *fragments: object) -> str:
  """Exit 2, exactly one `error:` line containing every fragment, no traceback; the line."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert str(fragment) in errors[0], errors[0]
  return errors[0]


def write_random_images(
    folder: pathlib.Path, count: int, size: tuple[int, int] = (256, 256), seed: int = 0
) -> list[pathlib.Path]:
  """`count` random RGB PNGs named 0.png, 1.png, ... in a new `folder`."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  paths = [folder / f'{i}.png' for i in range(count)]
  for path in paths:
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
  return paths


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A random (height, width, 3) uint8 photo."""
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def rect_mask(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
  """A uint8 mask file's pixels: 255 inside the rectangle (a hole), 0 elsewhere."""
  mask = np.zeros((height, width), np.uint8)
  mask[top:bottom, left:right] = 255
  return mask


def save_image(path: pathlib.Path, array: np.ndarray, **kwargs) -> pathlib.Path:
  """`array` written by Pillow at `path` (its folder created), with Pillow's save `kwargs`."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)
  return path


def read_rgb(path: pathlib.Path) -> np.ndarray:
  """The image file at `path` as (H, W, 3) uint8."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  with Image.open(path) as img:
    return np.asarray(img.convert('RGB'))


def bad_image_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """A missing, a zero-byte, a non-image and a truncated file in `folder`, named like images."""
  zero = folder / 'zero.png'
  zero.write_bytes(b'')
  text = folder / 'text.png'
  text.write_text('not an image\n')
  full = save_image(folder / 'full.png', random_image(64, 64))
  truncated = folder / 'truncated.png'
  truncated.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
  return {'missing': folder / 'missing.png', 'zero': zero, 'text': text, 'truncated': truncated}


class WhiteFill:
  """A stand-in network: fills every hole with white and records its inputs, for tests of the
  logic around the network (its numerics are test_models' job)."""

  def __init__(self):
    self.images: list[np.ndarray] = []
    self.masks: list[np.ndarray] = []

  def __call__(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    self.images.append(np.array(images))
    self.masks.append(np.array(masks))
    return images * (1 - masks) + masks


def read_key_list(keys_file: pathlib.Path) -> dict[str, tuple[int, ...]]:
  """{name: shape} from a `name<TAB>[d0, d1, ...]` key list of the metrics fixture."""
  keys = {}
  for line in keys_file.read_text().splitlines():
    if line.strip():
      name, shape = line.split('\t')[:2]
      dims = shape.strip().strip('[]').replace(' ', '')
      keys[name] = tuple(int(d) for d in dims.split(',') if d)
  return keys


def recipe_tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
  """One state-dict entry drawn as metrics_reference/README.md prescribes."""
  rng = np.random.default_rng(zlib.crc32(name.encode('utf-8')))
  if name.endswith('num_batches_tracked'):
    return np.array(0, dtype=np.int64)
  if name.endswith('running_var'):
    value = rng.uniform(0.5, 1.5, shape)
  elif name.endswith('running_mean') or name.endswith('bias'):
    value = rng.normal(0.0, 0.1, shape)
  elif len(shape) == 1:
    value = rng.uniform(0.8, 1.2, shape)
  else:
    value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
    if name.startswith('lin'):
      value = np.abs(value)
  return np.asarray(value, dtype=np.float32)


def fid_recipe_state_dict() -> dict[str, np.ndarray]:
  """pytorch-fid's InceptionV3 state dict with the fixture's recipe weights."""
  return {
      name: recipe_tensor(name, shape)
      for name, shape in read_key_list(METRICS_FIXTURE / 'fid_inception_keys.txt').items()
  }


def lpips_recipe_state_dict(backbone: str) -> dict[str, np.ndarray]:
  """A package-layout LPIPS state dict: recipe weights, the package's scaling constants."""
  from lgnet_jax.evaluation.metrics_nets import lpips  # pylint: disable=import-outside-toplevel

  constants = {
      'scaling_layer.shift': lpips.SCALING_SHIFT,
      'scaling_layer.scale': lpips.SCALING_SCALE,
  }
  return {
      name: constants[name].reshape(shape) if name in constants else recipe_tensor(name, shape)
      for name, shape in read_key_list(METRICS_FIXTURE / f'lpips_{backbone}_keys.txt').items()
  }


def nhwc(array: np.ndarray) -> np.ndarray:
  """NCHW fixture arrays -> NHWC."""
  return np.transpose(array, (0, 2, 3, 1))


@contextlib.contextmanager
def optimizations_off() -> Iterator[None]:
  """XLA's cheaper optimisation inside the block, for tests of logic, not speed or numerics.

  A training step compiles in about half the CPU time (a forward pass in 80%) and runs up to
  2x slower. Programs compiled meanwhile keep their optimisation level when reused.
  """
  name = 'jax_disable_most_optimizations'
  previous = jax.config.values[name]
  jax.config.update(name, True)
  try:
    yield
  finally:
    jax.config.update(name, previous)


@contextlib.contextmanager
def plain_programs() -> Iterator[None]:
  """`optimizations_off` and XLA's plain convolutions (`conv.xla_convolutions`) inside the block:
  for tests of the logic around whole networks (the loop, resuming, remat, bfloat16 steps).

  Measured on the 2-core EPYC host (XLA 0.10.2): the tiny first-stage training step compiles
  in 6.6 s instead of 11.6 s, the three stages' bfloat16 step in 18.5 s instead of 28 s. The
  CPU kernels are checked against XLA's convolutions in test_conv_ops, and through whole
  networks by the exactness tests and the runs in child processes.
  """
  from lgnet_jax.ops import conv  # pylint: disable=import-outside-toplevel

  with optimizations_off(), conv.xla_convolutions():
    yield


@contextlib.contextmanager
def absl_messages() -> Iterator[list[str]]:
  """The messages logged through absl (this project's and its libraries') at INFO and above
  inside the block, whatever the absl verbosity and handlers earlier tests left."""
  messages: list[str] = []

  class Collect(logging.Handler):

    def emit(self, record: logging.LogRecord) -> None:
      messages.append(record.getMessage())

  logger, handler = absl_logging.get_absl_logger(), Collect(logging.INFO)
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    yield messages
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)


@contextlib.contextmanager
def count_compiles() -> Iterator[list[str]]:
  """Collects the function name of every backend (XLA) compilation inside the block."""
  names: list[str] = []

  def listener(event: str, duration: float, **kwargs) -> None:  # pylint: disable=unused-argument
    if event == BACKEND_COMPILE_EVENT:
      names.append(str(kwargs.get('fun_name')))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def shared_folder(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[pathlib.Path], None]
) -> pathlib.Path:
  """A folder that `build(folder)` fills once per test run, shared by the xdist workers.

  The first worker to ask builds it (into a temporary name, renamed when `build` returns);
  the others wait on a lock and reuse it. A failed build is retried by the next caller.
  """
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
  folder = root / f'shared_{name}'
  with (root / f'shared_{name}.lock').open('w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not folder.is_dir():
        partial = root / f'shared_{name}.partial'
        if partial.exists():
          shutil.rmtree(partial)
        partial.mkdir()
        build(partial)
        partial.rename(folder)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return folder


def pipeline_batches(config: ml_collections.ConfigDict, count: int) -> list[dict[str, np.ndarray]]:
  """The first `count` global batches `python -m lgnet_jax.main` trains `config` on."""
  from lgnet_jax.data import batching  # pylint: disable=import-outside-toplevel

  iterator, _ = batching.create_train_iterator(config)
  batches = [next(iterator) for _ in range(count)]
  return [{key: batch[key] for key in ('image', 'mask')} for batch in batches]


@dataclasses.dataclass
class ReferenceRun:
  """A training run from the seed's fresh state, as leaves in tree order (saved by one test
  worker, read by others): the fresh state, the final state, and what compiled meanwhile."""

  initial: list[np.ndarray]
  final: list[np.ndarray]
  compiled: list[str]

  def save(self, folder: pathlib.Path) -> None:
    np.savez(folder / 'initial.npz', *self.initial)
    np.savez(folder / 'final.npz', *self.final)
    (folder / 'compiled.json').write_text(json.dumps(self.compiled))

  @classmethod
  def load(cls, folder: pathlib.Path) -> 'ReferenceRun':
    def leaves(name: str) -> list[np.ndarray]:
      with np.load(folder / name) as data:
        return [data[f'arr_{i}'] for i in range(len(data.files))]

    compiled = json.loads((folder / 'compiled.json').read_text())
    return cls(leaves('initial.npz'), leaves('final.npz'), compiled)

  def state_like(self, state, which: str = 'final'):
    """The `which` ('initial' or 'final') leaves in the tree structure of `state`, a state of
    the same configuration."""
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), getattr(self, which))


def train_in_process(
    config: ml_collections.ConfigDict, devices: list, batches: list[dict[str, np.ndarray]]
) -> ReferenceRun:
  """Trains from the seed's fresh state on a mesh of `devices`, as the training loop does;
  the fresh and the final state (on the host) and the XLA compilations during the steps."""
  from lgnet_jax.runtime import sharding  # pylint: disable=import-outside-toplevel
  from lgnet_jax.training import step as train_step
  from lgnet_jax.training import state as train_state_lib  # pylint: disable=import-outside-toplevel

  mesh = sharding.create_mesh(devices)
  replicated, data_sharding = sharding.replicated(mesh), sharding.batch_split(mesh)
  steps_per_epoch = -(-config.data.demo_num_images // config.train.batch_size)
  create = functools.partial(
      train_state_lib.create_train_state, config, steps_per_epoch=steps_per_epoch
  )
  state = jax.jit(create, out_shardings=replicated)(jax.random.PRNGKey(config.seed))
  initial = jax.tree_util.tree_leaves(jax.device_get(state))  # before the step donates it
  step_fn = train_step.compile_train_step(config, mesh, steps_per_epoch)
  with count_compiles() as compiled:
    for batch in batches:
      state, _ = step_fn(state, sharding.make_global_batch(batch, data_sharding), None)
  return ReferenceRun(initial, jax.tree_util.tree_leaves(jax.device_get(state)), compiled)


@dataclasses.dataclass
class TrainingRun:
  """A finished training run: its workdir and its console lines."""

  workdir: pathlib.Path
  console: str


# The straight run: 6 steps, a console line every 2, checkpoints at 3 and 6, samples at 6.
STRAIGHT_ARGS = (
    '--config.train.log_every_steps=2',
    '--config.train.checkpoint_every_steps=3',
    '--config.train.sample_every_steps=6',
    '--config.train.eval_every_steps=3',
    '--config.train.eval_num_images=2',
    '--config.eval.batch_size=4',  # as the evaluations in test_distributed.py: one compilation
)


@contextlib.contextmanager
def console_capture() -> Iterator[list[str]]:
  """The lines the program's console (absl's handler, as `console.configure` set it up) would
  show for the log records of the block, collected in a list.

  The absl logger logs at INFO inside the block. Each record passes the console handler's
  filters and is formatted by its formatter at the time it is logged, so a program that
  configures the console in the block (lgnet_jax.main) is seen as configured.
  """
  lines: list[str] = []
  absl_handler = absl_logging.get_absl_handler()

  class Collect(logging.Handler):

    def emit(self, record: logging.LogRecord) -> None:
      if all(f.filter(record) for f in absl_handler.filters):
        lines.append(absl_handler.python_handler.format(record))

  logger, handler = absl_logging.get_absl_logger(), Collect(logging.DEBUG)
  level = logger.level
  logging.getLogger().addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    yield lines
  finally:
    logging.getLogger().removeHandler(handler)
    logger.setLevel(level)


def run_main_in_process(
    capsys: pytest.CaptureFixture, folder: pathlib.Path, *args: object
) -> CliResult:
  """`python -m lgnet_jax.main TINY_ARGS ARGS` in this process: its exit status and output.

  The flags are parsed as the program parses them and restored afterwards, and so are the
  console set-up and the absl verbosity. The program's `--config.a.b` flags are defined from
  the command line its process started with, so the tiny configuration and the `--config.`
  overrides in ARGS reach it as a config file in `folder`. `stderr` holds what the program
  printed and then the console's lines (see `console_capture`).
  """
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel
  from lgnet_jax import console, main  # pylint: disable=import-outside-toplevel

  overrides = [str(arg) for arg in args if str(arg).startswith('--config.')]
  config_file = folder / 'tiny_config.py'
  config_file.write_text(
      f'from helpers import tiny_config\n\n\ndef get_config():\n'
      f'  return tiny_config(*{overrides!r})\n'
  )
  argv = ['main', f'--config={config_file}', *(str(a) for a in args if str(a) not in overrides)]
  capsys.readouterr()
  verbosity = absl_logging.get_verbosity()
  try:
    with flagsaver.flagsaver(), console_capture() as lines:
      main.main(cli.parse_absl_flags(argv, main.FLAGS))
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  finally:
    absl_logging.set_verbosity(verbosity)
    console.configure(1)  # absl's own set-up, as the session had it
  out, err = capsys.readouterr()
  return CliResult(code, out, err + ''.join(f'{line}\n' for line in lines))
