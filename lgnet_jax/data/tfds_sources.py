"""The paper's TFDS datasets: Places2 (places365_small) and CelebA-HQ (celeb_a_hq/256).

Places2 with `data.categories` set is the paper's subset: `data.train_per_category` training
images per category drawn with the fixed seed `data.subset_seed`, and every validation image
of those categories as the test set. The labels of a split are read once and cached as JSON
(`split_labels`). CelebA-HQ's 30,000 images are split by the fixed seed `data.split_seed` into
`data.celeba_test_size` test images and the rest for training. Datasets are read with random
access (array_record); an unprepared one stops with a DataError saying how to prepare it.

tensorflow_datasets is imported where it is used: it takes seconds, and folder and demo data
never need it.
"""

import difflib
import hashlib
import json
import pathlib
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from lgnet_jax import errors, fileio
from lgnet_jax.data import image_io, sources

PLACES2 = 'places365_small'
CELEBA_HQ = 'celeb_a_hq/256'
LABELS_CACHE_PREFIX = 'lgnet_jax_labels_'
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


class TfdsSource(sources.ImageSource):
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
      raise sources.DataError(
          f'{name} is not prepared in {builder.data_dir}: {help_text}'
      ) from None
    raise sources.DataError(
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
        raise sources.DataError(f'category id {category} is out of range 0..{len(names) - 1}')
      ids.append(int(category))
    elif isinstance(category, str):
      if category in names:
        ids.append(list(names).index(category))
      elif category.strip().isdigit() and 0 <= int(category) < len(names):
        ids.append(int(category))
      else:
        close = difflib.get_close_matches(category, names, n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise sources.DataError(
            f"unknown category {category!r}{hint} (names as in the dataset's label "
            'list, e.g. "beach", "desert/sand", or integer ids)'
        )
    else:
      raise sources.DataError(f'category {category!r} is neither a name nor an integer id')
  if len(set(ids)) != len(ids):
    dup = sorted({names[i] for i in ids if ids.count(i) > 1})
    raise sources.DataError(f'categories name the same class twice: {", ".join(dup)}')
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
    raise sources.DataError(
        f'the {PLACES2} {split} split has no image of categories '
        f'{list(categories or [])} (data dir {data_dir or "default"}): {PLACES2_HELP}'
    )
  return result


def celeba_hq_split(num_images: int, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) record indices: `test_size` images drawn with `seed` are the test set."""
  if not 0 < test_size < num_images:
    raise sources.DataError(
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
