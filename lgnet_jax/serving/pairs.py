"""The files an inpaint command line names: one image, its mask and its output, or the folders'
images and masks paired by file stem, each with its output; all checked before the network loads
(inputs exist, outputs never land on an input, existing outputs are kept unless overwritten,
output folders accept new files)."""

import argparse
import dataclasses
import pathlib
from collections.abc import Sequence

from PIL import Image

from lgnet_jax import cli, fileio
from lgnet_jax.data import image_io

MAX_LISTED = 10  # file names a message lists before `and N more`


@dataclasses.dataclass(frozen=True)
class Pair:
  """One image, its mask and where its result goes."""

  image: pathlib.Path
  mask: pathlib.Path
  output: pathlib.Path


def listing(names: Sequence[str]) -> str:
  """The first MAX_LISTED names, comma-separated, and how many more there are."""
  shown = ', '.join(names[:MAX_LISTED])
  return shown + (f' and {len(names) - MAX_LISTED} more' if len(names) > MAX_LISTED else '')


def _single_pair(args: argparse.Namespace) -> list[Pair]:
  missing = [
      flag
      for flag, value in (('--image', args.image), ('--mask', args.mask), ('--output', args.output))
      if not value
  ]
  if missing:
    raise cli.UsageError(
        f'one image needs --image, --mask and --output; missing {", ".join(missing)}'
    )
  pair = Pair(pathlib.Path(args.image), pathlib.Path(args.mask), pathlib.Path(args.output))
  for what, path in (('image', pair.image), ('mask', pair.mask)):
    if not path.exists():
      raise cli.UsageError(f'{what} {path} does not exist')
  if pair.output.is_dir():
    raise cli.UsageError(
        f'--output {pair.output} is a folder; give a file name such as '
        f'{pair.output / "out.png"}'
    )
  image_io.output_format(pair.output)
  for what, path in (('image', pair.image), ('mask', pair.mask)):
    if pair.output.resolve() == path.resolve():
      raise cli.UsageError(f'--output {pair.output} is the input {what}; choose another file name')
  return [pair]


def _readable_extensions() -> set[str]:
  return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _files_by_stem(folder: pathlib.Path, what: str) -> dict[str, pathlib.Path]:
  """The image files of `folder` keyed by stem; two files with one stem are ambiguous."""
  if not folder.is_dir():
    raise cli.UsageError(f'{what} folder {folder} does not exist')
  extensions = _readable_extensions()
  files: dict[str, pathlib.Path] = {}
  for path in sorted(folder.iterdir()):
    if path.name.startswith('.') or not path.is_file() or path.suffix.lower() not in extensions:
      continue
    if path.stem in files:
      raise cli.UsageError(
          f'{what} folder {folder} has two files named {path.stem}: '
          f'{files[path.stem].name} and {path.name}'
      )
    files[path.stem] = path
  return files


def _folder_pairs(args: argparse.Namespace) -> tuple[list[Pair], list[str]]:
  missing = [
      flag
      for flag, value in (
          ('--image-dir', args.image_dir),
          ('--mask-dir', args.mask_dir),
          ('--output-dir', args.output_dir),
      )
      if not value
  ]
  if missing:
    raise cli.UsageError(
        f'a folder needs --image-dir, --mask-dir and --output-dir; missing {", ".join(missing)}'
    )
  image_dir, mask_dir = pathlib.Path(args.image_dir), pathlib.Path(args.mask_dir)
  output_dir = pathlib.Path(args.output_dir)
  images = _files_by_stem(image_dir, 'image')
  if not images:
    raise cli.UsageError(f'image folder {image_dir} holds no image file')
  masks = _files_by_stem(mask_dir, 'mask')
  stems = [stem for stem in images if stem in masks]
  lone_images = [stem for stem in images if stem not in masks]
  lone_masks = [stem for stem in masks if stem not in images]
  if not stems:
    raise cli.UsageError(
        f'no image in {image_dir} has a mask of the same name in {mask_dir}: images '
        f'{listing(lone_images)}; masks {listing(lone_masks) or "none"}'
    )
  warnings = [f'image {images[stem]} has no mask in {mask_dir}; skipped' for stem in lone_images]
  warnings += [f'mask {masks[stem]} has no image in {image_dir}; ignored' for stem in lone_masks]
  if output_dir.exists() and not output_dir.is_dir():
    raise cli.UsageError(f'--output-dir {output_dir} exists and is not a folder')
  pairs = [Pair(images[stem], masks[stem], output_dir / f'{stem}.png') for stem in stems]
  inputs = {path.resolve() for pair in pairs for path in (pair.image, pair.mask)}
  for pair in pairs:
    if pair.output.resolve() in inputs:
      raise cli.UsageError(
          f'output {pair.output} would overwrite an input; choose another --output-dir'
      )
  return pairs, warnings


def collect_pairs(args: argparse.Namespace) -> tuple[list[Pair], list[str]]:
  """The (image, mask, output) pairs the flags name, and warnings about files left unpaired.

  The single-file flags (--image, --mask, --output) and the folder flags (--image-dir,
  --mask-dir, --output-dir) exclude each other.
  """
  single = any((args.image, args.mask, args.output))
  folder = any((args.image_dir, args.mask_dir, args.output_dir))
  if single and folder:
    raise cli.UsageError(
        'give either --image/--mask/--output or --image-dir/--mask-dir/--output-dir, not both'
    )
  if not single and not folder:
    raise cli.UsageError(
        'give --image/--mask/--output for one image or '
        '--image-dir/--mask-dir/--output-dir for a folder'
    )
  return (_single_pair(args), []) if single else _folder_pairs(args)


def check_outputs(pairs: Sequence[Pair], overwrite: bool) -> None:
  """Before the network runs: no output file exists (unless `overwrite`) and every output
  folder, or the nearest existing folder above it, accepts new files."""
  existing = [str(pair.output) for pair in pairs if pair.output.exists()]
  if existing and not overwrite:
    raise cli.UsageError(
        f'{listing(existing)} {"exists" if len(existing) == 1 else "exist"}; '
        'pass --overwrite to replace, or choose another output'
    )
  for folder in sorted({pair.output.parent.resolve() for pair in pairs}):
    try:
      fileio.check_creatable(folder)
    except OSError as e:
      raise cli.UsageError(f'cannot write to {folder}: {e.strerror or e}') from None
