"""The package's shape rules: no import cycle, no module over 500 lines, no symlink, no CPU
kernel code among the networks, every file formatted."""

import ast
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from helpers import REPO_ROOT

PACKAGE = 'lgnet_jax'
MAX_MODULE_LINES = 500
# Names that only convolution kernels use (custom gradients, per-platform lowering, the CPU
# algorithms): they belong in lgnet_jax/ops, not in lgnet_jax/models.
KERNEL_NAMES = ('custom_vjp', 'custom_jvp', 'platform_dependent', 'winograd', 'im2col', 'col2im')

Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the first import}


def package_modules() -> dict[str, pathlib.Path]:
  """Every module of the package by dotted name, lgnet_jax.configs (the top-level configs/,
  see pyproject.toml's package-dir) included."""
  roots = {PACKAGE: REPO_ROOT / PACKAGE, f'{PACKAGE}.configs': REPO_ROOT / 'configs'}
  modules = {}
  for prefix, root in roots.items():
    for path in sorted(root.rglob('*.py')):
      parts = path.relative_to(root).with_suffix('').parts
      parts = parts[:-1] if parts[-1] == '__init__' else parts
      modules['.'.join((prefix, *parts))] = path
  return modules


def _imported(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]
) -> Iterator[str]:
  """The package modules `node` (in `module`) imports: `import X.Y` and `from X import Y` name
  X.Y where that is a module, and `from X import name` names X."""
  if isinstance(node, ast.Import):
    yield from (alias.name for alias in node.names if alias.name in modules)
    return
  base = node.module or ''
  if node.level:  # relative: from the module's package, one level up per extra dot
    package = module.split('.') if is_package else module.split('.')[:-1]
    base = '.'.join(package[: len(package) - node.level + 1] + ([base] if base else []))
  for alias in node.names:
    name = f'{base}.{alias.name}'
    if name in modules:
      yield name
    elif base in modules:
      yield base


def import_graph(modules: dict[str, pathlib.Path]) -> Graph:
  """Which package modules each module imports, at module level or inside a function.

  A package's `__init__` is a module like any other: `from X import submodule` depends on
  X.submodule only, `from X import name` on X.
  """
  graph: Graph = {}
  for module, path in modules.items():
    tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
    edges = graph.setdefault(module, {})
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for name in _imported(node, module, path.name == '__init__.py', set(modules)):
          if name != module:
            edges.setdefault(name, node.lineno)
  return graph


def find_cycles(graph: Graph) -> list[list[str]]:
  """One cycle, as a closed chain [a, b, ..., a], for each strongly connected group of
  modules (Tarjan's algorithm, then a shortest way round from the group's first module)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  groups: list[list[str]] = []

  def visit(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    for successor in graph.get(node, {}):
      if successor not in index:
        visit(successor)
        low[node] = min(low[node], low[successor])
      elif successor in stack:
        low[node] = min(low[node], index[successor])
    if low[node] == index[node]:
      group = []
      while not group or group[-1] != node:
        group.append(stack.pop())
      if len(group) > 1:
        groups.append(sorted(group))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return [_shortest_cycle(graph, group) for group in sorted(groups)]


def _shortest_cycle(graph: Graph, group: list[str]) -> list[str]:
  start, members = group[0], set(group)
  paths = {start: [start]}
  frontier = [start]
  while frontier:
    next_frontier = []
    for node in frontier:
      for successor in sorted(graph.get(node, {})):
        if successor == start:
          return paths[node] + [start]
        if successor in members and successor not in paths:
          paths[successor] = paths[node] + [successor]
          next_frontier.append(successor)
    frontier = next_frontier
  raise AssertionError(f'{group} is no cycle')


def describe(cycle: list[str], graph: Graph, modules: dict[str, pathlib.Path]) -> str:
  """`a.py:12 imports b`, one step per line."""
  steps = [
      f'  {modules[a].relative_to(REPO_ROOT)}:{graph[a][b]} imports {b}'
      for a, b in zip(cycle, cycle[1:])
  ]
  return ' -> '.join(cycle) + '\n' + '\n'.join(steps)


def test_the_cycle_finder_finds_and_spells_cycles():
  graph = {'a': {'b': 1}, 'b': {'c': 2}, 'c': {'a': 3, 'd': 4}, 'd': {}, 'e': {'e2': 5}}
  graph['e2'] = {'e': 6}
  assert find_cycles(graph) == [['a', 'b', 'c', 'a'], ['e', 'e2', 'e']]
  assert find_cycles({'a': {'b': 1}, 'b': {}}) == []


def test_the_import_graph_sees_function_level_and_relative_imports(tmp_path):
  root = tmp_path / 'pkg'
  (root / 'sub').mkdir(parents=True)
  (root / '__init__.py').write_text('')
  (root / 'sub' / '__init__.py').write_text('from . import b\n')
  (root / 'a.py').write_text('def f():\n  from pkg.sub import b\n  return b\n')
  (root / 'sub' / 'b.py').write_text('import os\nfrom ..a import f\nfrom pkg import sub\n')
  modules = {
      'pkg': root / '__init__.py',
      'pkg.sub': root / 'sub' / '__init__.py',
      'pkg.a': root / 'a.py',
      'pkg.sub.b': root / 'sub' / 'b.py',
  }
  graph = import_graph(modules)
  assert graph == {
      'pkg': {},
      'pkg.sub': {'pkg.sub.b': 1},
      'pkg.a': {'pkg.sub.b': 2},
      'pkg.sub.b': {'pkg.a': 2, 'pkg.sub': 3},
  }
  assert find_cycles(graph) == [['pkg.a', 'pkg.sub.b', 'pkg.a']]


def test_no_import_cycle():
  modules = package_modules()
  assert len(modules) > 40 and 'lgnet_jax.configs.default' in modules  # the package was found
  graph = import_graph(modules)
  assert graph['lgnet_jax.main'], 'the graph has the imports'
  cycles = find_cycles(graph)
  assert not cycles, 'import cycles:\n' + '\n'.join(describe(c, graph, modules) for c in cycles)


def test_no_module_is_longer_than_500_lines():
  too_long = [
      f'{path.relative_to(REPO_ROOT)} ({count} lines)'
      for path in sorted((REPO_ROOT / PACKAGE).rglob('*.py'))
      if (count := len(path.read_text(encoding='utf-8').splitlines())) > MAX_MODULE_LINES
  ]
  assert not too_long, f'over {MAX_MODULE_LINES} lines, one idea per module:\n' + '\n'.join(
      too_long
  )


def test_no_symlink_in_the_package():
  links = [
      os.path.join(folder, name)
      for folder, folders, files in os.walk(REPO_ROOT / PACKAGE)
      for name in folders + files
      if os.path.islink(os.path.join(folder, name))
  ]
  assert not links, f'symlinks in {PACKAGE}/: {links}'


def kernel_names(path: pathlib.Path) -> dict[str, int]:
  """The names in `path` that belong to a convolution kernel, each with its first line."""
  found: dict[str, int] = {}
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), filename=str(path))):
    names = []
    if isinstance(node, ast.Name):
      names = [node.id]
    elif isinstance(node, ast.Attribute):
      names = [node.attr]
    elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
      names = [node.name]
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      names = [name for alias in node.names for name in (alias.name, alias.asname) if name]
    for name in names:
      if any(kernel in name.lower() for kernel in KERNEL_NAMES):
        found[name] = min(found.get(name, node.lineno), node.lineno)
  return found


@pytest.mark.parametrize(
    'source, found',
    [
        ('f = jax.custom_vjp(g)', {'custom_vjp': 1}),
        ('import jax\nfrom jax.lax import platform_dependent as pd', {'platform_dependent': 2}),
        ('def _winograd_filter(w):\n  return w', {'_winograd_filter': 1}),
        ('y = nn.Conv(4, (3, 3))(x)', {}),
    ],
)
def test_kernel_names_are_recognised(tmp_path, source, found):
  (tmp_path / 'example.py').write_text(source)
  assert kernel_names(tmp_path / 'example.py') == found


def test_the_networks_hold_no_cpu_kernel_code():
  """The Winograd, im2col and col2im kernels and their VJPs live in lgnet_jax/ops."""
  found = [
      f'{path.relative_to(REPO_ROOT)}:{line} {name}'
      for path in sorted((REPO_ROOT / PACKAGE / 'models').rglob('*.py'))
      for name, line in sorted(kernel_names(path).items(), key=lambda item: item[1])
  ]
  assert not found, 'kernel code in lgnet_jax/models (its place is lgnet_jax/ops):\n' + '\n'.join(
      found
  )


def test_every_file_is_formatted():
  """`pyink .` (configured in pyproject.toml: Google style, 2-space, 100 columns) is applied to
  the project's files: in a checkout, those git tracks (a user's scratch file, such as the
  README's `my_stage.py`, is not the project's)."""
  listed = subprocess.run(
      ['git', 'ls-files', '*.py', '*.pyi'], cwd=REPO_ROOT, capture_output=True, text=True
  )
  files = listed.stdout.split() if listed.returncode == 0 and listed.stdout else ['.']
  result = subprocess.run(
      [sys.executable, '-m', 'pyink', '--check', *files],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      check=False,
  )
  assert result.returncode == 0, 'run `pyink .`:\n' + result.stderr
