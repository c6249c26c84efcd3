"""The test set: test image i paired with mask i mod #masks of one hole-ratio bucket, batched.

A test record: 'image' (H, W, 3) float32 in [-1, 1] (resized, no flip), 'mask' (H, W, 1),
'valid' float32 (0 for padding and for an unreadable image, which is not replaced), 'index'
int32 (the image's position in the test set, -1 for padding) and 'skipped' int32 (1 for an
unreadable image). The last batch is padded to `eval.batch_size`, so shapes never change.
Masks come from `data.test_mask_dir`, bucketed by hole ratio (`masks.bucket_mask_files`), or
are drawn procedurally (`masks.procedural_test_mask`). With `data.test_first_stage_dir`, a
record also holds 'first_stage' (H, W, 3) float32 in [-1, 1]: another method's result for the
pair (`first_stage_results.PairResults`; zeros for padding and unreadable images).
"""

import functools
import hashlib
import math
import pathlib
from collections.abc import Sequence

import grain.python as grain
import jax
import ml_collections
import numpy as np

from lgnet_jax.data import datasets, first_stage_results, image_io, masks, sources


class _FileMasks:
  """Test masks read from files when needed: float32 (size, size) in [0, 1]."""

  def __init__(self, paths: Sequence[str], invert: bool, size: int):
    self._paths, self._invert, self._size = list(paths), invert, size

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> np.ndarray:
    mask = image_io.load_mask_values(self._paths[index], invert=self._invert)
    return masks.resize_mask(mask, self._size)

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
      raise sources.DataError(f'data.test_masks_per_bucket must be at least 1, got {count}')
    self._bucket, self._count, self._size, self._seed = bucket, count, size, seed

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> np.ndarray:
    return masks.procedural_test_mask(self._bucket, index, self._size, self._seed)

  def __repr__(self) -> str:
    return (
        f'procedural masks (bucket {masks.bucket_name(self._bucket)}, {self._count}, '
        f'seed {self._seed})'
    )


@functools.lru_cache(maxsize=4)
def _bucketed_mask_files(folder: str, invert: bool, size: int) -> dict[int, tuple[str, ...]]:
  return {k: tuple(v) for k, v in masks.bucket_mask_files(folder, invert=invert, size=size).items()}


def test_masks(config: ml_collections.ConfigDict, bucket: int) -> _FileMasks | _ProceduralMasks:
  """The masks of hole-ratio bucket `bucket` (0..5, `masks.BUCKETS`), in a fixed order."""
  data, size = config.data, config.model.image_size
  if not 0 <= bucket < len(masks.BUCKETS):
    raise sources.DataError(f'mask bucket {bucket} is out of range 0..{len(masks.BUCKETS) - 1}')
  folder = data.test_mask_dir
  if not folder:
    return _ProceduralMasks(bucket, data.test_masks_per_bucket, size, data.test_mask_seed)
  if not pathlib.Path(folder).is_dir():
    raise sources.DataError(
        f'test mask folder {folder} does not exist (data.test_mask_dir: a folder of '
        'mask images, bucketed by hole ratio)'
    )
  invert = bool(data.mask_invert)
  try:
    files = _bucketed_mask_files(str(folder), invert, size).get(bucket, ())
  except (masks.MaskError, image_io.ImageError) as e:
    raise sources.DataError(f'test masks {folder}: {e}') from None
  if not files:
    raise sources.DataError(
        f'test mask folder {folder} has no mask with a hole ratio in '
        f'{masks.bucket_name(bucket)}'
    )
  return _FileMasks(files, invert, size)


class PairedTestSource(grain.RandomAccessDataSource):
  """Test image i with mask i mod #masks (and result i of `results`, when given), padded with
  invalid records to a multiple of `multiple`."""

  def __init__(
      self,
      images: sources.ImageSource | sources.DemoPhotoSource,
      bucket_masks: _FileMasks | _ProceduralMasks,
      size: int,
      binarize_masks: bool,
      multiple: int,
      results: first_stage_results.PairResults | None = None,
  ):
    self._images, self._masks, self._results = images, bucket_masks, results
    self._size, self._binarize = size, binarize_masks
    self._length = math.ceil(len(images) / multiple) * multiple

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    size = self._size
    image = self._images.read(index) if index < len(self._images) else None
    if image is None:
      record = {
          'image': np.zeros((size, size, 3), np.float32),
          'mask': np.zeros((size, size, 1), np.float32),
          'valid': np.float32(0),
          'index': np.int32(-1 if index >= len(self._images) else index),
          'skipped': np.int32(index < len(self._images)),
      }
      if self._results is not None:
        record['first_stage'] = np.zeros((size, size, 3), np.float32)
      return record
    mask = self._masks[index % len(self._masks)]
    if self._binarize:
      mask = image_io.binarize(mask)
    record = {
        'image': image_io.to_signed_unit(image_io.resize_image(image, size)),
        'mask': np.asarray(mask, np.float32)[..., None],
        'valid': np.float32(1),
        'index': np.int32(index),
        'skipped': np.int32(0),
    }
    if self._results is not None:
      record['first_stage'] = self._results[index]
    return record

  def __repr__(self) -> str:
    results = '' if self._results is None else f', {self._results!r}'
    return f'PairedTestSource({self._images!r}, {self._masks!r}{results}, padded to {self._length})'


def create_test_dataset(config: ml_collections.ConfigDict, bucket: int) -> grain.DataLoader:
  """The test set with the masks of hole-ratio bucket `bucket`, as batches (iterate it again
  to start over).

  No shuffle, no flip; image i is paired with mask i mod #masks (the reference's pairing).
  Masks come from `data.test_mask_dir` (bucketed by hole ratio) or, when unset, from
  `masks.procedural_test_masks(bucket, data.test_masks_per_bucket, seed=data.test_mask_seed)`.
  Batches of `eval.batch_size` records over all processes (each process gets its share);
  the last one is padded, marked by 'valid' = 0. Same config, same batches. Records are
  prepared in `data.read_threads` threads of this process (no worker processes). With
  `data.test_first_stage_dir`, records hold 'first_stage' too, every result of this bucket
  checked here (`first_stage_results.PairResults`; `check_first_stage_results` checks all).
  """
  data = config.data
  images = datasets.test_image_source(data)
  if len(images) == 0:
    raise sources.DataError(f'the {data.source} test split is empty')
  bucket_masks = test_masks(config, bucket)
  results = None
  if data.test_first_stage_dir:
    results = first_stage_results.PairResults(
        data.test_first_stage_dir, bucket, images, config.model.image_size
    )
  batch_size = config.eval.batch_size
  process_count = jax.process_count()
  if batch_size % process_count:
    raise sources.DataError(
        f'eval.batch_size {batch_size} is not divisible by {process_count} processes'
    )
  source = PairedTestSource(
      images, bucket_masks, config.model.image_size, bool(data.mask_binarize), batch_size, results
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
      read_options=sources.read_options(data),
  )


def check_first_stage_results(config: ml_collections.ConfigDict) -> None:
  """DataError unless every bucket has a result of model.image_size for every readable test
  image in `data.test_first_stage_dir` (nothing to check when it is unset): run before the
  first bucket is scored, so a missing result of the last bucket stops evaluation at once."""
  data = config.data
  if not data.test_first_stage_dir:
    return
  images = datasets.test_image_source(data)
  for bucket in range(len(masks.BUCKETS)):
    first_stage_results.PairResults(
        data.test_first_stage_dir, bucket, images, config.model.image_size
    )
