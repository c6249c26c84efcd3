"""Whether a mask is what its user meant: one with no known pixel is refused (there is nothing to
inpaint from); one with no hole, holes over 90% of the photo, or mostly hole (perhaps drawn the
other way round) is warned about. The command line and the HTTP API say the same thing, each
naming its own way to flip the convention."""

import math

import numpy as np

from lgnet_jax import errors

MOSTLY_HOLE = 0.5  # above this hole fraction a mask may be inverted
NEARLY_ALL_HOLE = 0.9  # above this little context is left
# How to flip a mask's convention: (when white is a hole, when black is), as the command line
# says it; the HTTP API names its form field instead.
INVERT_HINTS = ('pass --invert-mask', 'drop --invert-mask')


class UnusableMaskError(errors.UserError):
  """A mask with no known pixel."""


def check_mask(
    mask: np.ndarray,
    name: str,
    inverted: bool,
    thresholded: bool = False,
    invert_hints: tuple[str, str] = INVERT_HINTS,
) -> list[str]:
  """`mask_warnings` for a mask (H, W) at its photo's size; UnusableMaskError when it has no
  known pixel, since there is then nothing to inpaint from."""
  if mask.size and mask.all():
    note = ' after thresholding at 0.5' if thresholded else ''
    raise UnusableMaskError(f'mask {name} is all hole{note}; there is nothing to inpaint from')
  return mask_warnings(mask, name, inverted, invert_hints)


def mask_warnings(
    mask: np.ndarray, name: str, inverted: bool, invert_hints: tuple[str, str] = INVERT_HINTS
) -> list[str]:
  """Warnings for a mask that is probably not what was meant: no hole, holes over 90% of the
  photo, or mostly hole (a mask drawn the other way round) without `inverted`."""
  fraction = np.count_nonzero(mask > 0.5) / mask.size if mask.size else 0.0  # no float copy
  hole, keep = ('black', 'white') if inverted else ('white', 'black')
  flip = f'; {hole} marks a hole, so if {hole} marks what to keep, ' + invert_hints[inverted]
  if fraction == 0.0:
    return [f'mask {name} has no hole (no {hole} pixel): the image is left unchanged']
  if fraction > NEARLY_ALL_HOLE:
    return [
        f'mask {name}: holes cover {_percent(fraction)} of the image, little context is left' + flip
    ]
  if fraction > MOSTLY_HOLE:
    return [f'mask {name} is mostly hole ({_percent(fraction)} {hole}, {keep} is kept)' + flip]
  return []


def _percent(fraction: float) -> str:
  return f'{math.floor(fraction * 1000) / 10:g}%'
