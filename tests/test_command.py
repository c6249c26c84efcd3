"""The `lgnet` command and the one command-line convention (dashes, underscore aliases)."""

import subprocess
import sys
import types

import pytest
from absl import flags

from helpers import REPO_ROOT, assert_usage_error, run_cli_in_process, subprocess_env, run_python
from lgnet_jax import __main__ as lgnet
from lgnet_jax import cli
from lgnet_jax.tools import make_masks

SUBCOMMANDS = [
    'train',
    'eval',
    'inpaint',
    'serve',
    'export',
    'bench',
    'fid',
    'lpips',
    'import-official',
    'convert-vgg16',
    'make-masks',
    'eval-pairs',
]
# The absl commands, whose --help runs in a child process (their flags are process-wide);
# `lgnet eval` is lgnet_jax.main's, as `lgnet train` (test_a_subcommand_runs_its_entry_...).
ABSL_COMMANDS = ('train', 'eval', 'bench')
ABSL_HELP_IN_A_CHILD = ('train', 'bench')


def run_lgnet(capsys, monkeypatch, *argv: str) -> tuple[int, str, str]:
  """`lgnet ARGV` in this process: (exit status, stdout, stderr)."""
  monkeypatch.setattr(sys, 'argv', ['lgnet', *argv])  # restored after the test
  capsys.readouterr()
  try:
    lgnet.run()
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  out, err = capsys.readouterr()
  return code, out, err


def test_help_lists_every_subcommand(capsys, monkeypatch):
  code, out, _ = run_lgnet(capsys, monkeypatch, '--help')
  assert code == 0
  listed = [line.split()[0] for line in out.split('commands:\n')[1].split('\n\n')[0].splitlines()]
  assert listed == SUBCOMMANDS == list(lgnet.COMMANDS)


def test_help_does_not_import_jax():
  """`lgnet --help` answers at once: no JAX, TensorFlow or Flax behind it."""
  code = (
      'import sys; from lgnet_jax import __main__ as m; m.main(["--help"]); '
      'print(sorted({"jax", "tensorflow", "flax", "numpy"} & set(sys.modules)))'
  )
  result = run_python(code, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.splitlines()[-1] == '[]'


@pytest.mark.parametrize('argv', [['trian'], ['--config=demo']], ids=['typo', 'flag'])
def test_an_unknown_subcommand_is_one_line_and_exit_2(capsys, monkeypatch, argv):
  code, _, err = run_lgnet(capsys, monkeypatch, *argv)
  line = assert_usage_error(types.SimpleNamespace(returncode=code, stderr=err), 'unknown command')
  assert line.endswith(', '.join(SUBCOMMANDS))
  assert ('did you mean train?' in line) == (argv == ['trian'])


def test_no_subcommand_shows_the_help_and_exits_2(capsys, monkeypatch):
  code, _, err = run_lgnet(capsys, monkeypatch)
  assert code == 2 and 'import-official' in err and err.endswith('error: name a command\n')


@pytest.fixture
def recorder(monkeypatch):
  """Points every subcommand at a `run` that records sys.argv and sys.modules['__main__']."""
  module = types.ModuleType('recording_entry', 'The docstring absl shows.')
  calls = []
  module.run = lambda: calls.append((list(sys.argv), sys.modules['__main__']))
  monkeypatch.setitem(sys.modules, 'recording_entry', module)
  for name, command in lgnet.COMMANDS.items():
    replaced = lgnet.Command('recording_entry:run', command.summary, command.preset)
    monkeypatch.setitem(lgnet.COMMANDS, name, replaced)
  return module, calls


def test_a_subcommand_runs_its_entry_with_the_arguments(capsys, monkeypatch, recorder):
  module, calls = recorder
  outer = sys.modules['__main__']
  assert run_lgnet(capsys, monkeypatch, 'fid', '--json', 'a', 'b')[0] == 0
  assert run_lgnet(capsys, monkeypatch, 'eval', '--config=demo', '--workdir=w')[0] == 0
  assert run_lgnet(capsys, monkeypatch, 'eval', '--help')[0] == 0
  assert calls == [
      (['lgnet fid', '--json', 'a', 'b'], module),
      (['lgnet eval', '--mode=eval', '--config=demo', '--workdir=w'], module),
      (['lgnet eval', '--mode=eval', '--help'], module),
  ]
  assert sys.modules['__main__'] is outer


@pytest.mark.parametrize('flag', ['--mode=eval', '--mode'])
def test_train_and_eval_set_the_mode(capsys, monkeypatch, recorder, flag):
  code, _, err = run_lgnet(capsys, monkeypatch, 'train', '--config=demo', flag)
  assert_usage_error(
      types.SimpleNamespace(returncode=code, stderr=err), 'lgnet train sets --mode=train'
  )
  assert not recorder[1]


@pytest.mark.parametrize('name', [n for n in SUBCOMMANDS if n not in ABSL_COMMANDS])
def test_subcommand_help_in_process(capsys, monkeypatch, name):
  code, out, err = run_lgnet(capsys, monkeypatch, name, '--help')
  assert code == 0, err
  assert out.startswith('usage: ') and '--help' in out


@pytest.mark.slow
@pytest.mark.parametrize('name', ABSL_HELP_IN_A_CHILD)
def test_subcommand_help_of_the_absl_commands(name):
  """`lgnet train --help` lists the program's own flags, dashed, and exits 0."""
  result = subprocess.run(
      [sys.executable, '-m', 'lgnet_jax', name, '--help'],
      cwd=REPO_ROOT,
      env=subprocess_env(),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'lgnet {name}:' in result.stdout and '--config' in result.stdout, result.stdout


def absl_flags() -> flags.FlagValues:
  """A flag set of its own (the programs' are process-wide) with one flag of each kind."""
  values = flags.FlagValues()
  flags.DEFINE_integer('num_processes', None, 'count', flag_values=values)
  flags.DEFINE_boolean('json_output', False, 'switch', flag_values=values)
  return values


@pytest.mark.parametrize(
    'argv',
    [
        ['--num-processes=3', '--json-output'],
        ['--num_processes=3', '--json_output'],
        ['--num-processes', '3', '--json_output'],
    ],
)
def test_absl_flags_take_dashes_and_underscores(argv):
  values = absl_flags()
  assert cli.parse_absl_flags(['prog', *argv], values) == ['prog']
  assert values.num_processes == 3 and values.json_output


def test_an_absl_negated_switch_takes_dashes():
  values = absl_flags()
  cli.parse_absl_flags(['prog', '--json-output', '--nojson-output'], values)
  assert values.json_output is False


def test_an_unknown_absl_flag_is_one_line_and_exit_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_absl_flags(['prog', '--num-process=3'], absl_flags())
  err = capsys.readouterr().err
  assert_usage_error(types.SimpleNamespace(returncode=exit_info.value.code, stderr=err), 'num')


@pytest.mark.parametrize('spelling', ['--per-bucket', '--per_bucket'])
def test_argparse_flags_take_dashes_and_underscores(tmp_path, capsys, spelling):
  result = run_cli_in_process(
      capsys, make_masks, '--out', tmp_path / 'masks', spelling, '1', '--size', '64'
  )
  assert result.returncode == 0, result.stderr
  assert len(list((tmp_path / 'masks').rglob('*.png'))) == 6


def test_argparse_help_shows_the_dashed_spelling_only(capsys, monkeypatch):
  code, out, _ = run_lgnet(capsys, monkeypatch, 'make-masks', '--help')
  assert code == 0 and out.startswith('usage: lgnet make-masks ')
  assert '--per-bucket' in out and '--per_bucket' not in out


def test_argparse_usage_errors_are_one_line(capsys):
  result = run_cli_in_process(capsys, make_masks, '--out', 'x', '--per-bucket', 'many')
  assert_usage_error(result, '--per-bucket', "'many'")


@pytest.mark.parametrize('text, ok', [('1', True), ('16', True), ('0', False), ('x', False)])
def test_positive_int(text, ok):
  parser = cli.ArgumentParser(prog='p')
  parser.add_argument('--n', type=cli.positive_int)
  if ok:
    assert parser.parse_args(['--n', text]).n == int(text)
  else:
    with pytest.raises(cli.UsageError, match='argument --n: '):
      parser.parse_args(['--n', text])
