"""The package's shape rules: no function in lgnet_jax/ longer than 60 lines; every file formatted."""

import ast
import pathlib
import subprocess
import sys

from helpers import REPO_ROOT

MAX_FUNCTION_LINES = 60


def _functions(path: pathlib.Path):
  """(name, first line, length in lines) of every function and method defined in `path`."""
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), filename=str(path))):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_60_lines():
  sources = sorted((REPO_ROOT / 'lgnet_jax').rglob('*.py'))
  assert len(sources) > 20  # the package was found
  too_long = [
      f'{path.relative_to(REPO_ROOT)}:{line} {name} ({length} lines)'
      for path in sources
      for name, line, length in _functions(path)
      if length > MAX_FUNCTION_LINES
  ]
  assert not too_long, 'split these functions:\n' + '\n'.join(too_long)


def test_every_file_is_formatted():
  """`pyink .` (configured in pyproject.toml: Google style, 2-space, 100 columns) is applied."""
  result = subprocess.run(
      [sys.executable, '-m', 'pyink', '--check', '.'],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode == 0, 'run `pyink .`:\n' + result.stderr
