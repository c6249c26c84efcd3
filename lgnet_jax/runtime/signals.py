"""SIGINT and SIGTERM during a program's start-up: exit at once with 128 + the signal number.

Start-up (imports, restoring, compiling) spends long stretches inside C++ calls, where a
Python signal handler cannot run until the call returns. `exit_during_startup()` therefore
also has the interpreter write each signal's number to a pipe (`signal.set_wakeup_fd`, which
happens inside the C-level handler), and a thread waiting on that pipe ends the process at
once: 130 for SIGINT, 143 for SIGTERM, as a shell reports a killed program. Files are
written whole or not at all (see fileio.py), so nothing is left half-written.

Once the program can stop cleanly (training: after its first step, see training/stop.py),
`end_startup()` hands the signals back.

Only the standard library is imported here: the program imports this first.
"""

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict = {}  # 'read_fd', 'write_fd', 'previous' handlers, 'previous_wakeup_fd' while active
_exiting = threading.Lock()  # the handler and the watching thread may both see a signal


def _exit(signum: int) -> None:
  """Ends the process now, without cleanup: nothing has been written that needs it."""
  if not _exiting.acquire(blocking=False):
    return  # the other one is ending the process
  try:
    os.write(
        sys.stderr.fileno(),
        f'error: stopped by {signal.Signals(signum).name} (nothing was saved)\n'.encode(),
    )
  finally:
    os._exit(128 + signum)  # pylint: disable=protected-access


def _handle(signum, frame) -> None:  # pylint: disable=unused-argument
  if _state:  # a signal that `end_startup` left here is not ours to act on afterwards
    _exit(signum)


def _watch(read_fd: int) -> None:
  """Ends the process when a signal number arrives on the pipe (even mid C++ call)."""
  while True:
    try:
      data = os.read(read_fd, 1)
    except OSError:
      data = b''
    if not data:  # end_startup closed the pipe
      os.close(read_fd)
      return
    if data[0] in SIGNALS and _state.get('read_fd') == read_fd:
      _exit(data[0])


def exit_during_startup() -> None:
  """From now until `end_startup()`, SIGINT and SIGTERM end the process at once (130, 143).

  Call from the main thread, first thing; a no-op when already active.
  """
  if _state:
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  _state.update(
      read_fd=read_fd,
      write_fd=write_fd,
      previous={sig: signal.signal(sig, _handle) for sig in SIGNALS},
      previous_wakeup_fd=signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False),
  )
  threading.Thread(target=_watch, args=(read_fd,), name='startup-signals', daemon=True).start()


def end_startup(restore: tuple[int, ...] = SIGNALS) -> None:
  """Start-up is over: the handlers from before `exit_during_startup()` are back for `restore`.

  A signal left out keeps whatever handles it now (with several processes JAX's runtime
  takes SIGTERM as its preemption notice). Call from the main thread; a no-op when start-up
  handling is not active (a program that never enabled it, such as a test of the library).
  """
  if not _state:
    return
  signal.set_wakeup_fd(_state['previous_wakeup_fd'])
  for sig in restore:
    signal.signal(sig, _state['previous'][sig])
  os.close(_state['write_fd'])  # the watching thread reads end-of-file and returns
  _state.clear()


def in_startup() -> bool:
  return bool(_state)
