"""Reading, resizing and writing images and masks for full-resolution inpainting.

Images come back as uint8 (H, W, 3) RGB whatever the file's mode; masks as float32 (H, W)
with 1 for a hole pixel. The network runs at a fixed size, and only the hole pixels of its
result are pasted back into the original, so every known pixel stays bit-identical.
"""

import io
import os
import pathlib

import numpy as np
from etils import epath
from PIL import Image, ImageOps, UnidentifiedImageError

from lgnet_jax import errors, fileio

MODEL_SIZE = 256
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')  # of images and masks
SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
MASK_ROWS = 256  # rows of a mask turned into floats at a time by `load_hole_mask`


class ImageError(errors.UserError):
  """A missing, unreadable or unusable image or mask file; the message names the file."""


def list_image_files(folder: str | os.PathLike) -> list[str]:
  """The image files (`IMAGE_EXTENSIONS`, not hidden) under `folder`, recursively, sorted."""
  return sorted(
      str(p)
      for p in pathlib.Path(folder).rglob('*')
      if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith('.') and p.is_file()
  )


def _open(path: str | os.PathLike, what: str) -> Image.Image:
  """Opens and fully decodes `path` (so truncation is caught here) with EXIF orientation applied."""
  path = pathlib.Path(path)
  if not path.exists():
    raise ImageError(f'{what} {path} does not exist')
  if not path.is_file():
    raise ImageError(f'{what} {path} is not a file')
  if path.stat().st_size == 0:
    raise ImageError(f'{what} {path} is empty (0 bytes)')
  try:
    with Image.open(path) as img:  # leaving the block closes the file, not the decoded image
      img.load()
      ImageOps.exif_transpose(img, in_place=True)  # in place: no second copy of a large photo
      return img
  except UnidentifiedImageError:
    raise ImageError(f'cannot read {what} {path}: not an image format Pillow knows') from None
  except Exception as e:  # Pillow's decoders raise many types for a corrupt file.
    reason = errors.one_line(e)
    raise ImageError(f'cannot read {what} {path}: {reason}') from None


def _without_alpha(img: Image.Image) -> Image.Image:
  """Drops transparency: palette images with a transparent entry go through RGBA first."""
  if img.mode == 'P' and 'transparency' in img.info:
    img = img.convert('RGBA')
  if img.mode == 'PA':
    img = img.convert('RGBA')
  return img


def _sixteen_bit_to_uint8(img: Image.Image) -> np.ndarray:
  """Maps a 16-bit (or 32-bit integer) grayscale image's 0..65535 range onto 0..255."""
  values = np.asarray(img).astype(np.float64)
  return np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)


def load_image(path: str | os.PathLike) -> np.ndarray:
  """Reads any image Pillow can decode as uint8 (H, W, 3) RGB.

  Grayscale, palette, CMYK and 16-bit images are converted; an alpha channel is dropped;
  EXIF orientation is applied so the array matches what image viewers show.
  """
  img = _without_alpha(_open(path, 'image'))
  try:
    if img.mode in SIXTEEN_BIT_MODES:
      gray = _sixteen_bit_to_uint8(img)
      return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == 'F':
      gray = np.clip(np.rint(np.asarray(img, np.float64)), 0, 255).astype(np.uint8)
      return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(img if img.mode == 'RGB' else img.convert('RGB'), dtype=np.uint8)
  except (OSError, ValueError) as e:
    raise ImageError(f'cannot convert image {path} (mode {img.mode}) to RGB: {e}') from None


def load_mask(path: str | os.PathLike, invert: bool = False) -> tuple[np.ndarray, bool]:
  """Reads a mask as float32 (H, W) with 1 = hole, and whether it had to be thresholded.

  White (1.0) is a hole unless `invert`. A mask with any value other than 0 and 1
  (antialiased edges, JPEG noise) is thresholded at 0.5 and reported so the caller can warn.
  """
  holes, thresholded = load_hole_mask(path, invert)
  return holes.astype(np.float32), thresholded


def load_hole_mask(
    path: str | os.PathLike, invert: bool = False, rows: int = MASK_ROWS
) -> tuple[np.ndarray, bool]:
  """The mask as bool (H, W), True = hole, and whether it had to be thresholded.

  The values are exactly `load_mask_values`', thresholded at 0.5, but computed `rows` rows at a
  time: only the decoded samples and one bool per pixel are held whole, so a photo-sized mask
  costs a few bytes per pixel instead of the float copies' twenty.
  """
  img = _without_alpha(_open(path, 'mask'))
  samples, divisor = _mask_samples(img, path)
  holes = np.empty(samples.shape, bool)
  thresholded = False
  for start in range(0, samples.shape[0], rows):
    values = _unit_values(samples[start : start + rows], divisor, invert)
    holes[start : start + rows] = values > 0.5
    thresholded = thresholded or not bool(np.all((values == 0.0) | (values == 1.0)))
  return holes, thresholded


def load_mask_values(path: str | os.PathLike, invert: bool = False) -> np.ndarray:
  """The one mask decoder: float32 (H, W) in [0, 1], white (1.0) = hole unless `invert`.

  Values are scaled to [0, 1] (16-bit by 65535, colour and palette images converted to
  grayscale, alpha dropped) and kept soft; ImageError names the file.
  """
  img = _without_alpha(_open(path, 'mask'))
  return _unit_values(*_mask_samples(img, path), invert)


def _mask_samples(img: Image.Image, path: str | os.PathLike) -> tuple[np.ndarray, float]:
  """The mask's samples as decoded (bool, uint8, 16/32-bit integers or float32) and what they
  are divided by to lie in [0, 1]; colour and palette images are converted to grayscale."""
  try:
    if img.mode == '1':
      return np.asarray(img), 1.0
    if img.mode in SIXTEEN_BIT_MODES:
      return np.asarray(img), 65535.0
    if img.mode == 'F':
      samples = np.asarray(img, np.float32)
      return samples, 255.0 if samples.max(initial=0.0) > 1.0 else 1.0
    return np.asarray(img.convert('L')), 255.0
  except (OSError, ValueError) as e:
    raise ImageError(f'cannot convert mask {path} (mode {img.mode}) to grayscale: {e}') from None


def _unit_values(samples: np.ndarray, divisor: float, invert: bool) -> np.ndarray:
  """Samples as float32 in [0, 1] (computed in float64, as the training masks always were)."""
  values = np.clip(samples.astype(np.float64) / divisor, 0.0, 1.0)
  return (1.0 - values if invert else values).astype(np.float32)


def binarize(mask: np.ndarray) -> np.ndarray:
  """A soft mask thresholded at 0.5: float32, 1 where the value is above one half (a hole)."""
  return (np.asarray(mask) > 0.5).astype(np.float32)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W, 3) -> (size, size, 3), bicubic (as the reference's transforms.Resize)."""
  image = np.asarray(image, np.uint8)
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def to_signed_unit(image: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1], the network's image range."""
  return np.asarray(image).astype(np.float32) / 127.5 - 1.0


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """A 0/1 (H, W) mask resized to (height, width) with nearest neighbour, so it stays binary."""
  if mask.shape == (height, width):
    return mask.astype(np.float32)
  img = Image.fromarray((mask > 0.5).astype(np.uint8) * 255)
  return (np.asarray(img.resize((width, height), Image.Resampling.NEAREST)) > 127).astype(
      np.float32
  )


def _cover_axis(mask: np.ndarray, size: int, axis: int) -> np.ndarray:
  """Resizes one axis so that every hole pixel lands in at least one output hole pixel.

  Shrinking takes the maximum over the input pixels each output pixel covers (plain nearest
  neighbour would drop holes thinner than the scale factor); enlarging is nearest neighbour.
  """
  n = mask.shape[axis]
  if n >= size:
    return np.maximum.reduceat(mask, (np.arange(size) * n) // size, axis=axis)
  return np.take(mask, ((np.arange(size) + 0.5) * n / size).astype(np.int64), axis=axis)


def to_model_input(
    image_uint8: np.ndarray, mask: np.ndarray, size: int = MODEL_SIZE
) -> tuple[np.ndarray, np.ndarray]:
  """The network's inputs: image (size, size, 3) float32 in [-1, 1], mask (size, size, 1) of 0/1.

  The image is resized bicubically. The mask is resized so that a model pixel is a hole when
  any full-resolution pixel it covers is one (nearest neighbour when enlarging): a thin hole
  is never lost, so the network always fills every pixel that will be pasted back.
  """
  image = to_signed_unit(resize_image(image_uint8, size))
  small = _cover_axis(_cover_axis(np.asarray(mask) > 0.5, size, 0), size, 1)  # bool: 1 B/pixel
  return image, small[:, :, None].astype(np.float32)


def paste_holes(
    original_uint8: np.ndarray, result_float_size: np.ndarray, mask_full: np.ndarray
) -> np.ndarray:
  """The original with its hole pixels replaced by the network's result, resized to full size.

  `result_float_size` is the (size, size, 3) output in [-1, 1]; it is mapped to uint8,
  resized bicubically to the original's size and copied only where `mask_full` is 1, so
  every known pixel is bit-identical to the input.
  """
  original = np.asarray(original_uint8, np.uint8)
  height, width = original.shape[:2]
  result = np.asarray(result_float_size, np.float32)
  result_uint8 = np.rint(np.clip((result + 1.0) * 127.5, 0, 255)).astype(np.uint8)
  img = Image.fromarray(result_uint8)
  if img.size != (width, height):
    img = img.resize((width, height), Image.Resampling.BICUBIC)
  holes = np.asarray(mask_full).reshape(height, width) > 0.5
  out = original.copy()
  out[holes] = np.asarray(img, np.uint8)[holes]
  return out


def output_format(path: str | os.PathLike) -> str:
  """The Pillow format that writes `path`'s extension; ImageError when there is none."""
  path = pathlib.Path(path)
  fmt = Image.registered_extensions().get(path.suffix.lower())
  if fmt is None or fmt not in Image.SAVE:
    raise ImageError(
        f'cannot write {path}: unknown image extension {path.suffix!r} '
        '(use .png, .jpg, .webp, ...)'
    )
  return fmt


def save_image_atomic(path: str | os.PathLike, uint8_array: np.ndarray) -> None:
  """Writes an image through a temporary file in the same folder and a rename.

  A crash or a failed encode never leaves a partial output file. The format comes from the
  extension; the parent folder is created. A cloud-storage URL (gs://...) is encoded in
  memory and uploaded as one object, which appears whole or not at all.
  """
  img = Image.fromarray(np.asarray(uint8_array, np.uint8))
  if fileio.is_remote(path):
    remote = epath.Path(path)
    fmt = output_format(remote.name)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **({'quality': 95} if fmt in ('JPEG', 'WEBP') else {}))
    remote.parent.mkdir(parents=True, exist_ok=True)
    remote.write_bytes(buffer.getvalue())
    return
  path = pathlib.Path(path)
  fmt = output_format(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  options = {'quality': 95} if fmt in ('JPEG', 'WEBP') else {}
  fileio.atomic_write(path, lambda f: img.save(f, format=fmt, **options))
