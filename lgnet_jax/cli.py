"""Shared command-line behaviour: bad input is one line on stderr and exit code 2."""

import sys
from collections.abc import Callable

USAGE_ERROR = 2


class UsageError(Exception):
  """An error caused by the user's input; shown as one line without a traceback."""


def run_cli(main: Callable[[], None], expected: tuple[type[BaseException], ...] = ()) -> None:
  """Runs `main`; a UsageError (or one of `expected`) exits 2 with `error: MESSAGE`."""
  try:
    main()
  except (UsageError, *expected) as e:
    message = ' '.join(str(e).split()) or type(e).__name__
    print(f'error: {message}', file=sys.stderr)
    sys.exit(USAGE_ERROR)
