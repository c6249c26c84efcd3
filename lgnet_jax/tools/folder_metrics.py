"""Shared pieces of the stand-alone FID and LPIPS tools: image folders in, batches out."""

import argparse
import pathlib
import sys
from collections.abc import Iterator

import numpy as np

from lgnet_jax import cli
from lgnet_jax.data import image_io, sources


def list_folder(folder: str) -> list[pathlib.Path]:
  try:
    return [pathlib.Path(p) for p in sources.list_images(folder)]
  except sources.DataError as e:
    raise cli.UsageError(str(e)) from None


def load_rgb(path: pathlib.Path, size: tuple[int, int] | None = None) -> np.ndarray:
  """uint8 (H, W, 3); resized (bicubic) to `size` = (W, H) when given."""
  try:
    image = image_io.load_image(path)
  except image_io.ImageError as e:
    raise cli.UsageError(str(e)) from None
  if size is not None and image.shape[1::-1] != size:
    from PIL import Image  # pylint: disable=import-outside-toplevel

    image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
  return image


def batches(items: list, batch_size: int) -> Iterator[list]:
  for start in range(0, len(items), batch_size):
    yield items[start : start + batch_size]
    print(f'{min(start + batch_size, len(items))}/{len(items)} images', file=sys.stderr)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('dir_a', help='first image folder')
  parser.add_argument('dir_b', help='second image folder')
  parser.add_argument('--batch-size', type=cli.positive_int, default=16)
  parser.add_argument('--json', action='store_true', help='print one JSON line')
