"""Writes procedural test masks for the paper's six hole-ratio buckets.

  python -m lgnet_jax.tools.make_masks --out masks/test --per-bucket 2000 [--regular]

writes OUT/01-10/00000.png ... OUT/50-60/01999.png (white = hole, black = known), every mask's
hole ratio inside its bucket, and with --regular also OUT/regular/center.png and circles.png
(the square and circles of the paper's Fig. 5). The masks depend only on --seed and --size,
so every run and machine writes the same bytes; existing files are overwritten.
"""

import argparse
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from lgnet_jax import cli
from lgnet_jax.data import image_io, masks


def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='output folder (created if missing)')
  parser.add_argument('--per-bucket', type=int, required=True, help='masks per bucket')
  parser.add_argument(
      '--size',
      type=int,
      default=masks.TEST_SIZE,
      help=f'mask side in pixels (default {masks.TEST_SIZE})',
  )
  parser.add_argument('--seed', type=int, default=0, help='seed of the whole set (default 0)')
  parser.add_argument(
      '--regular', action='store_true', help='also write regular/center.png and regular/circles.png'
  )
  return parser


def _to_png(mask: np.ndarray) -> np.ndarray:
  return (np.asarray(mask) > 0.5).astype(np.uint8) * 255


def _write(path: pathlib.Path, mask: np.ndarray) -> None:
  try:
    image_io.save_image_atomic(path, _to_png(mask))
  except OSError as e:
    raise cli.UsageError(f'cannot write {path}: {e.strerror or e}') from None


def _check_args(args: argparse.Namespace) -> pathlib.Path:
  if args.per_bucket < 1:
    raise cli.UsageError(f'--per-bucket must be at least 1, got {args.per_bucket}')
  if args.size < masks.MIN_PROCEDURAL_SIZE:
    raise cli.UsageError(f'--size must be at least {masks.MIN_PROCEDURAL_SIZE}, got {args.size}')
  if args.seed < 0:
    raise cli.UsageError(f'--seed must be non-negative, got {args.seed}')
  out = pathlib.Path(args.out)
  if out.exists() and not out.is_dir():
    raise cli.UsageError(f'--out {out} exists and is not a folder')
  return out


def main(argv: Sequence[str] | None = None) -> None:
  """The command line; `argv` defaults to sys.argv[1:]."""
  args = build_parser().parse_args(argv)
  out = _check_args(args)
  digits = max(5, len(str(args.per_bucket - 1)))
  for bucket in range(len(masks.BUCKETS)):
    name = masks.bucket_name(bucket)
    folder = out / name
    print(
        f'[{bucket + 1}/{len(masks.BUCKETS)}] {name}: writing {args.per_bucket} masks to {folder}',
        file=sys.stderr,
        flush=True,
    )
    ratios = []
    for index in range(args.per_bucket):
      mask = masks.procedural_test_mask(bucket, index, args.size, args.seed)
      _write(folder / f'{index:0{digits}d}.png', mask)
      ratios.append(masks.hole_ratio(mask))
    print(
        f'{name}: {args.per_bucket} masks, hole ratio {min(ratios):.4f}..{max(ratios):.4f} '
        f'in {folder}',
        flush=True,
    )
  if args.regular:
    for name, mask in masks.regular_masks(args.size).items():
      _write(out / 'regular' / f'{name}.png', mask)
      print(f'regular/{name}.png: hole ratio {masks.hole_ratio(mask):.4f}', flush=True)


def run() -> None:
  """The console-script entry point (`lgnet-make-masks`), also what `python -m` runs."""
  cli.run_cli(main)


if __name__ == '__main__':
  run()
