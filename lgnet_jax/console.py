"""The console of the command-line programs: this project's lines, everyone's warnings.

Every library logs through absl's handler on the root logger (orbax and clu through absl's
logger, JAX through its own loggers), so one filter on that handler quiets them all. With
`configure(verbosity)` at absl's default verbosity 0 the console shows this package's own
INFO lines and every library's warnings and errors, each prefixed with the time only; at -1
only warnings and errors; at 1 or more absl's logging exactly as absl sets it up (every
library's INFO and DEBUG lines, absl's full prefix).
"""

import functools
import logging
import os

from absl import logging as absl_logging

PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))


@functools.lru_cache(maxsize=None)
def in_project(pathname: str) -> bool:
  """Whether a log record's source file is one of this package's modules."""
  return os.path.realpath(pathname).startswith(PACKAGE_DIR + os.sep)


class ProjectFilter(logging.Filter):
  """Everyone's warnings and errors; lower levels only from this package's own modules."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or in_project(record.pathname)


class ConsoleFormatter(logging.Formatter):
  """`HH:MM:SS message`, with the level named for warnings and errors.

  A library's traceback is left out (--verbosity=1 shows it): orbax, for one, logs one per
  failed background save, and the program reports the failure itself in one line.
  """

  def format(self, record: logging.LogRecord) -> str:
    level = f'{record.levelname}: ' if record.levelno >= logging.WARNING else ''
    if record.exc_info and not in_project(record.pathname):
      message = record.getMessage()
    else:
      message = super().format(record)
    return f'{self.formatTime(record, "%H:%M:%S")} {level}{message}'


def configure(verbosity: int) -> None:
  """Filters and shortens absl's console lines at `verbosity` <= 0; restores absl's above 0.

  Safe to call again (e.g. by several programs in one process): the filter is added once.
  """
  handler = absl_logging.get_absl_handler()
  for old in [f for f in handler.filters if isinstance(f, ProjectFilter)]:
    handler.removeFilter(old)
  if verbosity > 0:
    handler.setFormatter(absl_logging.PythonFormatter())
    return
  handler.addFilter(ProjectFilter())
  handler.setFormatter(ConsoleFormatter())
