"""host_memory.release_freed_memory: the memory keep_freed_memory keeps goes back to the system
(the server calls it when its queue empties, so its resident size does not stay at its peak)."""

import asyncio
import json
import threading
import time

from helpers import run_python
from lgnet_jax.serving.worker import Worker
from serve_helpers import WAIT_S

BLOCK = 256 * 2**20

KEEP_THEN_RELEASE = f"""
import ctypes, json, os
from lgnet_jax.runtime import host_memory
kept = host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
def resident():
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
block = libc.malloc({BLOCK})
ctypes.memset(block, 1, {BLOCK})
used = resident()
libc.free(block)
freed = resident()
released = host_memory.release_freed_memory()
print(json.dumps({{'kept': kept, 'used': used, 'freed': freed, 'released': released,
                  'after': resident()}}))
"""


def test_freed_memory_that_is_kept_goes_back_on_release():
  result = run_python(KEEP_THEN_RELEASE, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  sizes = json.loads(result.stdout)
  assert sizes['kept'] and sizes['released']
  assert sizes['freed'] > sizes['used'] - BLOCK // 4  # kept mapped after free
  assert sizes['after'] < sizes['freed'] - BLOCK // 2  # and given back on release


def test_the_worker_releases_memory_only_when_its_queue_empties():
  idle = []
  worker = Worker(4, on_idle=lambda: idle.append(time.monotonic()))
  gate = threading.Event()

  async def never_gone() -> bool:
    return False

  async def scenario():
    deadline = time.monotonic() + WAIT_S
    jobs = []
    for _ in range(3):
      assert worker.take()
      jobs.append(
          asyncio.create_task(worker.run(lambda stop: gate.wait(WAIT_S), never_gone, deadline))
      )
    await asyncio.sleep(0.1)  # all three submitted before the first ends
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(*jobs), WAIT_S) == [True] * 3
    while worker.taken:
      await asyncio.sleep(0.02)

  asyncio.run(scenario())
  worker.shutdown()
  assert len(idle) == 1  # after the last of the three only
