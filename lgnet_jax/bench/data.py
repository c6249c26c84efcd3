"""Input-pipeline throughput (`--what=data`): the training iterator with the config's
preprocessing on generated photos and masks, in images per second."""

import pathlib
import tempfile
import time

import numpy as np
from PIL import Image

from lgnet_jax.data import masks as masks_lib

# Half of the generated photos as places365_small's, half of Places2's high-resolution size.
IMAGE_SIZES = ((256, 256), (683, 512))  # (width, height)
MASK_SIZE = 512  # as the NVIDIA irregular masks


def write_images(folder: pathlib.Path, count: int, seed: int = 0) -> list[tuple[int, int]]:
  """`count` JPEGs of smooth random content (photo-like file sizes); returns their sizes."""
  rng = np.random.default_rng(seed)
  sizes = []
  for i in range(count):
    width, height = IMAGE_SIZES[i % len(IMAGE_SIZES)]
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.int16)
    grain_noise = rng.integers(-12, 13, (height, width, 3))
    pixels = np.clip(smooth + grain_noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f'{i:05d}.jpg', quality=90)
    sizes.append((width, height))
  return sizes


def write_masks(folder: pathlib.Path, count: int = 32, seed: int = 0) -> None:
  """`count` free-form MASK_SIZE x MASK_SIZE mask PNGs (white = hole)."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    mask = masks_lib.brush_stroke_mask(rng, MASK_SIZE, (0.05, 0.6))
    Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f'{i:05d}.png')


def throughput(
    config, num_workers: int | None, batches: int, warmup: int, images: int, mask_mode: str
) -> dict:
  """Training-iterator throughput on `images` generated photos, timed over `batches` batches
  after `warmup`; masks from a generated folder (`mask_mode` 'folder', unless the config names
  one) or the brush-stroke generator ('procedural')."""
  # The data stack (grain, TFDS) is imported here only: the device benchmarks run on hosts
  # without it.
  from lgnet_jax.data import batching  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory(prefix='lgnet_bench_') as tmp:
    root = pathlib.Path(tmp)
    (root / 'images').mkdir()
    write_images(root / 'images', images)
    with config.unlocked():
      config.data.source = 'folder'
      config.data.train_dir = str(root / 'images')
      config.data.train_files = None
      if num_workers is not None:
        config.data.num_workers = num_workers
      if not config.data.train_mask_dir and mask_mode == 'folder':
        (root / 'masks').mkdir()
        write_masks(root / 'masks')
        config.data.train_mask_dir = str(root / 'masks')
    iterator, _ = batching.create_train_iterator(config)
    for _ in range(warmup):
      batch = next(iterator)
    batch_size = len(next(iterator)['image'])
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(iterator)
    seconds = time.perf_counter() - start
    del batch, iterator
  return {
      'what': 'data',
      'batch_size': batch_size,
      'num_workers': config.data.num_workers,
      'images_per_s': round(batches * batch_size / seconds, 1),
      'batches': batches,
      'seconds': round(seconds, 3),
      'image_size': config.model.image_size,
      'source_sizes': [f'{w}x{h}' for w, h in IMAGE_SIZES],
      'masks': 'folder' if config.data.train_mask_dir else 'procedural',
      'read_threads': config.data.read_threads,
  }
