"""The error convention: bad input is an errors.UserError, one line on stderr, exit status 2."""

import ast

import pytest

from helpers import REPO_ROOT
from lgnet_jax import cli, errors

# The exception classes that are not bad input, and why; every other one is a UserError.
NOT_USER_ERRORS = {
    'TrainingError': 'a run that failed (a non-finite loss): exit status 1',
    'ApiError': "the server's answer to one HTTP request, not a command's exit",
    'ForeignEntriesError': "fileio's refusal to delete what a folder's replacement did not write; "
    'export turns it into a UsageError naming the entries',
    'Invalid': "the .pth reader's internal reason, raised as pth.CheckpointFormatError",
    'Abandoned': 'a server job given up (the base of the three below), answered by HTTP status',
    'ClientGone': 'a server job whose client disconnected: dropped, nothing to answer',
    'TimedOut': 'a server job over --request-timeout: answered 504',
    'Stopping': 'a server job cut short by shutdown: answered 503',
    'Stopped': 'a fill stopped between network batches on request (the server only)',
}


def exception_classes() -> dict[str, tuple[str, list[str]]]:
  """Every exception class defined in lgnet_jax: name -> (where, its bases' names).

  Read from the source (no module is imported): a class is an exception when a base is
  named ...Error or ...Exception, or is one of these classes.
  """
  classes = {}
  for path in sorted((REPO_ROOT / 'lgnet_jax').rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), filename=str(path))):
      if isinstance(node, ast.ClassDef):
        bases = [ast.unparse(base).split('.')[-1] for base in node.bases]
        classes[node.name] = (f'{path.relative_to(REPO_ROOT)}:{node.lineno}', bases)
  exceptions: dict[str, tuple[str, list[str]]] = {}
  while True:
    found = {
        name: value
        for name, value in classes.items()
        if any(base.endswith(('Error', 'Exception')) or base in exceptions for base in value[1])
    }
    if found.keys() == exceptions.keys():
      return exceptions
    exceptions = found


def is_user_error(name: str, classes: dict[str, tuple[str, list[str]]]) -> bool:
  return name == 'UserError' or any(
      base == 'UserError' or (base in classes and is_user_error(base, classes))
      for base in classes[name][1]
  )


def test_every_module_error_is_a_user_error():
  classes = exception_classes()
  assert {'UsageError', 'DataError', 'WorkdirError', 'ImageError', 'ConfigError'} <= set(classes)
  wrong = [
      f'{where} {name}({", ".join(bases)})'
      for name, (where, bases) in sorted(classes.items())
      # A private class (pth's _Invalid) is caught inside its module: no command sees it.
      if not name.startswith('_') and is_user_error(name, classes) == (name in NOT_USER_ERRORS)
  ]
  assert not wrong, (
      'every exception class is an errors.UserError (bad input, exit 2) except '
      f'{sorted(NOT_USER_ERRORS)}:\n' + '\n'.join(wrong)
  )


def test_the_failures_that_are_no_user_errors_exist():
  assert set(NOT_USER_ERRORS) <= set(exception_classes())


def test_the_class_reader_follows_bases():
  classes = {
      'A': ('a.py:1', ['UserError']),
      'B': ('b.py:1', ['A']),
      'C': ('c.py:1', ['RuntimeError']),
  }
  assert [is_user_error(name, classes) for name in 'ABC'] == [True, True, False]


class _ModuleError(errors.UserError):
  """A module's own error class, as DataError or WorkdirError."""


@pytest.mark.parametrize('error', [cli.UsageError, _ModuleError, errors.UserError])
def test_run_cli_prints_one_line_and_exits_2(error, capsys):
  def main():
    raise error('mask m.png:\n  is   empty')

  with pytest.raises(SystemExit) as exit_info:
    cli.run_cli(main)
  assert exit_info.value.code == errors.USAGE_ERROR_EXIT == 2
  assert capsys.readouterr().err == 'error: mask m.png: is empty\n'


@pytest.mark.parametrize('error', [RuntimeError, ValueError, KeyError])
def test_run_cli_lets_other_errors_through(error):
  def main():
    raise error('a bug')

  with pytest.raises(error, match='a bug'):
    cli.run_cli(main)


@pytest.mark.parametrize(
    'error, line',
    [('a\n b\t c', 'a b c'), (KeyError('k'), "'k'"), (ValueError(), 'ValueError'), ('', '')],
)
def test_one_line(error, line):
  assert errors.one_line(error) == line
