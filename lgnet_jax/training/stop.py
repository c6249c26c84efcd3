"""SIGTERM or SIGINT once training has started: finish the step, save, exit 0 (`StopSignal`)."""

import os
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils

from lgnet_jax.runtime import signals


class StopSignal:
  """SIGTERM or SIGINT after start-up: finish the step, save, exit 0.

  Created once the training step has compiled on every process; until then (imports,
  restoring, compiling) the program's start-up handling ends the process at once (see
  runtime/signals.py), which it takes over. With several processes every one must stop after
  the same step (the save is collective), so the decision goes through JAX's preemption
  sync: SIGTERM to any process is the runtime's preemption notice, SIGINT is forwarded to it
  as SIGTERM, and `should_stop(step)` turns true on every process at the same step.
  Use it as a context manager: the previous handlers are back when the block ends.
  """

  def __init__(self):
    self.received: int | None = None
    self._multi_process = jax.process_count() > 1
    self._previous = {}
    # Multi-process: SIGTERM stays with the runtime's own preemption notifier.
    handled = (signal.SIGINT,) if self._multi_process else (signal.SIGTERM, signal.SIGINT)
    signals.end_startup(handled)
    for sig in handled:
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning('received signal %d: finishing the step, saving, exiting', signum)
    self.received = signum
    if self._multi_process:
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step`; called after every step on every process."""
    if self._multi_process:
      if multihost_utils.reached_preemption_sync_point(step):
        self.received = self.received or signal.SIGTERM
        return True
      return False
    return self.received is not None

  def restore(self) -> None:
    """The handlers from before this object was made."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def __enter__(self) -> 'StopSignal':
    return self

  def __exit__(self, *exc_info) -> None:
    self.restore()
