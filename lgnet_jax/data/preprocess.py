"""The reference's training preprocessing: an image crop or resize, flips, and a random mask.

A training record (H = W = `model.image_size`):
  image    (H, W, 3) float32 in [-1, 1]: resized to H x W bicubic (or a random crop,
           `data.random_crop`, the demo's mode), randomly flipped horizontally.
  mask     (H, W, 1) float32 in [0, 1], 1 = hole: a random file of `data.train_mask_dir`
           (`masks.MaskFolder`: resized bicubic, rotated, dilated, scaled, cropped; an
           unreadable file is logged once and another drawn) or a procedural brush-stroke
           mask (`data.hole_ratio`), flipped independently of the image; binarised at 0.5
           when `data.mask_binarize`.
  skipped  int32: 1 where the record's own image could not be read and the next readable
           image of the source was used instead (`sources.ImageSource`).

Randomness (crops, flips, masks) comes from grain's per-record generator, so a record's
augmentation depends only on the run's seed and its place in the stream.
"""

import dataclasses
import math
import pathlib
from typing import Protocol

import grain.python as grain
import ml_collections
import numpy as np
from PIL import Image

from lgnet_jax.data import image_io, masks, sources

_MASK_DRAWS = 10  # mask files tried before falling back to a brush-stroke mask


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
                Image.Resampling.BICUBIC,
            )
        )
      top = int(rng.integers(0, image.shape[0] - self.size + 1))
      left = int(rng.integers(0, image.shape[1] - self.size + 1))
      image = image[top : top + self.size, left : left + self.size]
    else:
      image = image_io.resize_image(image, self.size)
    if rng.random() < 0.5:
      image = image[:, ::-1]
    mask = self._mask(rng)
    if rng.random() < 0.5:
      mask = mask[:, ::-1]
    if self.binarize:
      mask = image_io.binarize(mask)
    return {
        'image': image_io.to_signed_unit(np.ascontiguousarray(image)),  # (H, W, 3)
        'mask': np.ascontiguousarray(mask, np.float32)[..., None],  # (H, W, 1)
        'skipped': np.int32(record.get('skipped', 0)),
    }

  def _mask(self, rng: np.random.Generator) -> np.ndarray:
    """A draw of the mask folder (an unreadable file is logged once and another drawn)."""
    if self.mask_sampler is not None:
      for _ in range(_MASK_DRAWS):
        try:
          mask = self.mask_sampler.sample(rng, self.size, self.binarize)
          return masks.resize_mask(mask, self.size)
        except image_io.ImageError as e:
          sources.note_unreadable(str(e), e, 'mask')
    return masks.brush_stroke_mask(rng, self.size, tuple(self.hole_ratio))


def train_mask_sampler(data: ml_collections.ConfigDict) -> MaskSampler | None:
  """The training mask folder (`data.train_mask_dir`), or None for procedural masks."""
  folder = data.train_mask_dir
  if not folder:
    return None
  if not pathlib.Path(folder).is_dir():
    raise sources.DataError(
        f'training mask folder {folder} does not exist (data.train_mask_dir: a '
        'folder of mask images, white = hole unless data.mask_invert)'
    )
  try:
    return masks.MaskFolder(folder, invert=data.mask_invert)
  except masks.MaskError as e:
    raise sources.DataError(f'training masks {folder}: {e}') from None
