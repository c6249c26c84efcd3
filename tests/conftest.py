"""Shared fixtures: the authors' reduced-width checkpoint (../shared) imported once per session."""

import os
import pathlib
import subprocess
import sys
import tempfile

# Eight fake CPU devices for the sharding tests; must be set before JAX initialises.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared'
OFFICIAL_FIXTURE = SHARED / 'fixtures' / 'official_lgnet_ngf16'
METRICS_FIXTURE = SHARED / 'fixtures' / 'metrics_reference'


# Child processes share JAX's persistent compilation cache for this session: the many runs
# of the same small configurations compile each program once.
COMPILATION_CACHE = tempfile.mkdtemp(prefix='lgnet_jax_test_cache_')


def subprocess_env(**overrides: str) -> dict[str, str]:
  """The environment for child processes: one CPU device unless overridden."""
  return {**os.environ, 'PYTHONPATH': str(REPO_ROOT), 'XLA_FLAGS': '',
          'JAX_COMPILATION_CACHE_DIR': COMPILATION_CACHE, **overrides}


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 600,
               check: bool = False) -> subprocess.CompletedProcess:
  """Runs `python -m module args` from the repository root, capturing text output."""
  full_env = subprocess_env(**(env or {}))
  result = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f'{module} exited {result.returncode}:\n{result.stdout}\n{result.stderr}')
  return result


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


def nhwc(array: np.ndarray) -> np.ndarray:
  """NCHW fixture arrays -> NHWC."""
  return np.transpose(array, (0, 2, 3, 1))


@pytest.fixture(scope='session')
def official_io() -> dict[str, np.ndarray]:
  with np.load(OFFICIAL_FIXTURE / 'io.npz') as data:
    return {key: nhwc(value) if value.ndim == 4 else value for key, value in data.items()}


@pytest.fixture(scope='session')
def official_workdir(tmp_path_factory) -> pathlib.Path:
  """The ngf-16 reference checkpoint imported through the command-line importer."""
  out = tmp_path_factory.mktemp('official') / 'workdir'
  run_module('lgnet_jax.tools.import_official', '--checkpoint-dir', str(OFFICIAL_FIXTURE),
             '--workdir', str(out), '--ngf', '16', '--ngf-local', '16', check=True)
  return out
