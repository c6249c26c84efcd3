"""Hole masks (float32 (H, W), 1 = hole, 0 = known) for training and testing.

Training: free-form brush strokes drawn on the fly, or masks read from a folder (QD-IMD, the
NVIDIA irregular masks, the user's own) and augmented as the paper describes: random
rotation, dilation, scaling, cropping and flipping. Like the reference, training masks are
resized bicubically and stay soft (values in [0, 1]) unless binarisation is asked for.

Testing: the paper reports six hole-ratio buckets, (0.01, 0.1], ..., (0.5, 0.6], on the NVIDIA
irregular test masks. `bucket_mask_files` sorts such a set into the buckets;
`procedural_test_masks` draws a deterministic substitute for each bucket when that set is not
at hand; `regular_masks` gives the square and circles of the paper's Fig. 5.
"""

import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from lgnet_jax import errors
from lgnet_jax.data import image_io

BUCKETS: tuple[tuple[float, float], ...] = (
    (0.01, 0.1),
    (0.1, 0.2),
    (0.2, 0.3),
    (0.3, 0.4),
    (0.4, 0.5),
    (0.5, 0.6),
)
TEST_SIZE = 256
MIN_PROCEDURAL_SIZE = 16
# Fig. 5's four circles as (row, column, radius) at 256x256. The paper gives only the radii;
# the centres (one per quadrant) are this port's choice.
REGULAR_CIRCLES: tuple[tuple[float, float, float], ...] = (
    (64, 64, 30),
    (64, 192, 30),
    (192, 64, 40),
    (192, 192, 40),
)
_MAX_ATTEMPTS = 1000


class MaskError(errors.UserError):
  """A missing or empty mask folder; the message names it (a bad file is an ImageError)."""


def bucket_name(i: int) -> str:
  """The bucket's label as a folder name, e.g. '01-10' for (0.01, 0.1]."""
  low, high = BUCKETS[i]
  return f'{round(low * 100):02d}-{round(high * 100):02d}'


def hole_ratio(mask: np.ndarray) -> float:
  """The fraction of hole pixels; a soft mask's pixel counts as a hole above 0.5."""
  return float(np.mean(np.asarray(mask) > 0.5))


def bucket_index(ratio: float) -> int | None:
  """The index of the bucket (low, high] holding `ratio`, or None when none does."""
  for i, (low, high) in enumerate(BUCKETS):
    if low < ratio <= high:
      return i
  return None


def _random_stroke(
    rng: np.random.Generator, size: int, max_width: int
) -> tuple[int, list[tuple[float, float]]]:
  """One stroke: its width and the 3 to 8 points of its random walk."""
  x, y = rng.uniform(0, size, 2)
  width = int(rng.integers(max(max_width // 3, 2), max_width + 1))
  angle = rng.uniform(0, 2 * np.pi)
  points = [(x, y)]
  for _ in range(int(rng.integers(2, 8))):
    angle += rng.normal(0, 0.8)
    length = rng.uniform(size / 16, size / 4)
    x = float(np.clip(x + length * np.cos(angle), 0, size - 1))
    y = float(np.clip(y + length * np.sin(angle), 0, size - 1))
    points.append((x, y))
  return width, points


def _draw_segment(
    draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], width: int
) -> None:
  """A thick line with a round joint at its end, in white."""
  draw.line([start, end], fill=255, width=width)
  x, y = end
  draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)


def _max_stroke_width(size: int) -> int:
  return max(size // 12, 3)


def brush_stroke_mask(
    rng: np.random.Generator, size: int = 256, hole_ratio: tuple[float, float] = (0.05, 0.5)
) -> np.ndarray:
  """A free-form mask of random brush strokes, seeded by `rng`.

  Strokes (random walks of thick line segments with round joints) are added until the
  hole covers a target ratio drawn uniformly from `hole_ratio`; the result is (size, size)
  float32 in {0, 1}.
  """
  low, high = hole_ratio
  if not 0.0 <= low <= high <= 1.0:
    raise ValueError(f'hole_ratio must satisfy 0 <= low <= high <= 1, got {hole_ratio}')
  target = rng.uniform(low, high)
  canvas = Image.new('L', (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  max_width = _max_stroke_width(size)
  coverage = 0.0
  while coverage < target:
    width, points = _random_stroke(rng, size, max_width)
    for start, end in zip(points, points[1:]):
      _draw_segment(draw, start, end, width)
    coverage = np.count_nonzero(np.asarray(canvas)) / size**2
    if coverage >= high:  # a large last stroke overshot: keep it, the ratio stays bounded
      break
  return (np.asarray(canvas) > 0).astype(np.float32)


def _strokes_into_bucket(rng: np.random.Generator, bucket: int, size: int) -> np.ndarray | None:
  """Strokes up to a random ratio inside the bucket, segment by segment; None if it is missed.

  A segment that would push the ratio past the bucket's top is undone and drawing stops, so
  the result lands in the bucket unless a single segment jumps across all of it.
  """
  low, high = BUCKETS[bucket]
  total = size * size
  target = rng.uniform(low, high)
  canvas = Image.new('L', (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  max_width = _max_stroke_width(size)
  pixels = np.asarray(canvas)
  count = 0
  while count <= low * total or count < target * total:
    width, points = _random_stroke(rng, size, max_width)
    for start, end in zip(points, points[1:]):
      _draw_segment(draw, start, end, width)
      drawn = np.asarray(canvas)
      drawn_count = int(np.count_nonzero(drawn))
      if drawn_count > high * total:
        return pixels if bucket_index(count / total) == bucket else None
      pixels, count = drawn, drawn_count
      if count > low * total and count >= target * total:
        break
  return pixels if bucket_index(count / total) == bucket else None


def procedural_test_mask(
    bucket: int, index: int, size: int = TEST_SIZE, seed: int = 0
) -> np.ndarray:
  """Test mask number `index` of a bucket: (size, size) float32 in {0, 1}, ratio in the bucket.

  It depends only on (seed, bucket, index, size), never on how many masks are asked for, and
  is the same on every machine: attempt j draws brush strokes from
  `np.random.default_rng((seed, bucket, index, j))` and the first attempt that lands in the
  bucket is kept.
  """
  if not 0 <= bucket < len(BUCKETS):
    raise ValueError(f'bucket must be in 0..{len(BUCKETS) - 1}, got {bucket}')
  if index < 0 or seed < 0:
    raise ValueError(f'index and seed must be non-negative, got index {index}, seed {seed}')
  if size < MIN_PROCEDURAL_SIZE:
    raise ValueError(f'size must be at least {MIN_PROCEDURAL_SIZE}, got {size}')
  for attempt in range(_MAX_ATTEMPTS):
    pixels = _strokes_into_bucket(
        np.random.default_rng((seed, bucket, index, attempt)), bucket, size
    )
    if pixels is not None:
      return (pixels > 0).astype(np.float32)
  raise RuntimeError(
      f'no mask of {size}x{size} landed in bucket {bucket_name(bucket)} '
      f'in {_MAX_ATTEMPTS} attempts'
  )


def procedural_test_masks(
    bucket: int, count: int, size: int = TEST_SIZE, seed: int = 0
) -> list[np.ndarray]:
  """Masks 0..count-1 of `procedural_test_mask` for one bucket (mask k is the same for any count)."""
  if count < 0:
    raise ValueError(f'count must be non-negative, got {count}')
  return [procedural_test_mask(bucket, k, size, seed) for k in range(count)]


def regular_masks(size: int = TEST_SIZE) -> dict[str, np.ndarray]:
  """The regular masks of the paper's Fig. 5 as (size, size) float32 in {0, 1}.

  'center' is a centred square of side size // 2 (128x128 at 256). 'circles' holds four
  filled circles of radii 30, 30, 40 and 40, one per quadrant at the `REGULAR_CIRCLES`
  centres; the paper gives only the radii, so the positions are this port's choice. Both
  scale with `size`.
  """
  if size < 2:
    raise ValueError(f'size must be at least 2, got {size}')
  side = size // 2
  start = (size - side) // 2
  center = np.zeros((size, size), np.float32)
  center[start : start + side, start : start + side] = 1.0
  rows, cols = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
  factor = size / TEST_SIZE
  circles = np.zeros((size, size), bool)
  for row, col, radius in REGULAR_CIRCLES:
    circles |= (rows - row * factor) ** 2 + (cols - col * factor) ** 2 <= (radius * factor) ** 2
  return {'center': center, 'circles': circles.astype(np.float32)}


def list_mask_files(folder: str | os.PathLike) -> list[str]:
  """The image files under `folder`, recursively, sorted; MaskError if there are none."""
  root = pathlib.Path(folder)
  if not root.exists():
    raise MaskError(f'mask folder {root} does not exist')
  if not root.is_dir():
    raise MaskError(f'mask folder {root} is not a folder')
  paths = image_io.list_image_files(root)
  if not paths:
    raise MaskError(
        f'mask folder {root} holds no mask file ({", ".join(image_io.IMAGE_EXTENSIONS)})'
    )
  return paths


def _check_range(name: str, bounds: Sequence[float], minimum: float) -> tuple[float, float]:
  low, high = bounds
  if not minimum <= low <= high:
    raise ValueError(
        f'{name} must be (low, high) with {minimum} <= low <= high, got {tuple(bounds)}'
    )
  return low, high


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """A soft (H, W) mask -> float32 (size, size), bicubic (as the reference feeds masks),
  clipped to [0, 1]: training, test and augmented masks all go through here."""
  mask = np.asarray(mask, np.float32)
  if mask.shape != (size, size):
    mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.BICUBIC))
  return np.clip(mask, 0.0, 1.0).astype(np.float32)


def _dilate(values: np.ndarray, kernel: int, disc: bool) -> np.ndarray:
  """Grey dilation by a `kernel`-wide disc or square (1: unchanged), zero outside."""
  if kernel <= 1:
    return values
  if disc:
    radius = kernel // 2
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return ndimage.grey_dilation(
        values, footprint=yy**2 + xx**2 <= radius**2, mode='constant', cval=0.0
    )
  return ndimage.maximum_filter(values, size=kernel, mode='constant', cval=0.0)


def augment_mask(
    mask: np.ndarray,
    rng: np.random.Generator,
    size: int = 256,
    rotation: tuple[float, float] = (-45.0, 45.0),
    dilation: tuple[int, int] = (0, 9),
    scale: tuple[float, float] = (0.8, 1.25),
    flip: bool = True,
    binarize: bool = False,
) -> np.ndarray:
  """A randomly augmented training mask, (size, size) float32 in [0, 1] (binary if `binarize`).

  In order: bicubic resize to size x size (as the reference feeds masks); dilation with a
  square or disc kernel whose side is a random odd number in `dilation` (1 or none: no
  dilation); rotation by a uniform angle in `rotation` degrees; scaling by a log-uniform factor
  in `scale`; a random size x size crop (or random placement on a zero canvas when smaller);
  a horizontal flip with probability 1/2 when `flip`. Resampling is bicubic and clipped to
  [0, 1], so edges stay soft as in the reference. The same rng state gives the same result.
  """
  values = np.asarray(mask, np.float32)
  if values.ndim != 2 or min(values.shape) < 1:
    raise ValueError(f'mask must be a non-empty (H, W) array, got shape {values.shape}')
  if size < 1:
    raise ValueError(f'size must be positive, got {size}')
  rot_low, rot_high = _check_range('rotation', rotation, -math.inf)
  dil_low, dil_high = _check_range('dilation', dilation, 0)
  scale_low, scale_high = _check_range('scale', scale, 1e-6)

  kernels = [k for k in range(int(dil_low), int(dil_high) + 1) if k % 2 == 1]
  kernel = kernels[int(rng.integers(len(kernels)))] if kernels else 1
  disc = bool(rng.random() < 0.5)
  angle = float(rng.uniform(rot_low, rot_high))
  factor = math.exp(rng.uniform(math.log(scale_low), math.log(scale_high)))
  scaled = max(1, round(size * factor))
  offset_y, offset_x = (int(v) for v in rng.integers(0, abs(scaled - size) + 1, size=2))
  flipped = bool(rng.random() < 0.5)

  values = resize_mask(np.clip(values, 0.0, 1.0), size)
  values = _dilate(values, kernel, disc)
  if angle != 0.0:
    img = Image.fromarray(values).rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=0.0)
    values = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
  values = resize_mask(values, scaled)
  if scaled >= size:
    values = values[offset_y : offset_y + size, offset_x : offset_x + size]
  else:
    canvas = np.zeros((size, size), np.float32)
    canvas[offset_y : offset_y + scaled, offset_x : offset_x + scaled] = values
    values = canvas
  if flip and flipped:
    values = values[:, ::-1]
  values = np.ascontiguousarray(values, np.float32)
  return image_io.binarize(values) if binarize else values


class MaskFolder:
  """The mask files under a folder (recursively), loaded soft and augmented on request.

  Holds only the folder, the flag and the sorted file paths, so it pickles cheaply into
  data-loader worker processes. White is a hole unless `invert`.
  """

  def __init__(self, folder: str | os.PathLike, invert: bool = False):
    self.folder = str(folder)
    self.invert = bool(invert)
    self.paths: list[str] = list_mask_files(folder)

  def __len__(self) -> int:
    return len(self.paths)

  def __repr__(self) -> str:
    return f'MaskFolder({self.folder!r}, invert={self.invert}, {len(self)} files)'

  def load(self, i: int) -> np.ndarray:
    """File i as a soft float32 (H, W) mask in [0, 1], 1 = hole; ImageError names a bad file."""
    return image_io.load_mask_values(self.paths[i], self.invert)

  def sample(self, rng: np.random.Generator, size: int = 256, binarize: bool = False) -> np.ndarray:
    """A uniformly chosen file, augmented by `augment_mask` to (size, size)."""
    return augment_mask(
        self.load(int(rng.integers(len(self.paths)))), rng, size=size, binarize=binarize
    )


def bucket_mask_files(
    folder: str | os.PathLike, invert: bool = False, size: int = TEST_SIZE
) -> dict[int, list[str]]:
  """The mask files under `folder` grouped by the bucket of their hole ratio.

  The ratio is measured as the test sees the mask: thresholded at 0.5 and resized to
  size x size by nearest neighbour. Every bucket index is a key (possibly with an empty
  list); files outside every bucket are left out; paths are sorted within a bucket.
  """
  groups: dict[int, list[str]] = {i: [] for i in range(len(BUCKETS))}
  for path in list_mask_files(folder):
    mask = image_io.resize_mask_nearest(image_io.load_mask_values(path, invert), size, size)
    index = bucket_index(hole_ratio(mask))
    if index is not None:
      groups[index].append(path)
  return groups
