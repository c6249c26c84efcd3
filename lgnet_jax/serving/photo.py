"""Inpainting photos of any size: the resize and crop strategies.

The network works at `size` x `size` (256). A photo is either resized whole to that size
(`resize`), or only a square region around each group of holes is cut out, with a margin of
context, and fed at native resolution when it fits in `size` pixels (`crop`; larger regions are
downscaled to `size`). `auto` crops when the regions are small against the photo. Either way
only hole pixels are pasted back: every known pixel of the result is bit-identical to the input.
"""

import dataclasses
import threading
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from lgnet_jax import errors
from lgnet_jax.data import image_io
from lgnet_jax.serving import mask_edits

STRATEGIES = ('auto', 'crop', 'resize')
DEFAULT_STRATEGY = 'auto'
# Pixels of context on each side of a group of holes: holes up to 256 - 2 * 64 = 128 pixels
# across are then fed at native resolution.
DEFAULT_CROP_MARGIN = 64
# `auto` crops when the regions cover at most this fraction of the photo.
AUTO_CROP_MAX_FRACTION = 0.5
# Holes in the same or touching cells of this many pixels form one group (and one region). With
# the network's 256-pixel crops, small holes this close share a region anyway; the grid bounds
# the number of groups, and so the planning, by the photo's size rather than the mask's pattern.
GROUP_CELL = 32
SHOWN_CHARS = 60  # a bad value is quoted in a message up to this many characters

# (N, size, size, 3) images in [-1, 1], (N, size, size, 1) masks -> (N, size, size, 3) results.
# network(images, masks) -> composites; behind precomputed first-stage results (X_LG) it is
# called as network(images, masks, first_stage).
Network = Callable[..., object]
# A photo to fill: (image, mask, regions), or with the first stage's result of the same size.
PhotoJob = (
    tuple[np.ndarray, np.ndarray, Sequence['Region']]
    | tuple[np.ndarray, np.ndarray, Sequence['Region'], np.ndarray]
)


class PhotoError(errors.UserError):
  """A strategy or crop margin that cannot be used."""


class Stopped(Exception):
  """A fill whose `stop` event was set, stopped between two network batches."""

  def __init__(self, done: int, total: int):
    super().__init__(f'stopped after {done} of {total} network batches')
    self.done, self.total = done, total


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


def _shown(value: object) -> str:
  """`value`'s repr, cut to SHOWN_CHARS: a message never echoes a long value whole."""
  return errors.clip(repr(value), SHOWN_CHARS)


def check_options(strategy: str, crop_margin: int) -> None:
  if strategy not in STRATEGIES:
    raise PhotoError(f'strategy {_shown(strategy)} is not one of {", ".join(STRATEGIES)}')
  if not isinstance(crop_margin, (int, np.integer)) or crop_margin < 0:
    raise PhotoError(
        f'crop margin must be a whole number of pixels >= 0, got {_shown(crop_margin)}'
    )


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


def _cell_starts(length: int, cell: int) -> np.ndarray:
  return np.arange(0, length, cell)


def _first_and_last(hits: np.ndarray, cell: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
  """For `hits` grouped in runs of `cell` along `axis`: each run's first and last True index
  (in the full axis), for runs with any True."""
  length = hits.shape[axis]
  padded_length = -(-length // cell) * cell
  pad = [(0, 0), (0, 0)]
  pad[axis] = (0, padded_length - length)
  runs = np.pad(hits, pad)
  shape = list(runs.shape)
  shape[axis : axis + 1] = [padded_length // cell, cell]
  runs = runs.reshape(shape)
  first = np.argmax(runs, axis=axis + 1)
  last = cell - 1 - np.argmax(np.flip(runs, axis=axis + 1), axis=axis + 1)
  offsets = np.arange(0, padded_length, cell).reshape([-1, 1] if axis == 0 else [1, -1])
  return first + offsets, last + offsets


def hole_groups(mask: np.ndarray, cell: int = GROUP_CELL) -> np.ndarray:
  """The bounding boxes (top, left, bottom, right), (n, 4) int64, of the groups of holes.

  Holes in the same or touching `cell` x `cell` cells of the photo are one group (so every
  8-connected group of hole pixels lies in one group). Found on the grid of cells with array
  operations, so the work is bounded by the photo's size whatever the holes' pattern: a mask
  of millions of dots makes at most one group per four cells.
  """
  holes = np.asarray(mask) > 0.5
  height, width = holes.shape
  row_hits = np.logical_or.reduceat(holes, _cell_starts(width, cell), axis=1)  # (H, w)
  col_hits = np.logical_or.reduceat(holes, _cell_starts(height, cell), axis=0)  # (h, W)
  del holes
  tops, bottoms = _first_and_last(row_hits, cell, axis=0)  # (h, w)
  lefts, rights = _first_and_last(col_hits, cell, axis=1)  # (h, w)
  occupied = np.logical_or.reduceat(row_hits, _cell_starts(height, cell), axis=0)
  labels, count = ndimage.label(occupied, structure=np.ones((3, 3)))
  index, cells = labels[occupied] - 1, np.flatnonzero(occupied.ravel())
  boxes = np.empty((count, 4), np.int64)
  boxes[:, :2] = np.iinfo(np.int64).max
  boxes[:, 2:] = np.iinfo(np.int64).min
  np.minimum.at(boxes[:, 0], index, tops.ravel()[cells])
  np.minimum.at(boxes[:, 1], index, lefts.ravel()[cells])
  np.maximum.at(boxes[:, 2], index, bottoms.ravel()[cells] + 1)
  np.maximum.at(boxes[:, 3], index, rights.ravel()[cells] + 1)
  return boxes


def _overlapping(placed: np.ndarray, square: Region) -> np.ndarray:
  """The indices of the rows (top, left, bottom, right) of `placed` that overlap `square`."""
  return np.flatnonzero(
      (placed[:, 0] < square.bottom)
      & (square.top < placed[:, 2])
      & (placed[:, 1] < square.right)
      & (square.left < placed[:, 3])
  )


def crop_regions(mask: np.ndarray, margin: int, min_side: int) -> list[Region]:
  """One region per group of holes (see `hole_groups`), overlapping regions merged.

  Each region is a square of at least `min_side` pixels around its holes with `margin` pixels
  of context on each side, moved inside the photo (cut to the photo's side where it is
  smaller). Every hole pixel lies in exactly one region, and regions do not overlap.

  The squares are placed one by one; one that overlaps placed ones absorbs them (the square
  around their union, which may overlap more) until it overlaps none. Placed squares never
  overlap and each holds a point of the `min_side` lattice, so at most about
  (H / min_side) * (W / min_side) are placed at a time, and a group costs at most one lookup
  among them plus one per square it absorbs: about 2n lookups for n groups.
  """
  height, width = mask.shape
  placed = np.empty((0, 4), np.int64)
  for top, left, bottom, right in hole_groups(mask).tolist():
    square = _square_around(Region(top, left, bottom, right), margin, min_side, height, width)
    while (hits := _overlapping(placed, square)).size:
      absorbed = placed[hits]
      box = Region(*absorbed[:, :2].min(axis=0), *absorbed[:, 2:].max(axis=0)).union(square)
      square = _square_around(box, 0, min_side, height, width)
      placed = np.delete(placed, hits, axis=0)
    placed = np.append(placed, [[square.top, square.left, square.bottom, square.right]], axis=0)
  return sorted((Region(*row) for row in placed.tolist()), key=lambda r: (r.top, r.left))


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


def plan(
    mask: np.ndarray,
    strategy: str,
    crop_margin: int,
    size: int = image_io.MODEL_SIZE,
    edits: mask_edits.MaskOptions = mask_edits.MaskOptions(),
) -> tuple[np.ndarray, list[Region], np.ndarray | None]:
  """(the holes the network fills, the regions it fills them in, the fill's blend weights or
  None) for a photo's mask: the mask grown and feathered by `edits` (see `mask_edits`), then
  its regions for `strategy`. Blend the filled photo with `mask_edits.blend`."""
  holes, weights = edits.prepare(mask)
  return holes, choose_regions(holes, strategy, crop_margin, size), weights


def fill(
    network: Network,
    image: np.ndarray,
    mask: np.ndarray,
    strategy: str = DEFAULT_STRATEGY,
    crop_margin: int = DEFAULT_CROP_MARGIN,
    size: int = image_io.MODEL_SIZE,
    batch_size: int = 8,
    stop: threading.Event | None = None,
    first_stage: np.ndarray | None = None,
    dilate_mask: int = 0,
    feather: int = 0,
) -> np.ndarray:
  """The photo (H, W, 3) uint8 with its holes (mask (H, W), 1 = hole) filled by `network`.

  Regions are run in batches of `batch_size` (the last padded, so one shape compiles); once
  `stop` is set, the fill raises Stopped before the next batch. `first_stage` (H, W, 3) uint8:
  a precomputed first stage's result for this photo, cropped and resized as the photo is.
  `dilate_mask` and `feather` (pixels) grow the holes and blend the fill in over a band around
  them (see `mask_edits`; the band's pixels then change too).
  """
  edits = mask_edits.MaskOptions(dilate_mask, feather)
  holes, regions, weights = plan(mask, strategy, crop_margin, size, edits)
  batch_size = max(1, min(batch_size, len(regions)))
  job = (image, holes, regions) if first_stage is None else (image, holes, regions, first_stage)
  return mask_edits.blend(image, fill_regions(network, [job], size, batch_size, stop)[0], weights)


def fill_regions(
    network: Network,
    photos: Sequence[PhotoJob],
    size: int = image_io.MODEL_SIZE,
    batch_size: int = 8,
    stop: threading.Event | None = None,
) -> list[np.ndarray]:
  """Fills the given regions of several photos, batching the regions of all of them.

  Every batch has `batch_size` entries (the last is padded), so the network sees one shape.
  Once `stop` is set (a server whose client has gone, or that is stopping), Stopped is raised
  before the next batch: a batch is never cut off, and the rest is not run. Photos that come
  with a first stage's result (all or none) have it cropped and resized as themselves."""
  jobs = [(p, region) for p, job in enumerate(photos) for region in job[2]]
  outputs = [np.array(job[0], np.uint8, copy=True) for job in photos]
  with_first_stage = bool(photos) and len(photos[0]) > 3
  batches = -(-len(jobs) // batch_size)
  for start in range(0, len(jobs), batch_size):
    if stop is not None and stop.is_set():
      raise Stopped(start // batch_size, batches)
    chunk = jobs[start : start + batch_size]
    images = np.zeros((batch_size, size, size, 3), np.float32)
    masks = np.zeros((batch_size, size, size, 1), np.float32)
    firsts = np.zeros_like(images) if with_first_stage else None
    for i, (p, region) in enumerate(chunk):
      image, mask = photos[p][:2]
      images[i], masks[i] = image_io.to_model_input(image[region.window], mask[region.window], size)
      if with_first_stage:
        firsts[i] = image_io.to_signed_unit(
            image_io.resize_image(photos[p][3][region.window], size)
        )
    results = network(images, masks) if firsts is None else network(images, masks, firsts)
    results = np.asarray(results)[: len(chunk)]
    for (p, region), result in zip(chunk, results):
      image, mask = photos[p][:2]
      outputs[p][region.window] = image_io.paste_holes(
          outputs[p][region.window], result, mask[region.window]
      )
  return outputs
