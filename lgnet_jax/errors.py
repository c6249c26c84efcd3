"""The project's error convention.

`UserError` is bad input: a missing or unreadable file, a wrong setting, a workdir that
cannot be used. Every command prints it as one line (`error: MESSAGE`, naming the file or
value) and exits with status 2, having written nothing half-way. Anything else that stops a
command (a training run that fails, e.g. a NaN loss, or a bug) exits with status 1.
Each module's own error class (DataError, WorkdirError, ...) derives from `UserError`.
"""

USAGE_ERROR_EXIT = 2  # bad input
FAILURE_EXIT = 1  # the work itself failed


class UserError(ValueError):
  """Bad input, said in one line that names the file or value; exit status 2."""


def one_line(error: BaseException | str) -> str:
  """A message as one line (whitespace runs, newlines included, made single spaces).

  An exception with no message is named by its class.
  """
  text = ' '.join(str(error).split())
  if not text and isinstance(error, BaseException):
    return type(error).__name__
  return text


def clip(text: str, limit: int) -> str:
  """`text` cut to at most `limit` characters, ending in '...' when cut: a message never
  echoes a long value whole."""
  return text if len(text) <= limit else text[: limit - 3] + '...'


def short_list(items: list[str], shown: int = 6) -> str:
  """`a, b, c`, or the first `shown` items and `... (N in all)`."""
  text = ', '.join(items[:shown])
  return text + (f', ... ({len(items)} in all)' if len(items) > shown else '')
