"""The server's queue: one thread does every request's work, in arrival order, off the event loop.

One thread means one input shape compiles (at start-up), fills never compete for the CPU, and
one full-size photo is decoded at a time, so memory does not grow with the queue. A bounded
number of places means a request beyond them is refused at once (503) instead of waiting
unboundedly. A request leaves the queue when its client goes, its time runs out or the server
stops: a job still waiting never runs, the running one is told to stop (its `stop` event; a
fill checks it between network batches).
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import math
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

RECENT_JOBS = 20  # the jobs whose median time estimates Retry-After
POLL_S = 0.25  # how often a waiting request looks at its client, its deadline and the server


class Abandoned(Exception):
  """A request that stopped waiting for its job; the job does not run, or stops early."""


class ClientGone(Abandoned):
  """The client closed the connection."""


class TimedOut(Abandoned):
  """The request passed its deadline."""


class Stopping(Abandoned):
  """The server is shutting down."""


class Worker:
  """One thread runs every job, in arrival order; at most `capacity` requests hold a place.

  A request takes its place before its job is queued and the place comes back when the job
  ends, or at once when a job that never started is dropped, so `taken` counts the work the
  server has accepted and not finished. `taken` is changed on the event loop's thread only.
  """

  def __init__(self, capacity: int, on_idle: Callable[[], object] | None = None):
    """`on_idle()` runs on the worker thread after a job that leaves no other job waiting."""
    self.capacity = capacity
    self.on_idle = on_idle
    self._jobs = 0  # submitted and not yet ended (started or not), under _jobs_lock
    self._jobs_lock = threading.Lock()
    self.taken = 0
    self.running = False  # whether a job is running now (set by the worker thread)
    self.stopping = False
    self._recent: collections.deque[float] = collections.deque(maxlen=RECENT_JOBS)
    self._recent_lock = threading.Lock()  # the worker thread adds, the event loop reads
    self._stops: set[threading.Event] = set()
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='lgnet-inpaint')

  def take(self) -> bool:
    """Takes a place; False when all `capacity` places are taken."""
    if self.taken >= self.capacity:
      return False
    self.taken += 1
    return True

  def give_back(self) -> None:
    self.taken -= 1

  def record(self, seconds: float) -> None:
    """One finished job's time, for Retry-After."""
    with self._recent_lock:
      self._recent.append(seconds)

  def retry_after(self) -> int:
    """Seconds until a place is likely free: the accepted jobs at the median time of the recent
    ones (a median, so one slow job does not make the estimate ten times too long)."""
    with self._recent_lock:
      typical = statistics.median(self._recent) if self._recent else 1.0
    return max(1, math.ceil(typical * self.taken))

  def _timed(
      self, job: Callable[[threading.Event], Any], stop: threading.Event, deadline: float
  ) -> Any:
    # A job whose request has stopped waiting never starts, even before the request notices
    # (it looks every POLL_S): on a loaded host the job ahead can end between two looks.
    if self.stopping:
      raise Stopping()
    if time.monotonic() >= deadline:
      raise TimedOut()
    start = time.monotonic()
    self.running = True
    try:
      result = job(stop)
    finally:
      self.running = False
      with self._jobs_lock:
        idle = self._jobs == 1  # this job's own count goes when it has ended
      if idle and self.on_idle is not None:
        self.on_idle()
    self.record(time.monotonic() - start)  # only whole jobs: a failed or stopped one is shorter
    return result

  def _job_ended(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
    """A job ran or was dropped (on the worker's thread, or the loop's when dropped)."""
    with self._jobs_lock:
      self._jobs -= 1
    with contextlib.suppress(RuntimeError):  # the loop closed: the server has stopped
      loop.call_soon_threadsafe(self._ended, stop)

  def _ended(self, stop: threading.Event) -> None:
    self._stops.discard(stop)
    self.give_back()

  async def run(
      self,
      job: Callable[[threading.Event], Any],
      client_gone: Callable[[], Awaitable[bool]],
      deadline: float,
  ) -> Any:
    """`job(stop)` on the worker thread, in the caller's place; its result or its exception.

    While it waits or runs, every POLL_S: when the server is stopping, `deadline`
    (time.monotonic()) has passed or `client_gone()` says so, raises Stopping, TimedOut or
    ClientGone at once; the job then never starts, or, running, finds `stop` set. The place is
    given back when the job ends.
    """
    if self.stopping:
      self.give_back()
      raise Stopping()
    loop = asyncio.get_running_loop()
    stop = threading.Event()
    self._stops.add(stop)
    with self._jobs_lock:
      self._jobs += 1
    future = self._executor.submit(self._timed, job, stop, deadline)
    future.add_done_callback(lambda _: self._job_ended(loop, stop))
    waiting = asyncio.wrap_future(future)
    try:
      while not (await asyncio.wait([waiting], timeout=POLL_S))[0]:
        if self.stopping:
          raise Stopping()
        if time.monotonic() >= deadline:
          raise TimedOut()
        if await client_gone():
          raise ClientGone()
      return waiting.result()
    finally:
      if not waiting.done():  # abandoned (or this request was cancelled)
        stop.set()
        waiting.cancel()  # a job that has not started is dropped (its place comes back now)

  def stop_all(self) -> None:
    """The server is stopping: the running job stops at its next check, waiting ones never run.

    Safe to call from a signal handler on the event loop's thread."""
    self.stopping = True
    for stop in list(self._stops):
      stop.set()

  def shutdown(self) -> None:
    self.stop_all()
    self._executor.shutdown(wait=False, cancel_futures=True)
