"""`lgnet COMMAND [ARGS]` (or `python -m lgnet_jax COMMAND [ARGS]`): every command of the project.

`lgnet COMMAND ARGS` runs COMMAND's own entry point with ARGS, exactly as its `lgnet-COMMAND`
script or `python -m` module does; only COMMAND's module is imported, so `lgnet --help` answers
at once, without starting JAX.
"""

import dataclasses
import difflib
import importlib
import sys

from lgnet_jax import errors


@dataclasses.dataclass(frozen=True)
class Command:
  """A subcommand: its entry point `module:function` (which reads sys.argv) and a summary."""

  entry: str
  summary: str
  preset: tuple[str, ...] = ()  # flags given before the user's ARGS


# The one table of subcommands; `lgnet --help` lists them in this order.
COMMANDS = {
    'train': Command(
        'lgnet_jax.main:run', 'train a model, resuming from its workdir', ('--mode=train',)
    ),
    'eval': Command(
        'lgnet_jax.main:run',
        "score a workdir's latest checkpoint on the test set",
        ('--mode=eval',),
    ),
    'inpaint': Command('lgnet_jax.serving.inpaint:run', 'fill the holes of images with a workdir'),
    'serve': Command('lgnet_jax.serving.server:run', 'a web page and HTTP API that inpaint'),
    'export': Command(
        'lgnet_jax.serving.export:run', 'a workdir as a JAX, SavedModel or TFLite artifact'
    ),
    'bench': Command('lgnet_jax.bench.main:run', 'time the input pipeline, training and inference'),
    'fid': Command('lgnet_jax.tools.fid:run', 'FID between two image folders'),
    'lpips': Command('lgnet_jax.tools.lpips:run', 'mean LPIPS of same-named images of two folders'),
    'import-official': Command(
        'lgnet_jax.tools.import_official:run', "the authors' PyTorch checkpoints as a workdir"
    ),
    'convert-vgg16': Command(
        'lgnet_jax.tools.convert_vgg16:run', "torchvision's VGG16 as the losses' .npz"
    ),
    'make-masks': Command(
        'lgnet_jax.tools.make_masks:run', "the paper's test masks in six hole-ratio buckets"
    ),
    'eval-pairs': Command(
        'lgnet_jax.tools.eval_pairs:run', "the test set's (image, mask) pairs, for another method"
    ),
}


def help_text() -> str:
  width = max(map(len, COMMANDS))
  lines = [
      'usage: lgnet COMMAND [ARGS]   (also: python -m lgnet_jax COMMAND [ARGS])',
      '',
      'LGNet image inpainting in JAX.',
      '',
      'commands:',
      *(f'  {name:<{width}}  {command.summary}' for name, command in COMMANDS.items()),
      '',
      "`lgnet COMMAND --help` shows a command's flags.",
  ]
  return '\n'.join(lines) + '\n'


def _usage_error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(errors.USAGE_ERROR_EXIT)


def _check_preset(name: str, command: Command, args: list[str]) -> None:
  """A flag the subcommand sets (train's --mode) may not be given again."""
  for preset in command.preset:
    flag = preset.split('=', 1)[0]
    if any(arg == flag or arg.startswith(f'{flag}=') for arg in args):
      _usage_error(f'lgnet {name} sets {preset}: leave out {flag}')


def main(argv: list[str]) -> None:
  """Runs `lgnet ARGV` (`argv` without the program name)."""
  if not argv or argv[0] in ('-h', '--help', 'help'):
    (sys.stdout if argv else sys.stderr).write(help_text())
    if not argv:
      _usage_error('name a command')
    return
  name, args = argv[0], argv[1:]
  if name not in COMMANDS:
    close = difflib.get_close_matches(name, COMMANDS, n=1)
    hint = f' (did you mean {close[0]}?)' if close else ''
    _usage_error(f'unknown command {name!r}{hint}; the commands: {", ".join(COMMANDS)}')
  command = COMMANDS[name]
  _check_preset(name, command, args)
  module_name, function = command.entry.split(':')
  module = importlib.import_module(module_name)
  sys.argv = [f'lgnet {name}', *command.preset, *args]
  # As under `python -m MODULE`: absl's --help shows the __main__ module's docstring.
  outer, sys.modules['__main__'] = sys.modules['__main__'], module
  try:
    getattr(module, function)()
  finally:
    sys.modules['__main__'] = outer


def run() -> None:
  """The console-script entry point (`lgnet`), also what `python -m lgnet_jax` runs."""
  main(sys.argv[1:])


if __name__ == '__main__':
  run()
