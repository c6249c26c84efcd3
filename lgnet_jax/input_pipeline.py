"""grain input pipelines: image sources, the reference's preprocessing, masks, batching.

Every record becomes {'image': (256, 256, 3) float32 in [-1, 1], 'mask': (256, 256, 1)
float32 in [0, 1], 1 = hole}. Randomness (crops, flips, masks) comes from grain's per-record
seeds, so a run is reproducible and its iterator position is checkpointed with the model.
"""

import dataclasses
import hashlib
import math
import pathlib

import grain.python as grain
import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from lgnet_jax import image_io
from lgnet_jax import masks as masks_lib

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')
# Photographs bundled with scikit-image, used by the demo configuration.
DEMO_PHOTOS = ('astronaut.png', 'chelsea.png', 'coffee.png', 'hubble_deep_field.jpg', 'ihc.png',
               'motorcycle_left.png', 'motorcycle_right.png', 'retina.jpg', 'rocket.jpg',
               'camera.png', 'brick.png', 'grass.png', 'gravel.png', 'moon.png')


class DataError(ValueError):
  """Data that is missing or unusable, with instructions to prepare it."""


PLACES2_HELP = (
    'Places2 is read through TFDS places365_small: on a machine with internet run '
    '`tfds build places365_small --data_dir=DIR --file_format=array_record` (or copy a prepared '
    'tensorflow_datasets '
    'folder), then pass --config.data.tfds_data_dir=DIR; or point the config at image '
    'folders with --config.data.source=folder --config.data.train_dir=PATH')
CELEBA_HQ_HELP = (
    'CelebA-HQ is read through TFDS celeb_a_hq/256, which needs a manual download: place the '
    'files in DIR/downloads/manual as the TFDS celeb_a_hq page describes, run '
    '`tfds build celeb_a_hq/256 --data_dir=DIR --manual_dir=DIR/downloads/manual '
    '--file_format=array_record`, then pass '
    '--config.data.tfds_data_dir=DIR')


def list_images(folder: str | pathlib.Path) -> list[str]:
  """Image files under `folder`, recursively, sorted."""
  root = pathlib.Path(folder)
  if not root.is_dir():
    raise DataError(f'image folder {root} does not exist')
  files = sorted(str(p) for p in root.rglob('*') if p.suffix.lower() in IMAGE_EXTENSIONS)
  if not files:
    raise DataError(f'image folder {root} holds no {"/".join(e[1:] for e in IMAGE_EXTENSIONS)} image')
  return files


class FileSource(grain.RandomAccessDataSource):
  """Image file paths; decoding happens in the (parallel) transforms."""

  def __init__(self, paths: list[str]):
    self._paths = paths

  def __len__(self) -> int:
    return len(self._paths)

  def __getitem__(self, index: int) -> dict:
    return {'path': self._paths[index]}

  def __repr__(self) -> str:
    # grain compares this with the checkpoint's to refuse resuming on other data.
    digest = hashlib.sha1('\n'.join(self._paths).encode()).hexdigest()[:16]
    return f'FileSource({len(self._paths)} files, paths sha1 {digest})'


class DemoPhotoSource(grain.RandomAccessDataSource):
  """`length` records cycling over scikit-image's bundled photographs (decoded once)."""

  def __init__(self, length: int):
    import skimage  # pylint: disable=import-outside-toplevel
    folder = pathlib.Path(skimage.__file__).parent / 'data'
    self._photos = [image_io.load_image(folder / name) for name in DEMO_PHOTOS]
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict:
    return {'image': self._photos[index % len(self._photos)]}

  def __repr__(self) -> str:
    return f'DemoPhotoSource(length={self._length}, photos={len(self._photos)})'


@dataclasses.dataclass
class Decode(grain.MapTransform):
  def map(self, record: dict) -> dict:
    if 'image' not in record:
      record = {'image': image_io.load_image(record['path'])}
    return record


def _resize(image: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), resample))


@dataclasses.dataclass
class TrainPreprocess(grain.RandomMapTransform):
  """The reference's training preprocessing, with a procedural mask per image.

  `crop` takes a random size x size crop (photos larger than the model input, the demo);
  otherwise the image is resized to size x size (bicubic). Then a random horizontal flip,
  scaling to [-1, 1], and an independent free-form mask.
  """
  size: int = 256
  crop: bool = False
  hole_ratio: tuple[float, float] = (0.05, 0.5)

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    image = record['image']
    if self.crop:
      scale = max(self.size / image.shape[0], self.size / image.shape[1], 1.0)
      if scale > 1.0:
        image = np.asarray(Image.fromarray(image).resize(
            (math.ceil(image.shape[1] * scale), math.ceil(image.shape[0] * scale)), Image.BICUBIC))
      top = int(rng.integers(0, image.shape[0] - self.size + 1))
      left = int(rng.integers(0, image.shape[1] - self.size + 1))
      image = image[top:top + self.size, left:left + self.size]
    else:
      image = _resize(image, self.size, Image.BICUBIC)
    if rng.random() < 0.5:
      image = image[:, ::-1]
    mask = masks_lib.brush_stroke_mask(rng, self.size, tuple(self.hole_ratio))
    return {'image': (image.astype(np.float32) / 127.5 - 1.0),  # (H, W, 3)
            'mask': mask[..., None]}  # (H, W, 1)


def _tfds_source(name: str, split: str, data_dir: str | None, help_text: str):
  """A TFDS array_record data source, or a DataError saying how to prepare it."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DataError(f'{name} is not prepared in {builder.data_dir}: {help_text}')
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # e.g. prepared as TFRecord, which has no random access
    raise DataError(f'{name} ({split}) in {builder.data_dir} cannot be read with random access '
                    f'({" ".join(str(e).split())[:200]}): {help_text}') from e


def train_source(data: ml_collections.ConfigDict) -> tuple[grain.RandomAccessDataSource, bool]:
  """The training records and whether they need random crops (demo photos)."""
  if data.source == 'demo':
    return DemoPhotoSource(data.demo_num_images), True
  if data.source == 'folder':
    if not data.get('train_dir'):
      raise DataError('data.source=folder needs --config.data.train_dir=PATH (a folder of images)')
    return FileSource(list_images(data.train_dir)), False
  if data.source == 'places2':
    return _tfds_source('places365_small', 'train', data.get('tfds_data_dir'), PLACES2_HELP), False
  if data.source == 'celeba_hq':
    return _tfds_source('celeb_a_hq/256', 'train', data.get('tfds_data_dir'), CELEBA_HQ_HELP), False
  raise DataError(f'unknown data.source {data.source!r}; choose demo, folder, places2 or celeba_hq')


def create_train_iterator(config: ml_collections.ConfigDict) -> tuple[grain.PyGrainDatasetIterator, int]:
  """This process's training iterator (local batches) and the dataset size.

  The global batch `config.train.batch_size` is split evenly over processes; each process
  reads its own shard of a seeded shuffle, repeated forever.
  """
  source, crop = train_source(config.data)
  if len(source) == 0:
    raise DataError(f'the {config.data.source} training split is empty')
  process_count = jax.process_count()
  if config.train.batch_size % process_count:
    raise DataError(f'train.batch_size {config.train.batch_size} is not divisible by '
                    f'{process_count} processes')
  local_batch = config.train.batch_size // process_count
  sampler = grain.IndexSampler(len(source), shard_options=grain.ShardByJaxProcess(drop_remainder=True),
                               shuffle=True, num_epochs=None, seed=config.seed)
  operations = [Decode(),
                TrainPreprocess(config.model.image_size, crop, tuple(config.data.hole_ratio)),
                grain.Batch(local_batch, drop_remainder=True)]
  loader = grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                            worker_count=config.data.num_workers,
                            read_options=grain.ReadOptions(num_threads=config.data.read_threads,
                                                           prefetch_buffer_size=config.data.prefetch))
  logging.info('training data: %s, %d images, local batch %d', config.data.source, len(source),
               local_batch)
  return iter(loader), len(source)
