"""The one command-line convention of every `lgnet` command.

- Flags are spelled with dashes (`--batch-size`, `--num-processes`); the underscore spelling
  (`--batch_size`) is accepted everywhere as an alias, for the absl commands (train, eval,
  bench: `parse_absl_flags`) and the argparse ones (`ArgumentParser`) alike. `--config.a.b`
  overrides keep the config's field names.
- `--config=NAME` names a bundled config (configs/NAME.py); a path names that file.
- Bad input is one `error: MESSAGE` line on stderr and exit status 2 (`run_cli`).
"""

import argparse
import difflib
import os
import pathlib
import sys
from collections.abc import Callable

import ml_collections
from absl import flags

from lgnet_jax import configs, errors

USAGE_ERROR = errors.USAGE_ERROR_EXIT
# The configs that ship with the package: `--config=NAME` is BUNDLED_CONFIGS/NAME.py. The
# top-level configs/ folder is the package lgnet_jax.configs (see pyproject.toml's package-dir).
BUNDLED_CONFIGS = configs.DIRECTORY


class UsageError(errors.UserError):
  """A bad command line; shown as one line without a traceback."""


def program_name() -> str:
  """How this command was started, for its usage line: `python -m MODULE`, or the name it was
  run by (`lgnet-fid`, or `lgnet fid` under the `lgnet` command)."""
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  if sys.argv[0].endswith('.py') and spec is not None:
    return f'python -m {spec.name}'
  return os.path.basename(sys.argv[0])


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the convention: errors are UsageErrors (one `error:` line), every
  `--dashed-flag` also answers to `--dashed_flag` (not shown in --help), and the usage line
  names the command as it was started (`program_name`) unless `prog` is given."""

  def __init__(self, *args, prog: str | None = None, **kwargs):
    super().__init__(*args, prog=prog or program_name(), **kwargs)

  def error(self, message: str):
    raise UsageError(message)

  def parse_known_args(self, args=None, namespace=None):
    args = sys.argv[1:] if args is None else list(args)
    return super().parse_known_args(self._with_dashes(args), namespace)

  def _with_dashes(self, argv: list[str]) -> list[str]:
    """`argv` with `--a_b` spelled `--a-b` where this parser knows `--a-b`."""
    known = {option for action in self._actions for option in action.option_strings}
    return [_dashed(arg, known) for arg in argv]


def positive_int(text: str) -> int:
  """An argparse `type` for counts and sizes: an integer of at least 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
  return value


def _dashed(arg: str, known: set[str]) -> str:
  """`--a_b[=v]` as `--a-b[=v]` when `known` holds `--a-b`; anything else unchanged."""
  if not arg.startswith('--') or arg.startswith('--config.'):
    return arg
  name, equals, value = arg.partition('=')
  dashed = '--' + name[2:].replace('_', '-')
  return f'{dashed}{equals}{value}' if dashed in known and name not in known else arg


def absl_argv(argv: list[str], flag_values: flags.FlagValues) -> list[str]:
  """`argv` with `--a-b[=v]` (and `--noa-b`) spelled as absl's `--a_b` flags it defines, and
  `-h` as `--help` (absl's short name for it is `-?`)."""
  out = []
  for arg in argv:
    if arg == '-h' and 'h' not in flag_values:
      arg = '--help'
    if arg.startswith('--') and not arg.startswith('--config.') and '-' in arg[2:].split('=')[0]:
      name, equals, value = arg[2:].partition('=')
      underscored = name.replace('-', '_')
      base = underscored[2:] if underscored.startswith('no') else underscored
      if underscored in flag_values or base in flag_values:
        arg = f'--{underscored}{equals}{value}'
    out.append(arg)
  return out


def _config_file(argv: list[str]) -> str | None:
  """The value of --config in `argv` (the last one, as absl takes it)."""
  found = None
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      found = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      found = argv[i + 1]
  return found


def bundled_config_names() -> list[str]:
  """The names `--config=NAME` accepts for the bundled configs, sorted."""
  return sorted(path.stem for path in BUNDLED_CONFIGS.glob('*.py') if not path.stem.startswith('_'))


def _bundled_config(value: str) -> str:
  """A `--config` value; a bundled config's name (`demo`, `demo.py`, `demo:ARGS`) made its path."""
  path, colon, args = value.partition(':')
  if not path or '/' in path or os.sep in path or pathlib.Path(path).is_file():
    return value
  name, names = path.removesuffix('.py'), bundled_config_names()
  if name not in names:
    raise UsageError(
        f'config file {path} does not exist and is not a bundled config '
        f'(bundled: {", ".join(names)})'
    )
  return f'{BUNDLED_CONFIGS / name}.py{colon}{args}'


def with_bundled_config(argv: list[str], flag: str = 'config') -> list[str]:
  """`argv` with `--config=NAME` (or `--config NAME`) naming a bundled config made its path.

  A value with a `/` or naming an existing file is kept; an unknown name raises UsageError.
  """
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith(f'--{flag}='):
      out[i] = f'--{flag}={_bundled_config(arg.split("=", 1)[1])}'
    elif arg == f'--{flag}' and i + 1 < len(out):
      out[i + 1] = _bundled_config(out[i + 1])
  return out


def _unknown_override(config: ml_collections.ConfigDict, argv: list[str]) -> str | None:
  """`--config.a.b` naming no field of `config`, said with the nearest field names."""
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.') :].split('=', 1)[0]
    node, parts = config, path.split('.')
    for depth, key in enumerate(parts):
      if isinstance(node, ml_collections.ConfigDict) and key in node:
        node = node[key]
        continue
      prefix = '.'.join(parts[:depth])
      fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(key, fields, n=3)
      hint = (
          f'; did you mean {", ".join(f"{prefix}.{c}".lstrip(".") for c in close)}?'
          if close
          else ''
      )
      what = f'{prefix} has no field {key!r}' if prefix else f'the config has no field {key!r}'
      return f'unknown setting --config.{path}: {what}{hint}'
  return None


def _flag_error_message(argv: list[str], error: Exception) -> str:
  """What went wrong in the flags or the config file, as one line."""
  from lgnet_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel  # heavy

  if isinstance(error, (flags.Error, UsageError)):
    return str(error)
  path = _config_file(argv)
  if path and not pathlib.Path(path.split(':', 1)[0]).is_file():
    return f'config file {path} does not exist'
  cause = error
  while cause is not None and not isinstance(cause, SyntaxError):
    cause = cause.__cause__ or cause.__context__
  if cause is not None:
    return f'config file {path}: syntax error at line {cause.lineno}: {cause.msg}'
  if path and isinstance(error, (AttributeError, KeyError)):
    try:
      unknown = _unknown_override(workdir_lib.load_config_file(path.split(':', 1)[0]), argv)
    except Exception:  # pylint: disable=broad-except  # fall back to the error itself
      unknown = None
    if unknown:
      return unknown
  return f'cannot load the config{f" {path}" if path else ""}: {workdir_lib.describe_error(error)}'


HELP_FLAGS = {'--help', '-?', '--helpshort', '--helpfull', '--helpxml'}


def _list_package_flags_in_help(flag_values: flags.FlagValues) -> None:
  """absl's --help lists the flags of the module named sys.argv[0]: under a console script or
  `lgnet train` that is no module, so this package's flags are listed under that name."""
  if flag_values.get_key_flags_for_module(sys.argv[0]):
    return  # `python -m lgnet_jax.main`: the module is the file sys.argv[0] names
  for module, module_flags in flag_values.flags_by_module_dict().items():
    if module.startswith('lgnet_jax.'):
      for flag in module_flags:
        flag_values.register_key_flag_for_module(sys.argv[0], flag)


def parse_absl_flags(argv: list[str], flag_values: flags.FlagValues | None = None) -> list[str]:
  """absl's flag parsing (`app.run(main, flags_parser=...)`); a mistake is one line, exit 2.

  Covers absl's own flag errors and, for a `--config` config-file flag, unknown `--config.a.b`
  fields, values of the wrong type, and a config file that does not exist or does not load.
  `--config=NAME` names a bundled config (see `with_bundled_config`); `--a-b` means `--a_b`.
  """
  flag_values = flags.FLAGS if flag_values is None else flag_values
  argv = absl_argv(argv, flag_values)
  _list_package_flags_in_help(flag_values)
  try:
    if 'config' in flag_values:
      argv = with_bundled_config(argv)
    try:
      remaining = flag_values(argv)
    except SystemExit:  # absl exits 1 after --help, --helpfull, ...; asking for help is no error
      if set(argv[1:]) & HELP_FLAGS:
        sys.exit(0)
      raise
    if 'config' in flag_values and flag_values['config'].value is not None:
      flag_values.config.keys()  # a config file that failed to load raises here
    return remaining
  except Exception as e:  # pylint: disable=broad-except  # the config file may raise anything
    print(f'error: {errors.one_line(_flag_error_message(argv, e))}', file=sys.stderr)
    sys.exit(USAGE_ERROR)


def run_cli(main: Callable[[], None]) -> None:
  """Runs `main`; a UserError exits 2 with `error: MESSAGE`."""
  try:
    main()
  except errors.UserError as e:
    message = errors.one_line(e)
    print(f'error: {message}', file=sys.stderr)
    sys.exit(USAGE_ERROR)
