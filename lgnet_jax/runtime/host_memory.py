"""Keeps freed host memory mapped so that XLA's CPU programs stop page-faulting on every run.

Each run of a compiled CPU program allocates its temporaries and frees them when it ends: for the
training step at batch 4 that is one 7 GB block plus many smaller ones. XLA allocates them on
its worker threads. glibc serves a large request made on a thread's own arena with a fresh
`mmap` and returns it with `munmap` when it is freed. The next step then faults every page in
again and the kernel zeroes it: about 2.4M page faults and 11 s of system CPU per step on a
2-core host, which is a quarter of the step's wall time.

`keep_freed_memory` sets glibc's malloc to use one arena, never `mmap` and never trim. Freed
blocks then stay mapped and the next step reuses them. The cost is that the process keeps its
peak resident memory, which it reaches on every step anyway. Entry points call it before JAX
starts its backend (its threads pick their arena when they first allocate).

A long-running program (the server) calls `release_freed_memory` when it goes idle: the kept
blocks go back to the system, so its resident size falls back instead of staying at its peak,
and the next run faults its temporaries in once.

Set LGNET_KEEP_FREED_MEMORY=0 to leave malloc as it is. On a C library other than glibc,
this does nothing.
"""

import ctypes
import functools
import os
import sys

from absl import logging

ENV_VAR = 'LGNET_KEEP_FREED_MEMORY'
# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# glibc stores the trim threshold as a size_t: -1 becomes the largest size, so it never trims.
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
_kept = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
  """The process's C library when it is glibc (the one with `mallopt`), else None."""
  if not sys.platform.startswith('linux'):
    return None
  libc = ctypes.CDLL(None)
  if not hasattr(libc, 'gnu_get_libc_version') or not hasattr(libc, 'mallopt'):
    return None
  return libc


def keep_freed_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse; True when the setting took effect."""
  if os.environ.get(ENV_VAR, '1').strip().lower() in ('0', 'false', 'no', 'off'):
    logging.info('%s is off: malloc returns freed memory to the system', ENV_VAR)
    return False
  libc = _glibc()
  if libc is None:
    return False
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  global _kept
  _kept = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
  if not _kept:
    logging.warning('glibc refused a malloc setting; host memory is returned after each step')
  return _kept


def is_kept() -> bool:
  """Whether `keep_freed_memory` took effect in this process (the bench reports it)."""
  return _kept


def release_freed_memory() -> bool:
  """Returns the freed memory malloc holds to the system (glibc's `malloc_trim(0)`, which also
  releases free pages inside the heap); True when some was released."""
  libc = _glibc()
  return bool(libc.malloc_trim(0)) if libc is not None else False
