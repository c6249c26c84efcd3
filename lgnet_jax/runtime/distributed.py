"""Multi-process start-up: one JAX process per host (or per GPU), joined into one runtime.

`initialize` runs before any JAX computation. It calls `jax.distributed.initialize` when the
run is multi-process: a coordinator address is given (flag or JAX_COORDINATOR_ADDRESS), or
SLURM or Open MPI started more than one task, or `mode='on'` (Cloud TPU pod slices, where
JAX finds the other workers itself). After it, `jax.devices()` lists the devices of every
process and one `jax.jit` step over a mesh of all of them is the data-parallel program.

The runtime's health checks bound every failure: when a process dies (or stops sending
heartbeats for `heartbeat_timeout_s`), every other process exits with an error instead of
waiting in a collective forever. Relaunching the same command resumes from the last
complete checkpoint.
"""

import dataclasses
import os

import jax
from absl import logging

from lgnet_jax import errors

MODES = ('auto', 'on', 'off')


class DistributedError(errors.UserError):
  """Inconsistent multi-process settings."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """How this process joins the others; unset fields are taken from the environment."""

  mode: str = 'auto'
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  heartbeat_timeout_s: int = 100
  initialization_timeout_s: int = 300
  shutdown_timeout_s: int = 60


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ''):
    return None
  try:
    return int(value)
  except ValueError:
    raise DistributedError(f'environment variable {name}={value!r} is not an integer') from None


def _launched_by_scheduler() -> bool:
  """SLURM or Open MPI started several tasks of this program."""
  return (_env_int('SLURM_NTASKS') or 1) > 1 or (_env_int('OMPI_COMM_WORLD_SIZE') or 1) > 1


def resolve(settings: Settings) -> dict | None:
  """The `jax.distributed.initialize` arguments, or None for a single-process run."""
  if settings.mode not in MODES:
    raise DistributedError(f'distributed mode {settings.mode!r} is not one of {", ".join(MODES)}')
  address = settings.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS') or None
  num_processes = settings.num_processes
  if num_processes is None:
    num_processes = _env_int('JAX_NUM_PROCESSES')
  process_id = settings.process_id
  if process_id is None:
    process_id = _env_int('JAX_PROCESS_ID')
  if settings.mode == 'off':
    return None
  if settings.mode == 'auto' and not address and not _launched_by_scheduler():
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise DistributedError(
          f'num_processes={num_processes}, process_id={process_id} need a '
          "coordinator address: --coordinator_address=HOST:PORT (process 0's "
          'host) or JAX_COORDINATOR_ADDRESS'
      )
    return None
  if address is not None and ':' not in address:
    raise DistributedError(f'coordinator address {address!r} must be HOST:PORT')
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f'num_processes must be at least 1, got {num_processes}')
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise DistributedError(f'process_id {process_id} is not in 0..{num_processes - 1}')
  return dict(
      coordinator_address=address,
      num_processes=num_processes,
      process_id=process_id,
      heartbeat_timeout_seconds=settings.heartbeat_timeout_s,
      initialization_timeout=settings.initialization_timeout_s,
      shutdown_timeout_seconds=settings.shutdown_timeout_s,
  )


def initialize(settings: Settings) -> None:
  """Joins the multi-process runtime when the run is multi-process (see the module docstring)."""
  arguments = resolve(settings)
  if arguments is None:
    return
  # CPU devices of different processes talk through gloo (tests, CPU clusters); GPUs use NCCL
  # and TPUs their interconnect regardless.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(**arguments)
  except ValueError as e:  # settings that JAX could neither read nor detect
    raise DistributedError(f'cannot start the multi-process runtime: {e}') from None
  logging.info(
      'joined %d processes as process %d (coordinator %s, heartbeat timeout %d s)',
      jax.process_count(),
      jax.process_index(),
      arguments['coordinator_address'] or 'auto',
      settings.heartbeat_timeout_s,
  )


def barrier(name: str, timeout_s: float) -> None:
  """Waits until every process reaches `name` (nothing to wait for in a single process).

  The coordination service's barrier, not a device collective: CPU collectives (gloo) give
  a peer only 30 s to arrive, so processes that finish compiling a program at different
  times (one from the compilation cache, one compiling) meet here first.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel

  jax_distributed.global_state.client.wait_at_barrier(f'lgnet_jax:{name}', int(timeout_s * 1000))
