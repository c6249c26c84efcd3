"""The environment every test runs in (JAX on the CPU with eight fake devices, one compilation
cache for the run) and the fixtures the test modules share; their helpers are in helpers.py.
"""

import os
import re
import tempfile

# Before anything imports JAX: the session and every child process (they inherit the
# environment) run on the CPU, even on a GPU or TPU host whose environment names another
# platform, and the session's CPU has eight fake devices for the sharding tests. A child
# process that imports this module keeps the environment `subprocess_env` gave it.
import environment  # pylint: disable=wrong-import-position

os.environ['JAX_PLATFORMS'] = 'cpu'
# Random initialisation with JAX's non-partitionable threefry (as `bench.timing.quick_init`): the
# same programs, other random values, and init programs that compile several times faster.
os.environ['JAX_THREEFRY_PARTITIONABLE'] = '0'
if environment.CHILD_MARKER not in os.environ:
  os.environ['XLA_FLAGS'] = ' '.join(
      [
          *re.sub(
              r'--xla_force_host_platform_device_count=\S*', '', os.environ.get('XLA_FLAGS', '')
          ).split(),
          environment.XLA_FLAGS,
          '--xla_force_host_platform_device_count=8',
      ]
  )
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent compilation cache for the whole run, this session's and its children's: the
# many runs of the same tiny configuration compile each program once. pytest-xdist's workers
# inherit the controller's environment, so they and their child processes share it.
CACHE_VARIABLE = 'LGNET_JAX_TEST_COMPILATION_CACHE'
if CACHE_VARIABLE not in os.environ:
  os.environ[CACHE_VARIABLE] = tempfile.mkdtemp(prefix='lgnet_jax_test_cache_')
COMPILATION_CACHE = os.environ[CACHE_VARIABLE]
os.environ['JAX_COMPILATION_CACHE_DIR'] = COMPILATION_CACHE

# pylint: disable=wrong-import-position
import pathlib
from collections.abc import Iterator

import jax
import numpy as np
import pytest

from helpers import (
    EXACT_ARGS,
    OFFICIAL_FIXTURE,
    STRAIGHT_ARGS,
    ReferenceRun,
    TrainingRun,
    console_capture,
    nhwc,
    optimizations_off,
    pipeline_batches,
    plain_programs,
    shared_folder,
    tiny_config,
    train_in_process,
)


@pytest.fixture
def fast_compile() -> Iterator[None]:
  """`optimizations_off` for the whole test."""
  with optimizations_off():
    yield


@pytest.fixture
def plain_compile() -> Iterator[None]:
  """`plain_programs` for the whole test."""
  with plain_programs():
    yield


@pytest.fixture(scope='session')
def official_io() -> dict[str, np.ndarray]:
  with np.load(OFFICIAL_FIXTURE / 'io.npz') as data:
    return {key: nhwc(value) if value.ndim == 4 else value for key, value in data.items()}


@pytest.fixture(scope='session')
def official_workdir(tmp_path_factory) -> pathlib.Path:
  """The ngf-16 reference checkpoint imported as `python -m lgnet_jax.tools.import_official` does."""
  from lgnet_jax.tools import import_official  # pylint: disable=import-outside-toplevel

  def build(folder: pathlib.Path) -> None:
    import_official.import_checkpoints(
        str(OFFICIAL_FIXTURE), str(folder / 'workdir'), ngf=16, ngf_local=16
    )

  return shared_folder(tmp_path_factory, 'official', build) / 'workdir'


@pytest.fixture(scope='session')
def straight_run(tmp_path_factory) -> TrainingRun:
  """6 steps of the tiny configuration on one device under umask 027, in this process, run
  once for every test that reads it (the console, the files' permissions, resume and
  non-finite checks); its console lines as `lgnet_jax.main` shows them."""

  from lgnet_jax import console  # pylint: disable=import-outside-toplevel
  from lgnet_jax.training import loop  # pylint: disable=import-outside-toplevel

  def build(folder: pathlib.Path) -> None:
    config = tiny_config(*STRAIGHT_ARGS, '--config.train.num_train_steps=6')
    previous = os.umask(0o027)
    try:
      with plain_programs(), console_capture() as lines:
        console.configure(0)
        loop.train_and_evaluate(config, str(folder / 'workdir'), devices=jax.devices()[:1])
    finally:
      console.configure(1)  # absl's own set-up, as the session had it
      os.umask(previous)
    (folder / 'console.txt').write_text(''.join(f'{line}\n' for line in lines))

  folder = shared_folder(tmp_path_factory, 'straight_run', build)
  return TrainingRun(folder / 'workdir', (folder / 'console.txt').read_text())


def exact_reference(tmp_path_factory, devices: int) -> ReferenceRun:
  """2 steps of the tiny configuration with EXACT_ARGS on `devices` of the session's devices,
  from the first batches `python -m lgnet_jax.main` reads; trained once per test run."""

  def build(folder: pathlib.Path) -> None:
    config = tiny_config(*EXACT_ARGS)
    with plain_programs():
      train_in_process(config, jax.devices()[:devices], pipeline_batches(config, 2)).save(folder)

  return ReferenceRun.load(shared_folder(tmp_path_factory, f'{devices}_device_reference', build))


@pytest.fixture(scope='session')
def one_device_reference(tmp_path_factory) -> ReferenceRun:
  """`exact_reference` on one device: what data-parallel runs (in this process or in several)
  must reproduce."""
  return exact_reference(tmp_path_factory, 1)


@pytest.fixture(scope='session')
def four_device_reference(tmp_path_factory) -> ReferenceRun:
  """`exact_reference` on 4 devices (built in whichever test worker asks first, so the two
  references may compile at the same time)."""
  return exact_reference(tmp_path_factory, 4)
