"""Inpainting photos of any size: the resize and crop strategies.

The network works at `size` x `size` (256). A photo is either resized whole to that size
(`resize`), or only a square region around each group of holes is cut out, with a margin of
context, and fed at native resolution when it fits in `size` pixels (`crop`; larger regions are
downscaled to `size`). `auto` crops when the regions are small against the photo. Either way
only hole pixels are pasted back: every known pixel of the result is bit-identical to the input.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from lgnet_jax import errors
from lgnet_jax.data import image_io

STRATEGIES = ('auto', 'crop', 'resize')
DEFAULT_STRATEGY = 'auto'
# Pixels of context on each side of a group of holes: holes up to 256 - 2 * 64 = 128 pixels
# across are then fed at native resolution.
DEFAULT_CROP_MARGIN = 64
# `auto` crops when the regions cover at most this fraction of the photo.
AUTO_CROP_MAX_FRACTION = 0.5

# (N, size, size, 3) images in [-1, 1], (N, size, size, 1) masks -> (N, size, size, 3) results.
Network = Callable[[np.ndarray, np.ndarray], object]


class PhotoError(errors.UserError):
  """A strategy or crop margin that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Region:
  """A rectangle of the photo, rows `top:bottom`, columns `left:right`."""

  top: int
  left: int
  bottom: int
  right: int

  @property
  def window(self) -> tuple[slice, slice]:
    return slice(self.top, self.bottom), slice(self.left, self.right)

  @property
  def area(self) -> int:
    return (self.bottom - self.top) * (self.right - self.left)

  def overlaps(self, other: 'Region') -> bool:
    return (
        self.top < other.bottom
        and other.top < self.bottom
        and self.left < other.right
        and other.left < self.right
    )

  def union(self, other: 'Region') -> 'Region':
    return Region(
        min(self.top, other.top),
        min(self.left, other.left),
        max(self.bottom, other.bottom),
        max(self.right, other.right),
    )


def check_options(strategy: str, crop_margin: int) -> None:
  if strategy not in STRATEGIES:
    raise PhotoError(f'strategy {strategy!r} is not one of {", ".join(STRATEGIES)}')
  if not isinstance(crop_margin, (int, np.integer)) or crop_margin < 0:
    raise PhotoError(f'crop margin must be a whole number of pixels >= 0, got {crop_margin!r}')


def _span(low: int, high: int, side: int, limit: int) -> tuple[int, int]:
  """`side` pixels centred on [low, high), moved inside [0, limit) (cut to `limit` if longer)."""
  side = min(side, limit)
  start = (low + high - side) // 2
  start = min(max(start, 0), limit - side)
  return start, start + side


def _square_around(box: Region, margin: int, min_side: int, height: int, width: int) -> Region:
  """The square of side max(box + 2 margins, min_side) centred on `box`, inside the photo."""
  side = max(box.bottom - box.top + 2 * margin, box.right - box.left + 2 * margin, min_side)
  top, bottom = _span(box.top, box.bottom, side, height)
  left, right = _span(box.left, box.right, side, width)
  return Region(top, left, bottom, right)


def crop_regions(mask: np.ndarray, margin: int, min_side: int) -> list[Region]:
  """One region per connected group of holes (8-connected), overlapping regions merged.

  Each region is a square of at least `min_side` pixels around its holes with `margin` pixels
  of context on each side, moved inside the photo (cut to the photo's side where it is
  smaller). Every hole pixel lies in exactly one region, and regions do not overlap.
  """
  height, width = mask.shape
  labels, _ = ndimage.label(mask > 0.5, structure=np.ones((3, 3)))
  boxes = [Region(r.start, c.start, r.stop, c.stop) for r, c in ndimage.find_objects(labels)]
  regions = [_square_around(box, margin, min_side, height, width) for box in boxes]
  merged = True
  while merged:  # merging two squares can make a larger one that overlaps a third
    merged = False
    for i, j in ((i, j) for i in range(len(regions)) for j in range(i + 1, len(regions))):
      if regions[i].overlaps(regions[j]):
        box = regions[i].union(regions[j])
        regions[i] = _square_around(box, 0, min_side, height, width)
        del regions[j]
        merged = True
        break
  return sorted(regions, key=lambda r: (r.top, r.left))


def choose_regions(
    mask: np.ndarray, strategy: str, crop_margin: int, size: int = image_io.MODEL_SIZE
) -> list[Region]:
  """The regions the network fills: the whole photo (`resize`) or the crops (`crop`, `auto`)."""
  check_options(strategy, crop_margin)
  height, width = mask.shape
  whole = [Region(0, 0, height, width)]
  if not mask.any():
    return []  # nothing to fill: the photo is returned as it is
  if strategy == 'resize':
    return whole
  regions = crop_regions(mask, crop_margin, size)
  if strategy == 'auto' and (
      sum(r.area for r in regions) > AUTO_CROP_MAX_FRACTION * height * width
      or max(height, width) <= size
  ):
    return whole
  return regions


def fill(
    network: Network,
    image: np.ndarray,
    mask: np.ndarray,
    strategy: str = DEFAULT_STRATEGY,
    crop_margin: int = DEFAULT_CROP_MARGIN,
    size: int = image_io.MODEL_SIZE,
    batch_size: int = 8,
) -> np.ndarray:
  """The photo (H, W, 3) uint8 with its holes (mask (H, W), 1 = hole) filled by `network`.

  Regions are run in batches of `batch_size` (the last padded, so one shape compiles).
  """
  regions = choose_regions(mask, strategy, crop_margin, size)
  batch_size = max(1, min(batch_size, len(regions)))
  return fill_regions(network, [(image, mask, regions)], size, batch_size)[0]


def fill_regions(
    network: Network,
    photos: Sequence[tuple[np.ndarray, np.ndarray, Sequence[Region]]],
    size: int = image_io.MODEL_SIZE,
    batch_size: int = 8,
) -> list[np.ndarray]:
  """Fills the given regions of several photos, batching the regions of all of them.

  Every batch has `batch_size` entries (the last is padded), so the network sees one shape."""
  jobs = [(p, region) for p, (_, _, regions) in enumerate(photos) for region in regions]
  outputs = [np.array(image, np.uint8, copy=True) for image, _, _ in photos]
  for start in range(0, len(jobs), batch_size):
    chunk = jobs[start : start + batch_size]
    images = np.zeros((batch_size, size, size, 3), np.float32)
    masks = np.zeros((batch_size, size, size, 1), np.float32)
    for i, (p, region) in enumerate(chunk):
      image, mask, _ = photos[p]
      images[i], masks[i] = image_io.to_model_input(image[region.window], mask[region.window], size)
    results = np.asarray(network(images, masks))[: len(chunk)]
    for (p, region), result in zip(chunk, results):
      image, mask, _ = photos[p]
      outputs[p][region.window] = image_io.paste_holes(
          outputs[p][region.window], result, mask[region.window]
      )
  return outputs
