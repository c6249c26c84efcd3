"""host_memory: freed blocks stay mapped, so a step's temporaries do not fault in again.

Each case runs in a fresh process (malloc settings last for the process). A worker thread
allocates and fills a 128 MiB block three times, as XLA's threads allocate a step's
temporaries; the page faults of the last round tell whether the block was reused.
"""

import json
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, subprocess_env

BLOCK = 128 * 2**20
PAGES = BLOCK // 4096

ROUNDS = f"""
import ctypes, json, resource, threading
from lgnet_jax.runtime import host_memory
kept = host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
faults = []
def rounds():
  for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc({BLOCK})
    ctypes.memset(block, 1, {BLOCK})
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=rounds)
worker.start()
worker.join()
print(json.dumps({{'kept': kept, 'is_kept': host_memory.is_kept(), 'faults': faults}}))
"""


def _rounds(setting: str | None) -> dict:
  env = subprocess_env()
  if setting is not None:
    env['LGNET_KEEP_FREED_MEMORY'] = setting
  result = subprocess.run(
      [sys.executable, '-c', ROUNDS],
      cwd=REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout)


def _huge_pages_always() -> bool:
  try:
    with open('/sys/kernel/mm/transparent_hugepage/enabled', encoding='ascii') as f:
      return '[always]' in f.read()
  except OSError:
    return False


def test_freed_blocks_are_reused_without_faults():
  run = _rounds(None)
  assert run['kept'] is True and run['is_kept'] is True
  assert run['faults'][0] > PAGES // 600  # the first fill maps the block (4 KiB or 2 MiB pages)
  assert run['faults'][-1] < PAGES // 100, run  # the last one reuses it


@pytest.mark.parametrize('setting', ['0', 'off'])
def test_the_environment_variable_leaves_malloc_alone(setting):
  run = _rounds(setting)
  assert run['kept'] is False and run['is_kept'] is False
  if not _huge_pages_always():  # with 4 KiB pages, glibc's default maps the block afresh
    assert run['faults'][-1] > PAGES // 2, run
