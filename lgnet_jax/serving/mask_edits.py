"""The two mask options for photos: grow the holes (`dilate`) and blend the fill in (`feather`).

Masks drawn tight around an object leave its edge (a shadow, a halo of JPEG ringing) outside
the hole, and the fill then meets it in a seam. `dilate` grows every hole by a disk of radius
PX (pixels within Euclidean distance PX of a hole become holes). `feather` then lets the
network fill a band of PX pixels around the (grown) hole too, and blends that band into the
photo: the fill's weight falls linearly from 1 at the hole's edge to 0 at distance PX, so the
band's pixels change by design; every pixel farther than PX from the hole keeps its value bit
for bit. Both take time proportional to the photo's pixels whatever PX is: one exact
Euclidean distance transform (scipy's, linear in the pixels) answers every radius.

Both 0 (the defaults) leave the mask and the result exactly as without them.
"""

import argparse
import dataclasses

import numpy as np
from scipy import ndimage

from lgnet_jax import errors

# The largest value either option takes: the network's own width, far beyond any seam. The
# bound keeps one request from turning a small hole into a photo-sized fill.
MAX_PIXELS = 256


class MaskOptionError(errors.UserError):
  """A dilate or feather value that cannot be used."""


def check(name: str, value: object) -> int:
  """`value` as the pixels of option `name` (a whole number 0..MAX_PIXELS), or MaskOptionError."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise MaskOptionError(f'{name} must be a whole number of pixels, got {str(value)[:60]!r}')
  if not 0 <= value <= MAX_PIXELS:
    raise MaskOptionError(f'{name} must be between 0 and {MAX_PIXELS} pixels, got {value}')
  return int(value)


def pixels(text: str) -> int:
  """An argparse type: a command-line value of either option as pixels."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected a whole number of pixels, got {text[:60]!r}')
  if not 0 <= value <= MAX_PIXELS:
    raise argparse.ArgumentTypeError(f'expected 0 to {MAX_PIXELS} pixels, got {value}')
  return value


@dataclasses.dataclass(frozen=True)
class MaskOptions:
  """Pixels to grow the holes by (`dilate`) and to feather the fill over (`feather`)."""

  dilate: int = 0
  feather: int = 0

  def __post_init__(self):
    check('dilate_mask', self.dilate)
    check('feather', self.feather)

  def prepare(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """`prepare(mask, self.dilate, self.feather)`."""
    return prepare(mask, self.dilate, self.feather)


def _distance_to_holes(mask: np.ndarray) -> np.ndarray:
  """Each pixel's Euclidean distance to the nearest hole pixel (0 on holes)."""
  return ndimage.distance_transform_edt(~mask)


def prepare(mask: np.ndarray, dilate: int, feather: int) -> tuple[np.ndarray, np.ndarray | None]:
  """(the mask the network fills, the fill's blend weights or None) for a (H, W) mask, 1 = hole.

  The network fills the holes grown by `dilate`, plus the `feather` band where the blend
  weight is above 0. The weights (H, W) float32 are 1 on the grown holes, 1 - d / feather at
  distance d < feather from them, 0 beyond.
  """
  holes = np.asarray(mask) > 0.5
  if (dilate == 0 and feather == 0) or not holes.any():
    return np.asarray(mask), None
  distance = _distance_to_holes(holes)
  grown = distance <= dilate
  if feather == 0:
    return grown.astype(np.asarray(mask).dtype), None
  # Distances to the grown holes (a second transform: distance - dilate is only a bound).
  beyond = _distance_to_holes(grown) if dilate else distance
  weights = np.clip(1.0 - beyond / feather, 0.0, 1.0).astype(np.float32)
  return (weights > 0).astype(np.asarray(mask).dtype), weights


def blend(image: np.ndarray, filled: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
  """`filled` (H, W, 3) uint8, the photo with the network's fill on every pixel of the mask
  `prepare` gave, blended into `image` by `weights` (None: `filled` as it is)."""
  if weights is None:
    return filled
  w = weights[..., None]
  mixed = np.rint(w * filled.astype(np.float32) + (1.0 - w) * image.astype(np.float32))
  return np.where(w > 0, np.clip(mixed, 0, 255).astype(np.uint8), image)
