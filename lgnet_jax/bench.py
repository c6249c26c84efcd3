"""Benchmarks: `python -m lgnet_jax.bench --what=data --config=configs/places2.py [--json]`.

--what=data  Input-pipeline throughput (images/s) of the training iterator with the config's
             preprocessing (bicubic resize, flips, mask-folder augmentation or brush strokes)
             on generated data: a temporary folder of random smooth JPEGs, half 256x256 (as
             places365_small) and half 683x512 (Places2's high-resolution size), and, unless
             the config names one, a folder of 512x512 free-form mask PNGs (as the NVIDIA
             irregular masks). Times --batches batches after --warmup batches and prints one
             line (a JSON object with --json).

  --num_workers (or --num-workers) N  grain worker processes (default: the config's).
"""

import json
import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from PIL import Image

from lgnet_jax import input_pipeline, masks

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Configuration file (its data preprocessing).')
flags.DEFINE_enum('what', 'data', ['data'], 'What to measure.')
flags.DEFINE_integer('num_workers', None, 'grain worker processes (default: config.data.num_workers).')
flags.DEFINE_integer('batches', 50, 'Batches timed.')
flags.DEFINE_integer('warmup', 5, 'Batches read before timing (worker start-up, first reads).')
flags.DEFINE_integer('images', 64, 'Generated images.')
flags.DEFINE_enum('masks', 'folder', ['folder', 'procedural'],
                  'Training masks when the config names no mask folder: generated mask files '
                  '(augmented by masks.MaskFolder) or the brush-stroke generator.')
flags.DEFINE_bool('json', False, 'Print the result as one JSON object.')
flags.mark_flags_as_required(['config'])

IMAGE_SIZES = ((256, 256), (683, 512))  # (width, height)
MASK_SIZE = 512


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
  """`count` free-form 512x512 mask PNGs (white = hole)."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    mask = masks.brush_stroke_mask(rng, MASK_SIZE, (0.05, 0.6))
    Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f'{i:05d}.png')


def bench_data(config, num_workers: int | None, batches: int, warmup: int, images: int,
               mask_mode: str) -> dict:
  """Training-iterator throughput on generated data, as a dict."""
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
      if not config.data.get('train_mask_dir') and mask_mode == 'folder':
        (root / 'masks').mkdir()
        write_masks(root / 'masks')
        config.data.train_mask_dir = str(root / 'masks')
    iterator, _ = input_pipeline.create_train_iterator(config)
    for _ in range(warmup):
      batch = next(iterator)
    batch_size = len(next(iterator)['image'])
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(iterator)
    seconds = time.perf_counter() - start
    del batch, iterator
  return {'what': 'data', 'batch_size': batch_size, 'num_workers': config.data.num_workers,
          'images_per_s': round(batches * batch_size / seconds, 1), 'batches': batches,
          'seconds': round(seconds, 3), 'image_size': config.model.image_size,
          'source_sizes': [f'{w}x{h}' for w, h in IMAGE_SIZES],
          'masks': 'folder' if config.data.get('train_mask_dir') else 'procedural',
          'read_threads': config.data.read_threads}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.what == 'data':
    result = bench_data(FLAGS.config, FLAGS.num_workers, FLAGS.batches, FLAGS.warmup, FLAGS.images,
                        FLAGS.masks)
  logging.info('%s', result)
  if FLAGS.json:
    print(json.dumps(result))
  else:
    print(f'{result["what"]}: {result["images_per_s"]} images/s (batch {result["batch_size"]}, '
          f'{result["num_workers"]} workers, {result["masks"]} masks)')


def _dashes_to_underscores(argv: list[str]) -> list[str]:
  """Accepts --num-workers for --num_workers."""
  return [a.replace('--num-workers', '--num_workers', 1) if a.startswith('--num-workers') else a
          for a in argv]


if __name__ == '__main__':
  app.run(main, argv=_dashes_to_underscores(sys.argv))
