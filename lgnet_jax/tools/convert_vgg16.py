"""Converts torchvision VGG16 weights into the `.npz` the LGNet losses load.

  python -m lgnet_jax.tools.convert_vgg16 vgg16-397923af.pth vgg16_pool3.npz

keeps conv1_1..conv3_3 (what the losses use, about 7 MB instead of 528 MB), in Flax layout.
torch is not needed. Point `--config.loss.vgg_weights` at either file.
"""

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from lgnet_jax import cli, fileio
from lgnet_jax.weights import vgg as vgg_weights


def convert(source: str | os.PathLike, target: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads `source` (a VGG16 `.pth` or `.npz`) and writes its params to `target` atomically."""
  flat = vgg_weights.flatten_params(vgg_weights.load_vgg16_params(source))
  target = pathlib.Path(target)
  if not target.parent.is_dir():
    raise cli.UsageError(f'cannot write {target}: folder {target.parent} does not exist')
  try:
    fileio.atomic_write(target, lambda f: np.savez(f, **flat))
  except OSError as e:
    raise cli.UsageError(f'cannot write {target}: {e.strerror or e}') from None
  return flat


def main(argv: Sequence[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
      'source', metavar='IN.pth', help=f'torchvision VGG16 weights ({vgg_weights.TORCHVISION_FILE})'
  )
  parser.add_argument('target', metavar='OUT.npz', help='output file')
  args = parser.parse_args(argv)
  flat = convert(args.source, args.target)
  count = sum(value.size for value in flat.values())
  print(
      f'wrote {args.target}: {len(flat)} arrays ({count:,} parameters, conv1_1..conv3_3) '
      f'from {args.source}'
  )


def run() -> None:
  """The console-script entry point (`lgnet-convert-vgg16`), also what `python -m` runs."""
  cli.run_cli(main)


if __name__ == '__main__':
  run()
