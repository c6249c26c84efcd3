"""Another inpainting method's results (the "X" of X_LG), read from files and paired by file name.

With `model.first_stage='precomputed'` LG learns and is scored behind a method that ran
elsewhere (LaMa, a PyTorch PEN-Net, ...): its results are image files, each found by the name
of the image it was made from (`name_key`: the path relative to the folder, without the
extension; any extension of `image_io.IMAGE_EXTENSIONS` matches).

Training (`data.source='folder'`): the image a/b/x.jpg of `data.train_dir` (or x.jpg of the
list `data.train_files`: its bare name) pairs with the mask `data.train_mask_dir`/a/b/x.* and the
result `data.first_stage_dir`/a/b/x.*. Every triple is checked from the file headers when the
iterator is made (`train_triples`): a missing, doubled or unreadable file, or sizes that differ,
stop with one DataError line. `TriplePreprocess` resizes the three to `model.image_size` and
flips them together.

Evaluation: `lgnet eval-pairs` (tools/eval_pairs.py) writes the evaluation's pairs as
DIR/<bucket>/images/<pair_name>.png and DIR/<bucket>/masks/<pair_name>.png; the method's
results go in `data.test_first_stage_dir`/<bucket>/<pair_name>.<ext>, image_size x image_size
like the pairs (another size is refused, not resized), and `PairResults` reads them.

Inference: `result_for` (or `NamedImages.load`) reads the result made from one image.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
from typing import Any

import grain.python as grain
import ml_collections
import numpy as np
from PIL import Image

from lgnet_jax import errors
from lgnet_jax.data import datasets, image_io, masks, sources

_ORIENTATION = 0x0112  # the EXIF tag; orientations 5 to 8 swap width and height
_SHOWN = 3  # problems named in an error line
_PROBLEM_CHARS = 300  # each cut to this length
EXTENSIONS = '/'.join(extension[1:] for extension in image_io.IMAGE_EXTENSIONS)  # for messages


def pair_name(index: int) -> str:
  """The file stem of evaluation pair `index` (its image, mask and result): '00042'."""
  return f'{index:05d}'


def name_key(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
  """How a file is paired: its path relative to `root` (else its bare name), '/'-separated,
  without an image extension. 'R/a/b/x.jpg' under R -> 'a/b/x'; 'x.png' or 'x' -> 'x'."""
  path = pathlib.PurePath(path)
  relative = path.relative_to(root) if root is not None else pathlib.PurePath(path.name)
  if relative.suffix.lower() in image_io.IMAGE_EXTENSIONS:
    relative = relative.with_suffix('')
  return relative.as_posix()


def oriented_size(path: str | os.PathLike) -> tuple[int, int]:
  """(width, height) of an image file as `image_io.load_image` decodes it (EXIF orientation
  applied), from its header alone; ImageError naming the file when that cannot be read."""
  try:
    if os.path.getsize(path) == 0:
      raise image_io.ImageError(f'{path} is empty (0 bytes)')
    with Image.open(path) as img:
      width, height = img.size
      # A PNG whose EXIF follows its pixels would be decoded to find it (rare): taken as upright.
      exif = img.getexif() if img.format != 'PNG' or 'exif' in img.info else {}
  except image_io.ImageError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Pillow raises many types
    raise image_io.ImageError(f'cannot read {path}: {errors.one_line(e)}') from None
  return (height, width) if exif.get(_ORIENTATION) in (5, 6, 7, 8) else (width, height)


class NamedImages:
  """The image files under `folder` (recursively) by `name_key`: where results and masks are
  found for an image. `what` names them in messages ('mask', 'first-stage result')."""

  def __init__(self, folder: str | os.PathLike, what: str):
    self.root, self.what = pathlib.Path(folder), what
    if not self.root.is_dir():
      raise sources.DataError(f'{what} folder {self.root} does not exist')
    self._files: dict[str, list[str]] = {}
    for path in image_io.list_image_files(self.root):
      self._files.setdefault(name_key(path, self.root), []).append(path)

  def find(self, key: str) -> list[str]:
    """The files of name `key` (one, or none or several: a problem)."""
    return self._files.get(key, [])

  def problem(self, key: str) -> str | None:
    """What keeps `key` from naming one file (none or several), or None."""
    found = self.find(key)
    if not found:
      return f'no {self.what} {self.root / key}.*'
    if len(found) > 1:
      more = f' and {len(found) - 2} more' if len(found) > 2 else ''
      return f'{len(found)} {self.what}s of one name ({found[0]} and {found[1]}{more})'
    return None

  def path(self, key: str) -> str:
    """The one file of name `key`; DataError naming what was expected."""
    problem = self.problem(key)
    if problem:
      raise sources.DataError(f'{problem} (one file, any of {EXTENSIONS})')
    return self._files[key][0]

  def load(
      self,
      image: str | os.PathLike,
      root: str | os.PathLike | None = None,
      shape: tuple[int, int] | None = None,
  ) -> np.ndarray:
    """The file made from `image` (`name_key(image, root)`) as uint8 (H, W, 3) RGB.

    With `shape` (height, width), one of another size is a DataError naming it.
    """
    path = self.path(name_key(image, root))
    array = image_io.load_image(path)
    if shape is not None and array.shape[:2] != tuple(shape):
      raise sources.DataError(
          f'{self.what} {path} is {array.shape[1]}x{array.shape[0]}, expected '
          f'{shape[1]}x{shape[0]} like the image {image} it was made from'
      )
    return array


def result_for(
    folder: str | os.PathLike,
    image: str | os.PathLike,
    root: str | os.PathLike | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
  """The first-stage result in `folder` made from `image` (a path or a name), uint8 (H, W, 3).

  Found by `name_key(image, root)`: with `root`, image R/a/b/x.jpg -> folder/a/b/x.*; else
  x.jpg -> folder/x.*. A missing or doubled result, or one of another size than `shape`
  (height, width), is a DataError, an unreadable one an ImageError, each naming the file.
  For many images, make one `NamedImages(folder, 'first-stage result')` and call its `load`.
  """
  return NamedImages(folder, 'first-stage result').load(image, root, shape)


def _size_problem(triple: tuple[str, str, str]) -> str | None:
  """Why a triple's three files cannot be used together (unreadable header, sizes), or None."""
  try:
    sizes = [oriented_size(path) for path in triple]
  except image_io.ImageError as e:
    return str(e)
  named = zip(('mask', 'first-stage result'), triple[1:], sizes[1:])
  wrong = [f'{what} {path} is {w}x{h}' for what, path, (w, h) in named if (w, h) != sizes[0]]
  if not wrong:
    return None
  return f'{" and ".join(wrong)} (the image {triple[0]} is {sizes[0][0]}x{sizes[0][1]})'


def train_triples(data: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
  """The (image, mask, result) paths of every training image, each triple checked (DataError)."""
  if data.source != 'folder':
    raise sources.DataError(
        "model.first_stage='precomputed' trains on data.source=folder (images paired with "
        f'data.train_mask_dir and data.first_stage_dir by file name), not {data.source}'
    )
  for field in ('train_mask_dir', 'first_stage_dir'):
    if not data[field]:
      raise sources.DataError(
          f"model.first_stage='precomputed' needs --config.data.{field}=FOLDER: one file per "
          'training image, of the same relative path, name and size (any image extension)'
      )
  images = datasets.folder_or_list(data.train_dir, data.train_files, 'train')
  root = None if data.train_files else data.train_dir
  keys = [name_key(path, root) for path in images]
  first: dict[str, str] = {}
  for path, key in zip(images, keys):
    if first.setdefault(key, path) != path:
      raise sources.DataError(
          f'training images {first[key]} and {path} have one name {key!r}: their masks and '
          'first-stage results cannot be told apart; rename one'
      )
  mask_files = NamedImages(data.train_mask_dir, 'mask')
  results = NamedImages(data.first_stage_dir, 'first-stage result')
  problems, triples = [], []
  for path, key in zip(images, keys):
    missing = [p for p in (mask_files.problem(key), results.problem(key)) if p]
    if missing:
      problems.append(f'{" and ".join(missing)} for the image {path}')
    else:
      triples.append((path, mask_files.path(key), results.path(key)))
  with concurrent.futures.ThreadPoolExecutor(max(1, data.read_threads)) as pool:
    problems += [p for p in pool.map(_size_problem, triples) if p]
  if problems:
    shown = [errors.clip(p, _PROBLEM_CHARS) for p in problems]
    raise sources.DataError(
        f'{len(problems)} of {len(images)} training images have no usable mask and first-stage '
        f'result: {errors.short_list(shown, _SHOWN)} (expected per image one mask in '
        f'{data.train_mask_dir} and one result in {data.first_stage_dir} of its relative path, '
        f'name and size, any of {EXTENSIONS})'
    )
  return triples


class TripleSource(sources.ImageSource):
  """Training triples by index: {'image' uint8 (H, W, 3), 'mask' float32 (H, W) in [0, 1],
  1 = hole (`image_io.load_mask_values`, `invert` as data.mask_invert), 'first_stage' uint8
  (H, W, 3), 'skipped'}; a triple with an unreadable file is replaced by the next readable one
  with skipped=1 (logged once), as `sources.ImageSource` does for images."""

  def __init__(self, triples: list[tuple[str, str, str]], invert: bool = False):
    self._triples, self._invert = list(triples), bool(invert)

  def __len__(self) -> int:
    return len(self._triples)

  def _read(self, index: int) -> dict[str, np.ndarray]:
    image, mask, result = self._triples[index]
    return {
        'image': image_io.load_image(image),
        'mask': image_io.load_mask_values(mask, invert=self._invert),
        'first_stage': image_io.load_image(result),
    }

  def _key(self, index: int) -> str:
    return self._triples[index][0]

  def __getitem__(self, index: int) -> dict[str, Any]:
    n = len(self)
    for offset in range(n):
      triple = self.read((index + offset) % n)
      if triple is not None:
        return {**triple, 'skipped': np.int32(offset > 0)}
    raise sources.DataError(f'no triple of {self!r} can be read')

  def __repr__(self) -> str:
    # grain compares this with the checkpoint's to refuse resuming on other data.
    text = '\n'.join('\t'.join(triple) for triple in self._triples)
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    return f'TripleSource({len(self)} triples, invert={self._invert}, paths sha1 {digest})'


@dataclasses.dataclass
class TriplePreprocess(grain.RandomMapTransform):
  """A triple at size x size: 'image' and 'first_stage' (H, W, 3) float32 in [-1, 1], resized
  bicubic as `preprocess.TrainPreprocess` resizes images; 'mask' (H, W, 1) float32 in [0, 1],
  resized as the test masks (`masks.resize_mask`), binarised at 0.5 when `binarize`; the three
  flipped horizontally together with probability 1/2 (grain's per-record generator). No crop,
  no drawn mask: the result was made from this image and this mask."""

  size: int = 256
  binarize: bool = False

  def random_map(self, record: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = image_io.resize_image(record['image'], self.size)
    result = image_io.resize_image(record['first_stage'], self.size)
    mask = masks.resize_mask(record['mask'], self.size)
    if self.binarize:
      mask = image_io.binarize(mask)
    if rng.random() < 0.5:
      image, mask, result = image[:, ::-1], mask[:, ::-1], result[:, ::-1]
    return {
        'image': image_io.to_signed_unit(np.ascontiguousarray(image)),
        'mask': np.ascontiguousarray(mask, np.float32)[..., None],
        'first_stage': image_io.to_signed_unit(np.ascontiguousarray(result)),
        'skipped': np.int32(record.get('skipped', 0)),
    }


class PairResults:
  """Another method's results for the evaluation pairs of hole-ratio bucket `bucket` (test
  images 0..len(images) - 1), from folder/<bucket name>/<pair_name(i)>.<ext>: float32
  (size, size, 3) in [-1, 1].

  Made, every result is checked from its header: a missing or doubled one (unless image i
  cannot be read, so its record is invalid anyway), or one not size x size, is a DataError.
  """

  def __init__(
      self,
      folder: str | os.PathLike,
      bucket: int,
      images: sources.ImageSource | sources.DemoPhotoSource,
      size: int,
  ):
    self._size = size
    named = NamedImages(pathlib.Path(folder) / masks.bucket_name(bucket), 'first-stage result')
    self._root = named.root
    self._paths: list[str | None] = []
    for index in range(len(images)):
      key = pair_name(index)
      if not named.find(key) and images.read(index) is None:
        self._paths.append(None)  # an unreadable test image: an invalid record, no result read
        continue
      problem = named.problem(key)
      if problem:
        raise sources.DataError(
            f'{problem} for evaluation pair {index} (data.test_first_stage_dir holds the '
            'results of the pairs `lgnet eval-pairs` writes, <bucket>/<index>.png)'
        )
      path = named.path(key)
      width, height = oriented_size(path)
      if (width, height) != (size, size):
        raise sources.DataError(
            f'first-stage result {path} is {width}x{height}, expected {size}x{size} '
            '(model.image_size), the size of the evaluation pair it was made from'
        )
      self._paths.append(path)

  def __len__(self) -> int:
    return len(self._paths)

  def __repr__(self) -> str:
    return f'first-stage results ({self._root}, {len(self)})'

  def __getitem__(self, index: int) -> np.ndarray:
    path = self._paths[index]
    if path is None:
      return np.zeros((self._size, self._size, 3), np.float32)
    result = image_io.load_image(path)
    if result.shape[:2] != (self._size, self._size):
      raise sources.DataError(
          f'first-stage result {path} decodes to {result.shape[1]}x{result.shape[0]}, expected '
          f'{self._size}x{self._size}'
      )
    return image_io.to_signed_unit(result)
