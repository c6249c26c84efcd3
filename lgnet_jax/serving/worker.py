"""The server's queue: one thread runs every fill, in arrival order, off the event loop.

One thread means one input shape compiles (at start-up) and fills never compete for the CPU;
a bounded number of places means a request beyond them is refused at once (503) instead of
waiting unboundedly.
"""

import asyncio
import concurrent.futures
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any


class Worker:
  """One thread runs every fill, in arrival order; at most `capacity` requests hold a place.

  A request takes its place before its uploads are decoded and gives it back when its fill ends
  (even when the client has gone by then), so `taken` counts the work the server has accepted.
  `taken` is changed on the event loop's thread only.
  """

  def __init__(self, capacity: int):
    self.capacity = capacity
    self.taken = 0
    self._seconds = 1.0  # a running mean of one fill's time, for Retry-After
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='lgnet-inpaint')

  def take(self) -> bool:
    """Takes a place; False when all `capacity` places are taken."""
    if self.taken >= self.capacity:
      return False
    self.taken += 1
    return True

  def give_back(self) -> None:
    self.taken -= 1

  def retry_after(self) -> int:
    """Seconds until a place is likely free: the queued fills at the mean time of one."""
    return max(1, math.ceil(self._seconds * self.taken))

  def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
    start = time.monotonic()
    try:
      return fn(*args)
    finally:
      self._seconds = 0.8 * self._seconds + 0.2 * (time.monotonic() - start)

  async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) on the worker thread; the caller's place is given back when it ends."""
    loop = asyncio.get_running_loop()

    def done(_: concurrent.futures.Future) -> None:
      with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
        loop.call_soon_threadsafe(self.give_back)

    future = self._executor.submit(self._timed, fn, *args)
    future.add_done_callback(done)
    return await asyncio.wrap_future(future)

  def shutdown(self) -> None:
    self._executor.shutdown(wait=False, cancel_futures=True)
