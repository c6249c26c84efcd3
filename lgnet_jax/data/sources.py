"""Image sources: decoded images by index that survive bad files, and the folders they list.

A source is a grain random-access data source of {'image': uint8 (H, W, 3), 'skipped': int32}.
An image that cannot be read (unreadable, truncated or zero-byte file; a corrupt TFDS record)
is logged once per process (an absl warning naming it; every grain worker process logs its own)
and replaced by the next readable image of the source with skipped=1, so an epoch keeps its
length and a run never stops on a bad file. A missing or empty folder or file list stops at
start with a DataError that names it and says what was expected.
"""

import hashlib
import os
import pathlib
import threading
from collections.abc import Sequence
from typing import Any

import grain.python as grain
import ml_collections
import numpy as np
import skimage
from absl import logging

from lgnet_jax import errors
from lgnet_jax.data import image_io

# Photographs bundled with scikit-image, used by the demo configuration.
DEMO_PHOTOS = (
    'astronaut.png',
    'chelsea.png',
    'coffee.png',
    'hubble_deep_field.jpg',
    'ihc.png',
    'motorcycle_left.png',
    'motorcycle_right.png',
    'retina.jpg',
    'rocket.jpg',
    'camera.png',
    'brick.png',
    'grass.png',
    'gravel.png',
    'moon.png',
)
FOLDER_HELP = (
    'expected a folder of images (jpg, jpeg, png, webp or bmp; subfolders are searched), '
    'e.g. paris_train/*.png and paris_eval/*.png for Paris StreetView, or a text file of '
    'image paths (--config.data.train_files / --config.data.test_files)'
)

_UNREADABLE: set[str] = set()  # this process's bad images, each logged once
_UNREADABLE_LOCK = threading.Lock()


class DataError(errors.UserError):
  """Data that is missing or unusable, with instructions to prepare it."""


def list_images(folder: str | os.PathLike) -> list[str]:
  """Image files under `folder`, recursively, sorted; DataError when there are none."""
  root = pathlib.Path(folder)
  if not root.is_dir():
    raise DataError(f'image folder {root} does not exist: {FOLDER_HELP}')
  files = image_io.list_image_files(root)
  if not files:
    raise DataError(f'image folder {root} holds no image: {FOLDER_HELP}')
  return files


def read_file_list(list_file: str | os.PathLike) -> list[str]:
  """The image paths of a text file, one per line; relative ones are against its folder.

  Blank lines and lines starting with '#' are ignored. Listed files are not checked here:
  one that is missing or unreadable is skipped (and counted) when it is read.
  """
  path = pathlib.Path(list_file)
  if not path.is_file():
    raise DataError(f'image list {path} does not exist: {FOLDER_HELP}')
  files = []
  for line in path.read_text(encoding='utf-8').splitlines():
    line = line.strip()
    if line and not line.startswith('#'):
      entry = pathlib.Path(line).expanduser()
      files.append(str(entry if entry.is_absolute() else path.parent / entry))
  if not files:
    raise DataError(f'image list {path} names no image: {FOLDER_HELP}')
  return files


def note_unreadable(key: str, error: Exception, what: str = 'image') -> None:
  """Logs once per process that `key` cannot be read: an image path or record, or (for another
  `what`, such as a mask drawn at random) the error message, which names the file."""
  with _UNREADABLE_LOCK:
    if key in _UNREADABLE:
      return
    _UNREADABLE.add(key)
  if what == 'image':
    logging.warning('skipping unreadable image %s: %s', key, errors.one_line(error))
  else:
    logging.warning('skipping unreadable %s: %s', what, errors.one_line(error))


def read_options(data: ml_collections.ConfigDict) -> grain.ReadOptions:
  """How many threads read records of a source, and how far ahead (`data.read_threads`, ...)."""
  return grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=data.prefetch)


class ImageSource(grain.RandomAccessDataSource):
  """Decoded uint8 (H, W, 3) images by index; an unreadable one is replaced by the next good one.

  Subclasses implement `__len__`, `_read(index)` (raising on bad data) and `_key(index)` (a
  name for logs). `__getitem__` returns {'image', 'skipped'}: when image `index` cannot be
  read, the next readable image (cyclically) is returned with skipped=1, so every epoch
  sees as many records and a run never stops on a bad file.
  """

  read_errors: tuple[type[BaseException], ...] = (image_io.ImageError,)

  def __len__(self) -> int:
    raise NotImplementedError

  def _read(self, index: int) -> np.ndarray:
    raise NotImplementedError

  def _key(self, index: int) -> str:
    raise NotImplementedError

  def read(self, index: int) -> np.ndarray | None:
    """Image `index`, or None when it cannot be read (logged once)."""
    key = self._key(index)
    if key in _UNREADABLE:
      return None
    try:
      return self._read(index)
    except self.read_errors as e:
      note_unreadable(key, e)
      return None

  def __getitem__(self, index: int) -> dict[str, Any]:
    n = len(self)
    for offset in range(n):
      image = self.read((index + offset) % n)
      if image is not None:
        return {'image': image, 'skipped': np.int32(offset > 0)}
    raise DataError(f'no image of {self!r} can be read')


class FileSource(ImageSource):
  """Image files, decoded by `image_io.load_image` (any mode, EXIF orientation applied)."""

  def __init__(self, paths: Sequence[str]):
    self._paths = list(paths)

  def __len__(self) -> int:
    return len(self._paths)

  def _read(self, index: int) -> np.ndarray:
    return image_io.load_image(self._paths[index])

  def _key(self, index: int) -> str:
    return self._paths[index]

  def __repr__(self) -> str:
    # grain compares this with the checkpoint's to refuse resuming on other data.
    digest = hashlib.sha1('\n'.join(self._paths).encode()).hexdigest()[:16]
    return f'FileSource({len(self._paths)} files, paths sha1 {digest})'


class DemoPhotoSource(grain.RandomAccessDataSource):
  """`length` records cycling over scikit-image's bundled photographs (decoded once)."""

  def __init__(self, length: int):
    folder = pathlib.Path(skimage.__file__).parent / 'data'
    self._photos = [image_io.load_image(folder / name) for name in DEMO_PHOTOS]
    self._length = length

  def __len__(self) -> int:
    return self._length

  def read(self, index: int) -> np.ndarray:
    return self._photos[index % len(self._photos)]

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'image': self.read(index), 'skipped': np.int32(0)}

  def __repr__(self) -> str:
    return f'DemoPhotoSource(length={self._length}, photos={len(self._photos)})'
