"""The mask options for photos: `dilate_mask` grows the holes, `feather` blends the fill in.

Through `photo.fill` with a stand-in network that fills holes with white (at native resolution,
so the fill comes back exactly), through the inpaint command (folder mode), and the real
network keeping today's result byte for byte when both are 0.
"""

import numpy as np
import pytest
from scipy import ndimage

from helpers import WhiteFill, assert_usage_error, random_image, rect_mask, read_rgb
from helpers import run_cli_in_process, save_image
from lgnet_jax.serving import inpaint, mask_edits, photo
from lgnet_jax.serving.inference import Inpainter

# A photo darker than the white fill, so every filled pixel differs from the photo.
HEIGHT, WIDTH = 300, 420
HOLE = (120, 150, 160, 230)  # top, left, bottom, right


def dark_photo(seed: int = 0) -> np.ndarray:
  return random_image(HEIGHT, WIDTH, seed) // 2  # 0..127


def hole_mask() -> np.ndarray:
  mask = np.zeros((HEIGHT, WIDTH), np.float32)
  top, left, bottom, right = HOLE
  mask[top:bottom, left:right] = 1.0
  return mask


def changed(image: np.ndarray, result: np.ndarray) -> np.ndarray:
  return (image != result).any(axis=-1)


@pytest.mark.parametrize('strategy', ['crop', 'resize'])
def test_zero_keeps_the_fill_byte_for_byte(strategy):
  image, mask = dark_photo(), hole_mask()
  plain = photo.fill(WhiteFill(), image, mask, strategy=strategy)
  np.testing.assert_array_equal(
      photo.fill(WhiteFill(), image, mask, strategy=strategy, dilate_mask=0, feather=0), plain
  )
  holes, weights = mask_edits.prepare(mask, 0, 0)
  assert holes is mask and weights is None


@pytest.mark.parametrize('px', [1, 7, 40])
def test_dilate_grows_every_hole_by_px_and_no_further(px):
  image, mask = dark_photo(), hole_mask()
  # A margin that keeps the grown hole's square within 256 pixels: native resolution.
  result = photo.fill(WhiteFill(), image, mask, strategy='crop', crop_margin=16, dilate_mask=px)
  moved = changed(image, result)
  distance = ndimage.distance_transform_edt(mask == 0)
  assert not moved[distance > px].any()  # nothing farther than PX from the hole changes
  assert moved[distance <= px].all() and (result[distance <= px] == 255).all()
  rows, cols = np.nonzero(moved)  # the filled area spans the hole's box grown by PX
  top, left, bottom, right = HOLE
  assert (rows.min(), cols.min()) == (top - px, left - px)
  assert (rows.max() + 1, cols.max() + 1) == (bottom + px, right + px)


def test_dilate_is_clipped_at_the_photo_edge():
  image, mask = dark_photo(), np.zeros((HEIGHT, WIDTH), np.float32)
  mask[:5, :5] = 1.0
  result = photo.fill(WhiteFill(), image, mask, strategy='crop', dilate_mask=20)
  rows, cols = np.nonzero(changed(image, result))
  assert (rows.min(), cols.min(), rows.max(), cols.max()) == (0, 0, 24, 24)


@pytest.mark.parametrize('dilate', [0, 5])
def test_feather_blends_a_band_and_keeps_everything_beyond(dilate):
  feather = 8
  image, mask = dark_photo(seed=3), hole_mask()
  result = photo.fill(
      WhiteFill(), image, mask, strategy='crop', dilate_mask=dilate, feather=feather
  )
  grown = ndimage.distance_transform_edt(mask == 0) <= dilate
  beyond = ndimage.distance_transform_edt(~grown)  # distance to the grown hole
  np.testing.assert_array_equal(result[beyond >= feather], image[beyond >= feather])
  assert (result[grown] == 255).all()  # the hole itself is the fill alone
  # Half-way through the band, right of the hole on its middle row: an even blend.
  top, _, bottom, right = HOLE
  row, col = (top + bottom) // 2, right - 1 + dilate + feather // 2
  assert beyond[row, col] == feather // 2
  expected = np.rint(0.5 * 255 + 0.5 * image[row, col].astype(np.float64))
  np.testing.assert_allclose(result[row, col], expected, atol=1)
  # The weight falls with distance: band pixels nearer the hole are nearer white.
  line = result[row, right - 1 + dilate : right + dilate + feather].astype(np.int64)
  blend = (line - image[row, right - 1 + dilate : right + dilate + feather]) / (
      255 - image[row, right - 1 + dilate : right + dilate + feather].astype(np.float64)
  )
  assert np.all(np.diff(blend.mean(axis=-1)) < 0)


def test_the_weights_of_prepare():
  mask = hole_mask()
  holes, weights = mask_edits.prepare(mask, 0, 4)
  distance = ndimage.distance_transform_edt(mask == 0)
  np.testing.assert_allclose(weights, np.clip(1 - distance / 4, 0, 1), atol=1e-6)
  np.testing.assert_array_equal(holes > 0, distance < 4)  # the network fills weight > 0


@pytest.mark.parametrize(
    'name, value, fragment',
    [
        ('dilate_mask', -1, 'dilate_mask must be between 0 and 256 pixels, got -1'),
        ('feather', 300, 'feather must be between 0 and 256 pixels, got 300'),
        ('feather', 2.5, "feather must be a whole number of pixels, got '2.5'"),
        ('dilate_mask', True, 'dilate_mask must be a whole number of pixels'),
    ],
)
def test_bad_values_are_one_line(name, value, fragment):
  with pytest.raises(mask_edits.MaskOptionError, match=fragment.replace('(', r'\(')):
    photo.fill(WhiteFill(), dark_photo(), hole_mask(), **{name: value})


def test_the_inpaint_command_takes_both_in_folder_mode(
    tmp_path, capsys, monkeypatch, official_workdir
):
  images, masks, out = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  for i in range(2):
    save_image(images / f'{i}.png', dark_photo(seed=i))
    save_image(masks / f'{i}.png', rect_mask(HEIGHT, WIDTH, *HOLE))
  monkeypatch.setattr(Inpainter, 'from_workdir', classmethod(lambda cls, *args: WhiteFill()))
  args = [
      '--workdir',
      official_workdir,
      '--image-dir',
      images,
      '--mask-dir',
      masks,
      '--output-dir',
      out,
  ]
  for flag, value, fragment in [
      ('--dilate-mask', '-1', 'expected 0 to 256 pixels, got -1'),
      ('--feather', 'wide', "expected a whole number of pixels, got 'wide'"),
  ]:
    result = run_cli_in_process(capsys, inpaint, *args, flag, value)
    assert_usage_error(result, flag, fragment)
    assert not out.exists()
  result = run_cli_in_process(capsys, inpaint, *args, '--dilate-mask', '3', '--feather', '6')
  assert result.returncode == 0, result.stderr
  for i in range(2):
    expected = photo.fill(WhiteFill(), dark_photo(seed=i), hole_mask(), dilate_mask=3, feather=6)
    np.testing.assert_array_equal(read_rgb(out / f'{i}.png'), expected)


def test_the_real_network_with_zero_options_gives_todays_result(official_workdir, plain_compile):
  inpainter = Inpainter.from_workdir(str(official_workdir))
  image, mask = random_image(200, 260, seed=5), np.zeros((200, 260), np.float32)
  mask[60:110, 90:170] = 1.0
  today = inpainter.fill(image, mask)
  np.testing.assert_array_equal(inpainter.fill(image, mask, dilate_mask=0, feather=0), today)
  grown = inpainter.fill(image, mask, dilate_mask=6, feather=4)
  distance = ndimage.distance_transform_edt(mask == 0)
  far = distance > 6 + 4
  np.testing.assert_array_equal(grown[far], image[far])
  assert changed(image, grown)[(distance > 0) & (distance <= 6)].mean() > 0.9
