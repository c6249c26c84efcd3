"""Shared test set-up and helpers: JAX on the CPU with eight fake devices, the fixtures folder.

Test modules import these helpers as `from conftest import ...` (pytest puts tests/ on the
path; child processes get it through `subprocess_env`).
"""

import os
import re

# Before anything imports JAX: the session and every child process (they inherit the
# environment) run on the CPU, even on a GPU or TPU host whose environment names another
# platform, and the session's CPU has eight fake devices for the sharding tests. A child
# process that imports this module keeps the environment `subprocess_env` gave it.
CHILD_MARKER = 'LGNET_JAX_TEST_CHILD'
os.environ['JAX_PLATFORMS'] = 'cpu'
# Random initialisation with JAX's non-partitionable threefry (as `bench.quick_init`): the
# same programs, other random values, and init programs that compile several times faster.
os.environ['JAX_THREEFRY_PARTITIONABLE'] = '0'
if CHILD_MARKER not in os.environ:
  os.environ['XLA_FLAGS'] = ' '.join(
      [*re.sub(r'--xla_force_host_platform_device_count=\S*', '', os.environ.get('XLA_FLAGS', '')).split(),
       '--xla_force_host_platform_device_count=8'])
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=wrong-import-position
import dataclasses
import functools
import pathlib
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from types import ModuleType

import jax
import numpy as np
import pytest
from absl import logging as absl_logging

from lgnet_jax import cli

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# All test data: copies of the authors' reference outputs (see fixtures/README.md).
FIXTURES = TESTS_DIR / 'fixtures'
OFFICIAL_FIXTURE = FIXTURES / 'official_lgnet_ngf16'
METRICS_FIXTURE = FIXTURES / 'metrics_reference'
OFFICIAL_KEYS = FIXTURES / 'official_keys'

# Child processes share JAX's persistent compilation cache for this session: the many runs
# of the same small configurations compile each program once.
# One compilation cache for every child process of the run; pytest-xdist's workers inherit
# the controller's environment, so their children share it too.
CACHE_VARIABLE = 'LGNET_JAX_TEST_COMPILATION_CACHE'
if CACHE_VARIABLE not in os.environ:
  os.environ[CACHE_VARIABLE] = tempfile.mkdtemp(prefix='lgnet_jax_test_cache_')
COMPILATION_CACHE = os.environ[CACHE_VARIABLE]


# For child processes that check logic, not speed or numerics: XLA's cheaper optimisation
# (compiles a training step in about half the CPU time, runs it up to 2x slower).
FAST_COMPILE = {'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}


def subprocess_env(**overrides: str) -> dict[str, str]:
  """The environment for child processes: CPU, one device unless overridden, tests/ importable."""
  return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR)]),
          'XLA_FLAGS': '', 'JAX_COMPILATION_CACHE_DIR': COMPILATION_CACHE, CHILD_MARKER: '1',
          **overrides}


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 600,
               check: bool = False) -> subprocess.CompletedProcess:
  """Runs `python -m module args` from the repository root, capturing text output."""
  full_env = subprocess_env(**(env or {}))
  result = subprocess.run([sys.executable, '-m', module, *map(str, args)], cwd=REPO_ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f'{module} exited {result.returncode}:\n{result.stdout}\n{result.stderr}')
  return result


@dataclasses.dataclass
class CliResult:
  """What an in-process command-line run left: its exit status and its output."""
  returncode: int
  stdout: str
  stderr: str


def run_cli_in_process(capsys: pytest.CaptureFixture, module: ModuleType, *args: object) -> CliResult:
  """Runs `module`'s command line in this process, as `python -m module args` would.

  The module's `main(argv)` runs under `cli.run_cli` with the module's `EXPECTED_ERRORS`,
  exactly as its `__main__` block runs it; argparse's and run_cli's exits become the status.
  The absl log verbosity a command sets is restored afterwards.
  """
  capsys.readouterr()  # drop earlier output
  verbosity = absl_logging.get_verbosity()
  try:
    cli.run_cli(functools.partial(module.main, [str(arg) for arg in args]), module.EXPECTED_ERRORS)
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


def write_random_images(folder: pathlib.Path, count: int, size: tuple[int, int] = (256, 256),
                        seed: int = 0) -> list[pathlib.Path]:
  """`count` random RGB PNGs named 0.png, 1.png, ... in a new `folder`."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  paths = [folder / f'{i}.png' for i in range(count)]
  for path in paths:
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
  return paths


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
  return {name: recipe_tensor(name, shape)
          for name, shape in read_key_list(METRICS_FIXTURE / 'fid_inception_keys.txt').items()}


def lpips_recipe_state_dict(backbone: str) -> dict[str, np.ndarray]:
  """A package-layout LPIPS state dict: recipe weights, the package's scaling constants."""
  from lgnet_jax.metrics_nets import lpips  # pylint: disable=import-outside-toplevel
  constants = {'scaling_layer.shift': lpips.SCALING_SHIFT, 'scaling_layer.scale': lpips.SCALING_SCALE}
  return {name: constants[name].reshape(shape) if name in constants else recipe_tensor(name, shape)
          for name, shape in read_key_list(METRICS_FIXTURE / f'lpips_{backbone}_keys.txt').items()}


def nhwc(array: np.ndarray) -> np.ndarray:
  """NCHW fixture arrays -> NHWC."""
  return np.transpose(array, (0, 2, 3, 1))


@pytest.fixture
def fast_compile() -> Iterator[None]:
  """XLA's cheaper optimisation while the test runs, for tests of logic, not speed or numerics.

  A training step compiles in about half the CPU time (a forward pass in 80%) and runs up to
  2x slower. Programs compiled meanwhile keep their optimisation level when reused.
  """
  name = 'jax_disable_most_optimizations'
  previous = jax.config.values[name]
  jax.config.update(name, True)
  yield
  jax.config.update(name, previous)


@pytest.fixture(scope='session')
def official_io() -> dict[str, np.ndarray]:
  with np.load(OFFICIAL_FIXTURE / 'io.npz') as data:
    return {key: nhwc(value) if value.ndim == 4 else value for key, value in data.items()}


@pytest.fixture(scope='session')
def official_workdir(tmp_path_factory) -> pathlib.Path:
  """The ngf-16 reference checkpoint imported as `python -m lgnet_jax.tools.import_official` does."""
  from lgnet_jax.tools import import_official  # pylint: disable=import-outside-toplevel
  out = tmp_path_factory.mktemp('official') / 'workdir'
  return import_official.import_checkpoints(str(OFFICIAL_FIXTURE), str(out), ngf=16, ngf_local=16)
