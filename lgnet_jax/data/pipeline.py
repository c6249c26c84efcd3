"""grain input pipelines: the paper's datasets, the reference's preprocessing, masks, batching.

Sources (`config.data.source`):
  places2    TFDS `places365_small`. With `data.categories` set, the paper's subset:
             `data.train_per_category` training images per category drawn with the fixed
             seed `data.subset_seed`, and every validation image of those categories as the
             test set. The labels of a split are read once and cached as JSON (see
             `split_labels`).
  celeba_hq  TFDS `celeb_a_hq/256` (manual download): its 30,000 images split by the fixed
             seed `data.split_seed` into `data.celeba_test_size` test images and the rest
             for training.
  folder     Image folders (`data.train_dir`, `data.test_dir`; jpg/jpeg/png/webp/bmp,
             searched recursively) or file lists (`data.train_files`, `data.test_files`:
             one path per line, relative paths resolved against the list's folder).
             Paris StreetView and any user data.
  demo       Photographs bundled with scikit-image.

Training records, batched by `create_train_iterator` (keys of every batch; H = W =
`model.image_size`):
  image    (B, H, W, 3) float32 in [-1, 1]: resized to H x W bicubic (or a random crop,
           `data.random_crop`, the demo's mode), randomly flipped horizontally.
  mask     (B, H, W, 1) float32 in [0, 1], 1 = hole: a random file of `data.train_mask_dir`
           (`masks.MaskFolder`: resized bicubic, rotated, dilated, scaled, cropped; an
           unreadable file is logged once and another drawn) or a procedural brush-stroke
           mask (`data.hole_ratio`), flipped independently of the image; binarised at 0.5
           when `data.mask_binarize`.
  skipped  (B,) int32: 1 where the record's own image could not be read (unreadable,
           truncated or zero-byte file; a corrupt TFDS record) and the next readable image
           of the source was used instead. Summed over an epoch it is the number of bad
           images; each is logged once per process (an absl warning naming it; every
           grain worker process logs its own).

An empty folder, file list or split, a missing folder and an unprepared TFDS dataset stop
at start with a DataError that names it and says how to prepare the data.

Test records (`create_test_dataset(config, bucket)`): `image` (resized, no flip), `mask`
(image i paired with mask i mod #masks), `valid` (B,) float32 (0 for padding and for an
unreadable image, which is not replaced), `index` (B,) int32 (the image's position in the
test set, -1 for padding) and `skipped` (B,) int32 (1 for an unreadable image). The last
batch is padded to `eval.batch_size`, so shapes never change.

Randomness (crops, flips, masks) comes from grain's per-record seeds, so a run is
reproducible and its iterator position is checkpointed with the model.

Multi-process: training batches are cut from one global stream (a seeded shuffle of the
source, repeated), global batch k being its records [kG, (k + 1)G) for the global batch G;
process p reads only its slice [pL, (p + 1)L) of each, L = G / #processes. The global batch,
with each record's crop, flip and mask, is therefore the same whatever the number of
processes, and a run resumed on another number of processes continues from global batch
`step` (`GlobalBatchSampler`).
"""

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import pathlib
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import grain.python as grain
import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from lgnet_jax import errors, fileio
from lgnet_jax.data import image_io
from lgnet_jax.data import masks as masks_lib

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')
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
PLACES2 = 'places365_small'
CELEBA_HQ = 'celeb_a_hq/256'
LABELS_CACHE_PREFIX = 'lgnet_jax_labels_'


class DataError(errors.UserError):
  """Data that is missing or unusable, with instructions to prepare it."""


PLACES2_HELP = (
    'Places2 is read through TFDS places365_small: on a machine with internet run '
    '`tfds build places365_small --data_dir=DIR --file_format=array_record` (or copy a prepared '
    'tensorflow_datasets folder), then pass --config.data.tfds_data_dir=DIR; or point the config '
    'at image folders with --config.data.source=folder --config.data.train_dir=PATH '
    '--config.data.test_dir=PATH'
)
CELEBA_HQ_HELP = (
    'CelebA-HQ is read through TFDS celeb_a_hq/256, which needs a manual download: make '
    'data256x256.tar (the 30,000 CelebA-HQ images at 256x256, see '
    'https://github.com/tkarras/progressive_growing_of_gans#preparing-datasets-for-training), '
    'place it in DIR/downloads/manual, run `tfds build celeb_a_hq/256 --data_dir=DIR '
    '--manual_dir=DIR/downloads/manual --file_format=array_record`, then pass '
    '--config.data.tfds_data_dir=DIR'
)
FOLDER_HELP = (
    'expected a folder of images (jpg, jpeg, png, webp or bmp; subfolders are searched), '
    'e.g. paris_train/*.png and paris_eval/*.png for Paris StreetView, or a text file of '
    'image paths (--config.data.train_files / --config.data.test_files)'
)


# ------------------------------------------------------------------------------------------
# Listing images.


def list_images(folder: str | os.PathLike) -> list[str]:
  """Image files under `folder`, recursively, sorted."""
  root = pathlib.Path(folder)
  if not root.is_dir():
    raise DataError(f'image folder {root} does not exist: {FOLDER_HELP}')
  files = sorted(
      str(p)
      for p in root.rglob('*')
      if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith('.')
  )
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


def _folder_or_list(folder: str | None, list_file: str | None, what: str) -> list[str]:
  if folder and list_file:
    raise DataError(
        f'set one of data.{what}_dir ({folder}) and data.{what}_files ({list_file}), not both'
    )
  if list_file:
    return read_file_list(list_file)
  if folder:
    return list_images(folder)
  raise DataError(
      f'data.source=folder needs --config.data.{what}_dir=PATH or '
      f'--config.data.{what}_files=LIST: {FOLDER_HELP}'
  )


# ------------------------------------------------------------------------------------------
# Image sources that survive bad files.

_UNREADABLE: set[str] = set()  # this process's bad images, each logged once
_UNREADABLE_LOCK = threading.Lock()
_MASK_DRAWS = 10  # mask files tried before falling back to a brush-stroke mask


def _note_unreadable(key: str, error: Exception, what: str = 'image') -> None:
  with _UNREADABLE_LOCK:
    if key in _UNREADABLE:
      return
    _UNREADABLE.add(key)
  if what == 'image':
    logging.warning('skipping unreadable image %s: %s', key, errors.one_line(error))
  else:
    logging.warning('skipping unreadable %s: %s', what, errors.one_line(error))


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
      _note_unreadable(key, e)
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


class TfdsSource(ImageSource):
  """The 'image' feature of a TFDS random-access data source, at the given record indices."""

  read_errors = (Exception,)  # decoders raise many types for a corrupt record

  def __init__(
      self, data_source: Sequence[dict], indices: np.ndarray | None, name: str, split: str
  ):
    self._source = data_source
    self._indices = (
        np.arange(len(data_source), dtype=np.int64)
        if indices is None
        else np.asarray(indices, np.int64)
    )
    self._name, self._split = name, split

  def __len__(self) -> int:
    return len(self._indices)

  @property
  def indices(self) -> np.ndarray:
    """Record indices into the TFDS split, one per image of this source."""
    return self._indices.copy()

  def _read(self, index: int) -> np.ndarray:
    image = np.asarray(self._source[int(self._indices[index])]['image'], np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise image_io.ImageError(f'image of shape {image.shape} is not RGB')
    return image

  def _key(self, index: int) -> str:
    return f'{self._name} {self._split} record {int(self._indices[index])}'

  def __repr__(self) -> str:
    digest = hashlib.sha1(self._indices.tobytes()).hexdigest()[:16]
    return (
        f'TfdsSource({self._name}, {self._split}, {len(self)} of {len(self._source)} records, '
        f'indices sha1 {digest})'
    )


class DemoPhotoSource(grain.RandomAccessDataSource):
  """`length` records cycling over scikit-image's bundled photographs (decoded once)."""

  def __init__(self, length: int):
    import skimage  # pylint: disable=import-outside-toplevel

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


# ------------------------------------------------------------------------------------------
# TFDS: data sources, labels, the paper's subsets.


def _tfds_builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  return tfds.builder(name, data_dir=data_dir)


def tfds_data_source(
    name: str, split: str, data_dir: str | None, help_text: str, decoders: dict | None = None
) -> Sequence[dict]:
  """A TFDS random-access (array_record) data source, or a DataError saying how to prepare it."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders=decoders)
  except Exception as e:  # not prepared, or prepared as TFRecord (no random access)
    builder = _tfds_builder(name, data_dir)
    if data_dir:
      help_text = help_text.replace('DIR', str(data_dir))
    if not builder.is_prepared():
      raise DataError(f'{name} is not prepared in {builder.data_dir}: {help_text}') from None
    raise DataError(
        f'{name} ({split}) in {builder.data_dir} cannot be read with random access '
        f'({errors.one_line(e)[:200]}): {help_text}'
    ) from None


def _get_many(source: Sequence[dict], keys: list[int]) -> list[dict]:
  getitems = getattr(source, '__getitems__', None)
  if getitems is not None:
    try:
      return list(getitems(keys))
    except (TypeError, NotImplementedError):
      pass
  return [source[k] for k in keys]


def split_labels(
    name: str,
    split: str,
    data_dir: str | None,
    cache_dir: str | None,
    help_text: str,
    chunk: int = 4096,
) -> np.ndarray:
  """The 'label' of every record of a TFDS split, int64 (N,), read once and cached.

  Reading the labels means a pass over the split (images are not decoded; about 1.8M
  records for the places365_small train split). The result is cached as JSON in
  `cache_dir`, or, when that is unset, in the dataset's own folder
  (DIR/places365_small/2.1.0/lgnet_jax_labels_train.json); a cache whose dataset, version
  or size differ is ignored. A folder that cannot be written only costs the cache.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  source = tfds_data_source(
      name, split, data_dir, help_text, decoders={'image': tfds.decode.SkipDecoding()}
  )
  builder = _tfds_builder(name, data_dir)
  identity = {
      'dataset': name,
      'version': str(builder.version),
      'split': split,
      'num_examples': len(source),
  }
  folder = pathlib.Path(cache_dir) if cache_dir else pathlib.Path(builder.data_dir)
  cache = folder / f'{LABELS_CACHE_PREFIX}{split}.json'
  labels = _cached_labels(cache, identity)
  if labels is not None:
    return labels
  logging.info(
      'reading the labels of %s %s (%d records) once; caching them in %s',
      name,
      split,
      len(source),
      cache,
  )
  labels = _read_labels(source, f'{name} {split}', chunk)
  if cache_dir or folder.is_dir():  # never create a dataset folder that is not there
    try:
      folder.mkdir(parents=True, exist_ok=True)
      fileio.atomic_write_text(cache, json.dumps({**identity, 'labels': labels.tolist()}))
    except OSError as e:
      logging.warning(
          'cannot cache the labels in %s (%s); they will be read again next time', cache, e
      )
  return labels


def _cached_labels(cache: pathlib.Path, identity: dict) -> np.ndarray | None:
  """The labels stored in `cache` if it is readable and for the same split, else None."""
  if not cache.is_file():
    return None
  try:
    stored = json.loads(cache.read_text())
    if {k: stored.get(k) for k in identity} == identity and (
        len(stored['labels']) == identity['num_examples']
    ):
      return np.asarray(stored['labels'], np.int64)
    logging.warning(
        'ignoring label cache %s: it is for %s', cache, {k: stored.get(k) for k in identity}
    )
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning('ignoring unreadable label cache %s: %s', cache, e)
  return None


def _read_labels(source, what: str, chunk: int) -> np.ndarray:
  """Every record's 'label', read `chunk` records at a time with progress in the log."""
  labels = np.empty(len(source), np.int64)
  for start in range(0, len(source), chunk):
    keys = list(range(start, min(start + chunk, len(source))))
    labels[start : start + len(keys)] = [
        int(np.asarray(r['label'])) for r in _get_many(source, keys)
    ]
    if (start // chunk) % 50 == 49:
      logging.info('labels of %s: %d / %d', what, start + len(keys), len(source))
  return labels


def resolve_categories(categories: Sequence[str | int], names: Sequence[str]) -> list[int]:
  """Class ids for category names (exactly as in the label list) or integer ids."""
  ids = []
  for category in categories:
    if isinstance(category, (int, np.integer)) and not isinstance(category, bool):
      if not 0 <= int(category) < len(names):
        raise DataError(f'category id {category} is out of range 0..{len(names) - 1}')
      ids.append(int(category))
    elif isinstance(category, str):
      if category in names:
        ids.append(list(names).index(category))
      elif category.strip().isdigit() and 0 <= int(category) < len(names):
        ids.append(int(category))
      else:
        close = difflib.get_close_matches(category, names, n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise DataError(
            f"unknown category {category!r}{hint} (names as in the dataset's label "
            'list, e.g. "beach", "desert/sand", or integer ids)'
        )
    else:
      raise DataError(f'category {category!r} is neither a name nor an integer id')
  if len(set(ids)) != len(ids):
    dup = sorted({names[i] for i in ids if ids.count(i) > 1})
    raise DataError(f'categories name the same class twice: {", ".join(dup)}')
  return ids


def category_subset(
    labels: np.ndarray,
    class_ids: Sequence[int],
    per_category: int | None,
    seed: int,
    names: Sequence[str] | None = None,
) -> np.ndarray:
  """Sorted record indices: `per_category` random records of each class (all when None).

  Each class draws with its own generator seeded by (seed, class id), so one class's draw
  does not depend on which other classes are chosen.
  """
  chosen, short = [], []
  for class_id in class_ids:
    members = np.flatnonzero(np.asarray(labels) == class_id)
    if per_category is not None and len(members) > per_category:
      rng = np.random.default_rng([seed, class_id])
      members = rng.choice(members, per_category, replace=False)
    elif per_category is not None and len(members) < per_category:
      short.append(f'{names[class_id] if names is not None else class_id} ({len(members)})')
    chosen.append(members)
  if short:
    logging.warning(
        '%d categories have fewer than %d images, all of them are used: %s',
        len(short),
        per_category,
        ', '.join(short),
    )
  return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, np.int64)


def places2_source(data: ml_collections.ConfigDict, train: bool) -> TfdsSource:
  """The Places2 train or test images: the category subset when `data.categories` is set.

  Train: `data.train_per_category` images per category from the train split, drawn with
  `data.subset_seed`. Test: every validation image of the categories. Without categories,
  the whole train or validation split.
  """
  data_dir = data.tfds_data_dir
  split = 'train' if train else 'validation'
  source = tfds_data_source(PLACES2, split, data_dir, PLACES2_HELP)
  categories = data.categories
  indices = None
  if categories:
    names = _tfds_builder(PLACES2, data_dir).info.features['label'].names
    class_ids = resolve_categories(list(categories), names)
    labels = split_labels(PLACES2, split, data_dir, data.cache_dir, PLACES2_HELP)
    per_category = data.train_per_category if train else None
    indices = category_subset(labels, class_ids, per_category, data.subset_seed, names)
  result = TfdsSource(source, indices, PLACES2, split)
  if len(result) == 0:
    raise DataError(
        f'the {PLACES2} {split} split has no image of categories '
        f'{list(categories or [])} (data dir {data_dir or "default"}): {PLACES2_HELP}'
    )
  return result


def celeba_hq_split(num_images: int, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) record indices: `test_size` images drawn with `seed` are the test set."""
  if not 0 < test_size < num_images:
    raise DataError(
        f'data.celeba_test_size {test_size} must be between 1 and the number of '
        f'images - 1 ({num_images - 1})'
    )
  permutation = np.random.default_rng(seed).permutation(num_images)
  return np.sort(permutation[test_size:]), np.sort(permutation[:test_size])


def celeba_hq_source(data: ml_collections.ConfigDict, train: bool) -> TfdsSource:
  """CelebA-HQ's train or test images from the builder's single 30,000-image split."""
  source = tfds_data_source(CELEBA_HQ, 'train', data.tfds_data_dir, CELEBA_HQ_HELP)
  train_indices, test_indices = celeba_hq_split(len(source), data.celeba_test_size, data.split_seed)
  return TfdsSource(
      source, train_indices if train else test_indices, CELEBA_HQ, 'train' if train else 'test'
  )


# ------------------------------------------------------------------------------------------
# Choosing the sources.


def train_source(data: ml_collections.ConfigDict) -> tuple[grain.RandomAccessDataSource, bool]:
  """The training images and whether they are randomly cropped (default: demo photos only)."""
  crop = data.random_crop
  crop = data.source == 'demo' if crop is None else bool(crop)
  if data.source == 'demo':
    return DemoPhotoSource(data.demo_num_images), crop
  if data.source == 'folder':
    return FileSource(_folder_or_list(data.train_dir, data.train_files, 'train')), crop
  if data.source == 'places2':
    return places2_source(data, train=True), crop
  if data.source == 'celeba_hq':
    return celeba_hq_source(data, train=True), crop
  raise DataError(f'unknown data.source {data.source!r}; choose demo, folder, places2 or celeba_hq')


def test_image_source(data: ml_collections.ConfigDict) -> ImageSource | DemoPhotoSource:
  """The test images, in a fixed order (`len()` is the size of the test set)."""
  if data.source == 'demo':
    return DemoPhotoSource(len(DEMO_PHOTOS))
  if data.source == 'folder':
    return FileSource(_folder_or_list(data.test_dir, data.test_files, 'test'))
  if data.source == 'places2':
    return places2_source(data, train=False)
  if data.source == 'celeba_hq':
    return celeba_hq_source(data, train=False)
  raise DataError(f'unknown data.source {data.source!r}; choose demo, folder, places2 or celeba_hq')


# ------------------------------------------------------------------------------------------
# Preprocessing.


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W, 3) -> (size, size, 3), bicubic (as the reference's transforms.Resize)."""
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def to_signed_unit(image: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1]."""
  return image.astype(np.float32) / 127.5 - 1.0


def binarize(mask: np.ndarray) -> np.ndarray:
  return (mask > 0.5).astype(np.float32)


class MaskSampler(Protocol):
  """What `TrainPreprocess` draws masks from (`masks.MaskFolder`)."""

  def sample(self, rng: np.random.Generator, size: int = 256, binarize: bool = False) -> np.ndarray:
    ...


@dataclasses.dataclass
class TrainPreprocess(grain.RandomMapTransform):
  """The reference's training preprocessing, with a random mask per image.

  `crop` takes a random size x size crop (photos larger than the model input, the demo);
  otherwise the image is resized to size x size (bicubic). Then a random horizontal flip
  and scaling to [-1, 1]. The mask is a random draw of `mask_sampler` (a mask folder) or,
  when None, a procedural brush-stroke mask covering `hole_ratio`; it gets its own random
  flip, and is binarised at 0.5 when `binarize`.
  """

  size: int = 256
  crop: bool = False
  hole_ratio: tuple[float, float] = (0.05, 0.5)
  mask_sampler: MaskSampler | None = None
  binarize: bool = False

  def random_map(self, record: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    image = record['image']
    if self.crop:
      scale = max(self.size / image.shape[0], self.size / image.shape[1], 1.0)
      if scale > 1.0:
        image = np.asarray(
            Image.fromarray(image).resize(
                (math.ceil(image.shape[1] * scale), math.ceil(image.shape[0] * scale)),
                Image.BICUBIC,
            )
        )
      top = int(rng.integers(0, image.shape[0] - self.size + 1))
      left = int(rng.integers(0, image.shape[1] - self.size + 1))
      image = image[top : top + self.size, left : left + self.size]
    else:
      image = resize_image(image, self.size)
    if rng.random() < 0.5:
      image = image[:, ::-1]
    mask = self._mask(rng)
    if rng.random() < 0.5:
      mask = mask[:, ::-1]
    if self.binarize:
      mask = binarize(mask)
    return {
        'image': to_signed_unit(np.ascontiguousarray(image)),  # (H, W, 3)
        'mask': np.ascontiguousarray(mask, np.float32)[..., None],  # (H, W, 1)
        'skipped': np.int32(record.get('skipped', 0)),
    }

  def _mask(self, rng: np.random.Generator) -> np.ndarray:
    """A draw of the mask folder (an unreadable file is logged once and another drawn)."""
    if self.mask_sampler is not None:
      for _ in range(_MASK_DRAWS):
        try:
          mask = self.mask_sampler.sample(rng, self.size, self.binarize)
          return masks_lib.resize_mask(mask, self.size)
        except masks_lib.MaskError as e:
          _note_unreadable(str(e), e, 'mask')
    return masks_lib.brush_stroke_mask(rng, self.size, tuple(self.hole_ratio))


# ------------------------------------------------------------------------------------------
# Training.


def _read_options(data: ml_collections.ConfigDict) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=data.prefetch)


def train_mask_sampler(data: ml_collections.ConfigDict) -> MaskSampler | None:
  """The training mask folder (`data.train_mask_dir`), or None for procedural masks."""
  folder = data.train_mask_dir
  if not folder:
    return None
  if not pathlib.Path(folder).is_dir():
    raise DataError(
        f'training mask folder {folder} does not exist (data.train_mask_dir: a '
        'folder of mask images, white = hole unless data.mask_invert)'
    )
  try:
    return masks_lib.MaskFolder(folder, invert=data.mask_invert)
  except masks_lib.MaskError as e:
    raise DataError(f'training masks {folder}: {e}') from None


class GlobalBatchSampler:
  """This process's slice of every global batch of a seeded, endlessly repeated shuffle.

  Local record i (batch i // L, position i % L, L = global_batch / process_count) is
  record (start_batch + i // L) * global_batch + process_index * L + i % L of the global
  stream, with that record's own random generator: a global batch and its augmentation do
  not depend on how many processes read it.
  """

  def __init__(
      self,
      num_records: int,
      global_batch: int,
      process_index: int,
      process_count: int,
      seed: int,
      start_batch: int = 0,
  ):
    if global_batch % process_count:
      raise DataError(
          f'train.batch_size {global_batch} is not divisible by {process_count} processes'
      )
    self._stream = grain.IndexSampler(
        num_records, shard_options=grain.NoSharding(), shuffle=True, num_epochs=None, seed=seed
    )
    self._global_batch = global_batch
    self._local_batch = global_batch // process_count
    self._process_index = process_index
    self._start_batch = start_batch

  def __len__(self) -> int:
    return len(self._stream)

  def global_index(self, index: int) -> int:
    batch, position = divmod(index, self._local_batch)
    return (
        (self._start_batch + batch) * self._global_batch
        + self._process_index * self._local_batch
        + position
    )

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    record = self._stream[self.global_index(index)]
    return grain.RecordMetadata(index=index, record_key=record.record_key, rng=record.rng)

  def __repr__(self) -> str:
    return (
        f'GlobalBatchSampler({self._stream!r}, global batch {self._global_batch}, process '
        f'{self._process_index} reads {self._local_batch}, from batch {self._start_batch})'
    )


def create_train_iterator(
    config: ml_collections.ConfigDict, start_batch: int = 0
) -> tuple[grain.PyGrainDatasetIterator, int]:
  """This process's training iterator (local batches) and the dataset size.

  The global batch `config.train.batch_size` is split evenly over processes; each process
  reads its slice of every global batch (`GlobalBatchSampler`), starting at global batch
  `start_batch`. Batches hold 'image', 'mask' and 'skipped' (see the module docstring).
  """
  data = config.data
  source, crop = train_source(data)
  if len(source) == 0:
    raise DataError(f'the {data.source} training split is empty')
  process_count = jax.process_count()
  if config.train.batch_size % process_count:
    raise DataError(
        f'train.batch_size {config.train.batch_size} is not divisible by '
        f'{process_count} processes'
    )
  local_batch = config.train.batch_size // process_count
  sampler = GlobalBatchSampler(
      len(source),
      config.train.batch_size,
      jax.process_index(),
      process_count,
      config.seed,
      start_batch,
  )
  preprocess = TrainPreprocess(
      config.model.image_size,
      crop,
      tuple(data.hole_ratio),
      train_mask_sampler(data),
      bool(data.mask_binarize),
  )
  # The sampler already serves only this process's records.
  loader = grain.DataLoader(
      data_source=source,
      sampler=sampler,
      shard_options=grain.NoSharding(),
      operations=[preprocess, grain.Batch(local_batch, drop_remainder=True)],
      worker_count=data.num_workers,
      worker_buffer_size=data.worker_buffer_size,
      read_options=_read_options(data),
  )
  logging.info(
      'training data: %s, %r, %r, masks from %s',
      data.source,
      source,
      sampler,
      data.train_mask_dir or 'the brush-stroke generator',
  )
  return iter(loader), len(source)


# ------------------------------------------------------------------------------------------
# Test data.


class _FileMasks:
  """Test masks read from files when needed: float32 (size, size) in [0, 1]."""

  def __init__(self, paths: Sequence[str], invert: bool, size: int):
    self._paths, self._invert, self._size = list(paths), invert, size

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> np.ndarray:
    mask = masks_lib.load_soft_mask(self._paths[index], invert=self._invert)
    return masks_lib.resize_mask(mask, self._size)

  def __repr__(self) -> str:
    digest = hashlib.sha1('\n'.join(self._paths).encode()).hexdigest()[:16]
    return f'mask files ({len(self)}, sha1 {digest})'


class _ProceduralMasks:
  """`masks.procedural_test_mask(bucket, k, size, seed)` for k < count, drawn when needed.

  Mask k depends only on (seed, bucket, k, size): the same as
  `masks.procedural_test_masks(bucket, count, size, seed)[k]`, without holding them all.
  """

  def __init__(self, bucket: int, count: int, size: int, seed: int):
    if count < 1:
      raise DataError(f'data.test_masks_per_bucket must be at least 1, got {count}')
    self._bucket, self._count, self._size, self._seed = bucket, count, size, seed

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> np.ndarray:
    return masks_lib.procedural_test_mask(self._bucket, index, self._size, self._seed)

  def __repr__(self) -> str:
    return (
        f'procedural masks (bucket {masks_lib.bucket_name(self._bucket)}, {self._count}, '
        f'seed {self._seed})'
    )


@functools.lru_cache(maxsize=4)
def _bucketed_mask_files(folder: str, invert: bool, size: int) -> dict[int, tuple[str, ...]]:
  return {
      k: tuple(v) for k, v in masks_lib.bucket_mask_files(folder, invert=invert, size=size).items()
  }


def test_masks(config: ml_collections.ConfigDict, bucket: int) -> _FileMasks | _ProceduralMasks:
  """The masks of hole-ratio bucket `bucket` (0..5, `masks.BUCKETS`), in a fixed order."""
  data, size = config.data, config.model.image_size
  if not 0 <= bucket < len(masks_lib.BUCKETS):
    raise DataError(f'mask bucket {bucket} is out of range 0..{len(masks_lib.BUCKETS) - 1}')
  folder = data.test_mask_dir
  if not folder:
    return _ProceduralMasks(bucket, data.test_masks_per_bucket, size, data.test_mask_seed)
  if not pathlib.Path(folder).is_dir():
    raise DataError(
        f'test mask folder {folder} does not exist (data.test_mask_dir: a folder of '
        'mask images, bucketed by hole ratio)'
    )
  invert = bool(data.mask_invert)
  try:
    files = _bucketed_mask_files(str(folder), invert, size).get(bucket, ())
  except masks_lib.MaskError as e:
    raise DataError(f'test masks {folder}: {e}') from None
  if not files:
    raise DataError(
        f'test mask folder {folder} has no mask with a hole ratio in '
        f'{masks_lib.bucket_name(bucket)}'
    )
  return _FileMasks(files, invert, size)


class PairedTestSource(grain.RandomAccessDataSource):
  """Test image i with mask i mod #masks, padded with invalid records to a multiple of `multiple`."""

  def __init__(
      self,
      images: ImageSource | DemoPhotoSource,
      masks: _FileMasks | _ProceduralMasks,
      size: int,
      binarize_masks: bool,
      multiple: int,
  ):
    self._images, self._masks = images, masks
    self._size, self._binarize = size, binarize_masks
    self._length = math.ceil(len(images) / multiple) * multiple

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    size = self._size
    image = self._images.read(index) if index < len(self._images) else None
    if image is None:
      return {
          'image': np.zeros((size, size, 3), np.float32),
          'mask': np.zeros((size, size, 1), np.float32),
          'valid': np.float32(0),
          'index': np.int32(-1 if index >= len(self._images) else index),
          'skipped': np.int32(index < len(self._images)),
      }
    mask = self._masks[index % len(self._masks)]
    if self._binarize:
      mask = binarize(mask)
    return {
        'image': to_signed_unit(resize_image(image, size)),
        'mask': np.asarray(mask, np.float32)[..., None],
        'valid': np.float32(1),
        'index': np.int32(index),
        'skipped': np.int32(0),
    }

  def __repr__(self) -> str:
    return f'PairedTestSource({self._images!r}, {self._masks!r}, padded to {self._length})'


def create_test_dataset(config: ml_collections.ConfigDict, bucket: int) -> grain.DataLoader:
  """The test set with the masks of hole-ratio bucket `bucket`, as batches (iterate it again
  to start over).

  No shuffle, no flip; image i is paired with mask i mod #masks (the reference's pairing).
  Masks come from `data.test_mask_dir` (bucketed by hole ratio) or, when unset, from
  `masks.procedural_test_masks(bucket, data.test_masks_per_bucket, seed=data.test_mask_seed)`.
  Batches of `eval.batch_size` records over all processes (each process gets its share);
  the last one is padded, marked by 'valid' = 0. Same config, same batches. Records are
  prepared in `data.read_threads` threads of this process (no worker processes).
  """
  data = config.data
  images = test_image_source(data)
  if len(images) == 0:
    raise DataError(f'the {data.source} test split is empty')
  masks = test_masks(config, bucket)
  batch_size = config.eval.batch_size
  process_count = jax.process_count()
  if batch_size % process_count:
    raise DataError(f'eval.batch_size {batch_size} is not divisible by {process_count} processes')
  source = PairedTestSource(
      images, masks, config.model.image_size, bool(data.mask_binarize), batch_size
  )
  sampler = grain.IndexSampler(
      len(source),
      shard_options=grain.ShardByJaxProcess(drop_remainder=True),
      shuffle=False,
      num_epochs=1,
  )
  # No worker processes: they would batch interleaved records apart; reading, decoding and
  # resizing happen in the source, in `data.read_threads` threads.
  return grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=[grain.Batch(batch_size // process_count, drop_remainder=True)],
      worker_count=0,
      read_options=_read_options(data),
  )
