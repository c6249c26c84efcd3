"""lgnet_jax.data.image_io: reading photos and masks of any format, the network's input, pasting
its output into the holes only, writing results atomically."""

import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import bad_image_files, random_image, read_rgb, rect_mask, save_image
from lgnet_jax.data import image_io
from lgnet_jax.data.image_io import ImageError


def test_load_image_rgb_roundtrip(tmp_path):
  image = random_image(20, 30)
  loaded = image_io.load_image(save_image(tmp_path / 'a.png', image))
  assert loaded.dtype == np.uint8 and loaded.shape == (20, 30, 3)
  np.testing.assert_array_equal(loaded, image)


def test_load_image_grayscale_becomes_three_equal_channels(tmp_path):
  gray = random_image(10, 12)[:, :, 0]
  loaded = image_io.load_image(save_image(tmp_path / 'g.png', gray))
  assert loaded.shape == (10, 12, 3)
  for c in range(3):
    np.testing.assert_array_equal(loaded[:, :, c], gray)


def test_load_image_drops_alpha(tmp_path):
  rgba = np.concatenate([random_image(8, 9), np.zeros((8, 9, 1), np.uint8)], axis=2)
  loaded = image_io.load_image(save_image(tmp_path / 'a.png', rgba))
  np.testing.assert_array_equal(loaded, rgba[:, :, :3])
  la = np.stack([np.full((4, 5), 77, np.uint8), np.zeros((4, 5), np.uint8)], axis=2)
  np.testing.assert_array_equal(
      image_io.load_image(save_image(tmp_path / 'la.png', la)), np.full((4, 5, 3), 77, np.uint8)
  )


def test_load_image_palette_with_and_without_transparency(tmp_path):
  rgb = random_image(6, 7)
  palette = Image.fromarray(rgb).quantize(16)
  expected = np.asarray(palette.convert('RGB'))
  palette.save(tmp_path / 'p.png')
  palette.save(tmp_path / 'pt.png', transparency=0)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    np.testing.assert_array_equal(image_io.load_image(tmp_path / 'p.png'), expected)
    np.testing.assert_array_equal(image_io.load_image(tmp_path / 'pt.png'), expected)


def test_load_image_sixteen_bit_scales_to_uint8(tmp_path):
  values = np.array([[0, 1, 128, 255]], np.uint16)
  img16 = Image.fromarray(values * 257)
  assert img16.mode == 'I;16'
  img16.save(tmp_path / 'g16.png')
  loaded = image_io.load_image(tmp_path / 'g16.png')
  np.testing.assert_array_equal(loaded[:, :, 0], values.astype(np.uint8))
  np.testing.assert_array_equal(loaded[:, :, 2], values.astype(np.uint8))
  Image.fromarray((values * 257).astype(np.int32)).save(tmp_path / 'g32.tif')
  with Image.open(tmp_path / 'g32.tif') as img:
    assert img.mode == 'I'
  np.testing.assert_array_equal(
      image_io.load_image(tmp_path / 'g32.tif')[:, :, 1], values.astype(np.uint8)
  )


def test_load_image_cmyk(tmp_path):
  Image.new('CMYK', (3, 2), (0, 255, 0, 0)).save(tmp_path / 'c.tif')
  loaded = image_io.load_image(tmp_path / 'c.tif')
  assert loaded.shape == (2, 3, 3)
  np.testing.assert_array_equal(loaded[0, 0], [255, 0, 255])


def test_load_image_applies_exif_orientation(tmp_path):
  image = random_image(4, 6)
  exif = Image.Exif()
  exif[0x0112] = 6  # stored rotated; viewers turn it 90 degrees clockwise
  save_image(tmp_path / 'e.png', image, exif=exif)
  np.testing.assert_array_equal(image_io.load_image(tmp_path / 'e.png'), np.rot90(image, k=-1))


@pytest.mark.parametrize('kind', ['missing', 'zero', 'text', 'truncated'])
def test_load_image_and_mask_bad_files_name_the_file(tmp_path, kind):
  path = bad_image_files(tmp_path)[kind]
  with pytest.raises(ImageError, match='image') as image_error:
    image_io.load_image(path)
  with pytest.raises(ImageError, match='mask') as mask_error:
    image_io.load_mask(path)
  for error in (image_error, mask_error):
    assert str(path) in str(error.value) and '\n' not in str(error.value)
  assert issubclass(ImageError, ValueError)


def test_load_mask_binary(tmp_path):
  raw = rect_mask(10, 12, 2, 3, 6, 9)
  path = save_image(tmp_path / 'm.png', raw)
  mask, thresholded = image_io.load_mask(path)
  assert mask.dtype == np.float32 and mask.shape == (10, 12) and not thresholded
  np.testing.assert_array_equal(mask, raw / 255)
  inverted, thresholded = image_io.load_mask(path, invert=True)
  assert not thresholded
  np.testing.assert_array_equal(inverted, 1 - raw / 255)


def test_load_mask_non_binary_is_thresholded_at_half(tmp_path):
  raw = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
  mask, thresholded = image_io.load_mask(save_image(tmp_path / 'm.png', raw))
  assert thresholded
  np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1, 1]])
  inverted, thresholded = image_io.load_mask(tmp_path / 'm.png', invert=True)
  assert thresholded
  np.testing.assert_array_equal(inverted, [[1, 1, 1, 0, 0, 0]])


def test_load_mask_sixteen_bit_rgb_and_bilevel(tmp_path):
  raw = rect_mask(6, 8, 1, 1, 4, 5)
  expected = raw / 255
  Image.fromarray(raw.astype(np.uint16) * 257).save(tmp_path / 'm16.png')
  save_image(tmp_path / 'rgb.png', np.repeat(raw[:, :, None], 3, axis=2))
  Image.fromarray(raw).convert('1').save(tmp_path / 'bits.png')
  for name in ('m16.png', 'rgb.png', 'bits.png'):
    mask, thresholded = image_io.load_mask(tmp_path / name)
    assert not thresholded, name
    np.testing.assert_array_equal(mask, expected, err_msg=name)


def test_resize_mask_nearest_stays_binary():
  small = rect_mask(10, 15, 2, 5, 6, 10) / 255
  big = image_io.resize_mask_nearest(small, 20, 30)
  assert big.shape == (20, 30) and set(np.unique(big)) == {0.0, 1.0}
  np.testing.assert_array_equal(big, np.kron(small, np.ones((2, 2))))


def test_to_model_input_shapes_and_ranges():
  image = np.zeros((300, 200, 3), np.uint8)
  image[:, :, 0] = 255
  mask = rect_mask(300, 200, 100, 50, 200, 150) / 255
  model_image, model_mask = image_io.to_model_input(image, mask)
  assert model_image.shape == (256, 256, 3) and model_image.dtype == np.float32
  assert model_mask.shape == (256, 256, 1) and model_mask.dtype == np.float32
  np.testing.assert_allclose(model_image[:, :, 0], 1.0)
  np.testing.assert_allclose(model_image[:, :, 1], -1.0)
  assert set(np.unique(model_mask)) == {0.0, 1.0}
  assert abs(model_mask.mean() - 1 / 6) < 0.01  # the hole is a third of the height, half the width


def test_to_model_input_keeps_thin_holes_when_shrinking():
  mask = np.zeros((1024, 1024), np.float32)
  mask[401, :] = 1  # a one-pixel scratch that nearest neighbour at 1/4 scale would drop
  mask[:, 2] = 1
  _, model_mask = image_io.to_model_input(np.zeros((1024, 1024, 3), np.uint8), mask)
  rows = np.flatnonzero(model_mask[:, 100, 0])
  cols = np.flatnonzero(model_mask[10, :, 0])
  np.testing.assert_array_equal(rows, [401 // 4])
  np.testing.assert_array_equal(cols, [0])


def test_paste_holes_changes_only_holes():
  original = random_image(90, 70)
  mask = rect_mask(90, 70, 10, 20, 50, 60) / 255
  result = np.zeros((256, 256, 3), np.float32)  # mid gray
  out = image_io.paste_holes(original, result, mask)
  assert out.shape == original.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[mask == 0], original[mask == 0])
  np.testing.assert_array_equal(out[mask == 1], 128)
  np.testing.assert_array_equal(
      image_io.paste_holes(original, np.full((256, 256, 3), 5.0), mask)[mask == 1], 255
  )


def test_save_image_atomic_formats_and_parent(tmp_path):
  image = random_image(12, 10)
  for name in ('deep/x.png', 'y.jpg', 'z.webp', 'w.bmp'):
    image_io.save_image_atomic(tmp_path / name, image)
    with Image.open(tmp_path / name) as img:
      assert img.size == (10, 12)
  np.testing.assert_array_equal(read_rgb(tmp_path / 'deep/x.png'), image)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['deep', 'w.bmp', 'y.jpg', 'z.webp']
  with pytest.raises(ImageError, match='out.xyz'):
    image_io.save_image_atomic(tmp_path / 'out.xyz', image)


def test_save_image_atomic_failure_leaves_previous_file(tmp_path, monkeypatch):
  target = tmp_path / 'out.png'
  target.write_bytes(b'previous')

  def failing_save(self, fp, *args, **kwargs):
    fp.write(b'partial')
    raise OSError('disk full')

  monkeypatch.setattr(Image.Image, 'save', failing_save)
  with pytest.raises(OSError, match='disk full'):
    image_io.save_image_atomic(target, random_image(4, 4))
  assert target.read_bytes() == b'previous'
  assert [p.name for p in tmp_path.iterdir()] == ['out.png']


@pytest.mark.parametrize('invert', [False, True])
def test_load_hole_mask_is_load_mask_values_thresholded_in_any_mode(tmp_path, invert):
  rng = np.random.default_rng(7)
  soft = rng.integers(0, 256, (11, 13), dtype=np.uint8)
  soft[0, :4] = [127, 128, 0, 255]
  binary = np.where(soft > 127, 255, 0).astype(np.uint8)
  files = {
      'soft.png': Image.fromarray(soft),
      'binary.png': Image.fromarray(binary),
      'rgb.png': Image.fromarray(np.repeat(soft[:, :, None], 3, axis=2)),
      'palette.png': Image.fromarray(np.repeat(soft[:, :, None], 3, axis=2)).quantize(64),
      'bits.png': Image.fromarray(binary).convert('1'),
      'deep.png': Image.fromarray(soft.astype(np.uint16) * 257 + 100),
      'float.tif': Image.fromarray(soft.astype(np.float32) / 255.0),
      'float255.tif': Image.fromarray(soft.astype(np.float32)),
  }
  for name, img in files.items():
    img.save(tmp_path / name)
    values = image_io.load_mask_values(tmp_path / name, invert)
    holes, thresholded = image_io.load_hole_mask(tmp_path / name, invert, rows=3)
    assert holes.dtype == np.bool_ and holes.shape == (11, 13), name
    np.testing.assert_array_equal(holes, values > 0.5, err_msg=name)
    assert thresholded == bool(((values != 0) & (values != 1)).any()), name
    assert thresholded == (name not in ('binary.png', 'bits.png')), name
    mask, load_mask_thresholded = image_io.load_mask(tmp_path / name, invert)
    assert mask.dtype == np.float32 and load_mask_thresholded == thresholded
    np.testing.assert_array_equal(mask, holes)
