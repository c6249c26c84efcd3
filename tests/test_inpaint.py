"""Tests for lgnet_jax.data.image_io and the `python -m lgnet_jax.inpaint` command line."""

import pathlib
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import FAST_COMPILE, assert_usage_error, run_cli_in_process, run_module
from lgnet_jax.data import image_io
from lgnet_jax.serving import inpaint, photo
from lgnet_jax.data.image_io import ImageError
from lgnet_jax.serving.inference import Inpainter

# These tests check the command line's logic; the network's numerics are test_models' job.
pytestmark = pytest.mark.usefixtures('fast_compile')


@pytest.fixture(scope='module')
def shared_inpainter(official_workdir) -> Inpainter:
  return Inpainter.from_workdir(official_workdir)


@pytest.fixture
def reuse_inpainter(monkeypatch, shared_inpainter) -> Inpainter:
  """Makes main() reuse one loaded Inpainter, so its compiled forward pass is shared."""
  monkeypatch.setattr(
      inpaint.Inpainter, 'from_workdir', classmethod(lambda cls, *a: shared_inpainter)
  )
  return shared_inpainter


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def rect_mask(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
  """uint8 mask, 255 inside the rectangle (a hole), 0 elsewhere."""
  mask = np.zeros((height, width), np.uint8)
  mask[top:bottom, left:right] = 255
  return mask


def save(path: pathlib.Path, array: np.ndarray, **kwargs) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)
  return path


def read(path: pathlib.Path) -> np.ndarray:
  with Image.open(path) as img:
    return np.asarray(img.convert('RGB'))


@pytest.fixture
def run_cli(capsys):
  """Runs `python -m lgnet_jax.inpaint ARGS` in this process (see helpers.run_cli_in_process)."""
  return lambda *args: run_cli_in_process(capsys, inpaint, *args)


# ---------------------------------------------------------------- image_io: reading images


def test_load_image_rgb_roundtrip(tmp_path):
  image = random_image(20, 30)
  loaded = image_io.load_image(save(tmp_path / 'a.png', image))
  assert loaded.dtype == np.uint8 and loaded.shape == (20, 30, 3)
  np.testing.assert_array_equal(loaded, image)


def test_load_image_grayscale_becomes_three_equal_channels(tmp_path):
  gray = random_image(10, 12)[:, :, 0]
  loaded = image_io.load_image(save(tmp_path / 'g.png', gray))
  assert loaded.shape == (10, 12, 3)
  for c in range(3):
    np.testing.assert_array_equal(loaded[:, :, c], gray)


def test_load_image_drops_alpha(tmp_path):
  rgba = np.concatenate([random_image(8, 9), np.zeros((8, 9, 1), np.uint8)], axis=2)
  loaded = image_io.load_image(save(tmp_path / 'a.png', rgba))
  np.testing.assert_array_equal(loaded, rgba[:, :, :3])
  la = np.stack([np.full((4, 5), 77, np.uint8), np.zeros((4, 5), np.uint8)], axis=2)
  np.testing.assert_array_equal(
      image_io.load_image(save(tmp_path / 'la.png', la)), np.full((4, 5, 3), 77, np.uint8)
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
  save(tmp_path / 'e.png', image, exif=exif)
  np.testing.assert_array_equal(image_io.load_image(tmp_path / 'e.png'), np.rot90(image, k=-1))


def bad_files(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
  """A missing, a zero-byte, a non-image and a truncated file, all named like images."""
  zero = tmp_path / 'zero.png'
  zero.write_bytes(b'')
  text = tmp_path / 'text.png'
  text.write_text('not an image\n')
  full = save(tmp_path / 'full.png', random_image(64, 64))
  truncated = tmp_path / 'truncated.png'
  truncated.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
  return {'missing': tmp_path / 'missing.png', 'zero': zero, 'text': text, 'truncated': truncated}


@pytest.mark.parametrize('kind', ['missing', 'zero', 'text', 'truncated'])
def test_load_image_and_mask_bad_files_name_the_file(tmp_path, kind):
  path = bad_files(tmp_path)[kind]
  with pytest.raises(ImageError, match='image') as image_error:
    image_io.load_image(path)
  with pytest.raises(ImageError, match='mask') as mask_error:
    image_io.load_mask(path)
  for error in (image_error, mask_error):
    assert str(path) in str(error.value) and '\n' not in str(error.value)
  assert issubclass(ImageError, ValueError)


# ---------------------------------------------------------------- image_io: masks


def test_load_mask_binary(tmp_path):
  raw = rect_mask(10, 12, 2, 3, 6, 9)
  path = save(tmp_path / 'm.png', raw)
  mask, thresholded = image_io.load_mask(path)
  assert mask.dtype == np.float32 and mask.shape == (10, 12) and not thresholded
  np.testing.assert_array_equal(mask, raw / 255)
  inverted, thresholded = image_io.load_mask(path, invert=True)
  assert not thresholded
  np.testing.assert_array_equal(inverted, 1 - raw / 255)


def test_load_mask_non_binary_is_thresholded_at_half(tmp_path):
  raw = np.array([[0, 100, 127, 128, 200, 255]], np.uint8)
  mask, thresholded = image_io.load_mask(save(tmp_path / 'm.png', raw))
  assert thresholded
  np.testing.assert_array_equal(mask, [[0, 0, 0, 1, 1, 1]])
  inverted, thresholded = image_io.load_mask(tmp_path / 'm.png', invert=True)
  assert thresholded
  np.testing.assert_array_equal(inverted, [[1, 1, 1, 0, 0, 0]])


def test_load_mask_sixteen_bit_rgb_and_bilevel(tmp_path):
  raw = rect_mask(6, 8, 1, 1, 4, 5)
  expected = raw / 255
  Image.fromarray(raw.astype(np.uint16) * 257).save(tmp_path / 'm16.png')
  save(tmp_path / 'rgb.png', np.repeat(raw[:, :, None], 3, axis=2))
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


# ---------------------------------------------------------------- image_io: model input and paste


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
  np.testing.assert_array_equal(read(tmp_path / 'deep/x.png'), image)
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


# ---------------------------------------------------------------- the command line: results


def test_help_explains_the_behaviour():
  text = inpaint.build_parser().format_help()
  flat = ' '.join(text.split())
  for phrase in (
      '--strategy=crop cuts a square around each group of holes',
      'at native resolution',
      '--strategy=auto (the default)',
      'bit-identical',
      'White is a hole',
      '--invert-mask',
      'thresholded at 0.5 with a warning',
      'nearest neighbour',
      'before any output is written',
  ):
    assert phrase in flat, phrase


def test_single_non_256_image_through_the_real_inpainter(tmp_path, official_workdir):
  image = random_image(200, 300)
  raw_mask = rect_mask(200, 300, 40, 60, 130, 210)
  out = tmp_path / 'out' / 'result.png'
  result = run_module(
      'lgnet_jax.inpaint',
      '--workdir',
      official_workdir,
      '--image',
      save(tmp_path / 'img.png', image),
      '--mask',
      save(tmp_path / 'mask.png', raw_mask),
      '--output',
      out,
      env=FAST_COMPILE,
  )
  assert result.returncode == 0, result.stderr
  assert 'warning:' not in result.stderr
  assert str(out) in result.stdout
  inpainted = read(out)
  assert inpainted.shape == image.shape
  known, hole = raw_mask == 0, raw_mask == 255
  np.testing.assert_array_equal(inpainted[known], image[known])
  assert (inpainted[hole] != image[hole]).any(axis=-1).mean() > 0.5
  assert sorted(p.name for p in out.parent.iterdir()) == ['result.png']


def test_folder_mode_pairs_by_stem_and_batches(tmp_path, official_workdir, reuse_inpainter, capsys):
  images = {
      'a': random_image(200, 300, 1),
      'b': random_image(256, 256, 2),
      'c': random_image(180, 120, 3),
  }
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  save(image_dir / 'a.png', images['a'])
  save(image_dir / 'b.jpg', images['b'], quality=90)
  save(image_dir / 'c.bmp', images['c'])
  (image_dir / 'notes.txt').write_text('ignored')
  masks = {stem: rect_mask(*img.shape[:2], 20, 30, 90, 100) for stem, img in images.items()}
  for stem, mask in masks.items():
    save(mask_dir / f'{stem}.png', mask)
  calls = []
  forward = reuse_inpainter.__call__

  def spy(self, batch_images, batch_masks):
    calls.append(batch_images.shape)
    return forward(batch_images, batch_masks)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(Inpainter, '__call__', spy)
    inpaint.main(
        [
            '--workdir',
            str(official_workdir),
            '--image-dir',
            str(image_dir),
            '--mask-dir',
            str(mask_dir),
            '--output-dir',
            str(out_dir),
            '--batch-size',
            '2',
        ]
    )
  err = capsys.readouterr().err
  assert 'inpainted 2/3' in err and 'inpainted 3/3' in err
  assert calls == [(2, 256, 256, 3), (2, 256, 256, 3)]
  assert sorted(p.name for p in out_dir.iterdir()) == ['a.png', 'b.png', 'c.png']
  for stem, source in (('a', 'a.png'), ('b', 'b.jpg'), ('c', 'c.bmp')):
    original = image_io.load_image(image_dir / source)
    inpainted = read(out_dir / f'{stem}.png')
    assert inpainted.shape == original.shape
    known = masks[stem] == 0
    np.testing.assert_array_equal(inpainted[known], original[known])
    assert (inpainted[~known] != original[~known]).any()


def test_folder_mode_skips_unpaired_files_with_a_warning(
    tmp_path, official_workdir, reuse_inpainter, capsys
):
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  save(image_dir / 'a.png', random_image(64, 64))
  save(image_dir / 'lonely.png', random_image(64, 64))
  save(mask_dir / 'a.png', rect_mask(64, 64, 10, 10, 30, 30))
  save(mask_dir / 'orphan.png', rect_mask(64, 64, 10, 10, 30, 30))
  inpaint.main(
      [
          '--workdir',
          str(official_workdir),
          '--image-dir',
          str(image_dir),
          '--mask-dir',
          str(mask_dir),
          '--output-dir',
          str(out_dir),
      ]
  )
  err = capsys.readouterr().err
  assert 'warning:' in err and 'lonely.png' in err and 'orphan.png' in err
  assert [p.name for p in out_dir.iterdir()] == ['a.png']


def test_invert_mask_black_is_hole(tmp_path, official_workdir, reuse_inpainter):
  image = random_image(100, 150)
  raw_mask = 255 - rect_mask(100, 150, 20, 30, 60, 90)  # black rectangle on white
  out = tmp_path / 'out.png'
  inpaint.main(
      [
          '--workdir',
          str(official_workdir),
          '--image',
          str(save(tmp_path / 'i.png', image)),
          '--mask',
          str(save(tmp_path / 'm.png', raw_mask)),
          '--output',
          str(out),
          '--invert-mask',
      ]
  )
  inpainted = read(out)
  hole = raw_mask == 0
  np.testing.assert_array_equal(inpainted[~hole], image[~hole])
  assert (inpainted[hole] != image[hole]).any(axis=-1).mean() > 0.5


def test_non_binary_mask_warns_and_thresholds(tmp_path, official_workdir, reuse_inpainter, capsys):
  image = random_image(120, 160)
  raw_mask = rect_mask(120, 160, 30, 40, 80, 120)
  raw_mask[30:80, 40] = 100  # antialiased left edge: below the threshold, so known
  raw_mask[30:80, 119] = 200  # right edge: above it, so a hole
  mask_path = save(tmp_path / 'soft.png', raw_mask)
  out = tmp_path / 'out.png'
  inpaint.main(
      [
          '--workdir',
          str(official_workdir),
          '--image',
          str(save(tmp_path / 'i.png', image)),
          '--mask',
          str(mask_path),
          '--output',
          str(out),
      ]
  )
  err = capsys.readouterr().err
  assert f'warning: {mask_path} is not binary; thresholded at 0.5' in err
  inpainted = read(out)
  known = raw_mask <= 127
  np.testing.assert_array_equal(inpainted[known], image[known])
  np.testing.assert_array_equal(inpainted[30:80, 40], image[30:80, 40])
  assert (inpainted[~known] != image[~known]).any(axis=-1).mean() > 0.5


def test_jpeg_mask_is_thresholded(tmp_path, official_workdir, reuse_inpainter, capsys):
  image = random_image(96, 96)
  mask_path = save(tmp_path / 'm.jpg', rect_mask(96, 96, 21, 27, 70, 75), quality=75)
  out = tmp_path / 'out.png'
  inpaint.main(
      [
          '--workdir',
          str(official_workdir),
          '--image',
          str(save(tmp_path / 'i.png', image)),
          '--mask',
          str(mask_path),
          '--output',
          str(out),
      ]
  )
  assert 'not binary; thresholded at 0.5' in capsys.readouterr().err
  mask, thresholded = image_io.load_mask(mask_path)
  assert thresholded and 0.2 < mask.mean() < 0.3
  np.testing.assert_array_equal(read(out)[mask == 0], image[mask == 0])


def test_mask_of_another_size_is_resized_nearest(
    tmp_path, official_workdir, reuse_inpainter, capsys
):
  image = random_image(200, 300)
  small_mask = rect_mask(100, 150, 20, 30, 60, 90)
  mask_path = save(tmp_path / 'small.png', small_mask)
  out = tmp_path / 'out.png'
  inpaint.main(
      [
          '--workdir',
          str(official_workdir),
          '--image',
          str(save(tmp_path / 'i.png', image)),
          '--mask',
          str(mask_path),
          '--output',
          str(out),
      ]
  )
  err = capsys.readouterr().err
  assert 'warning:' in err and str(mask_path) in err and 'nearest neighbour' in err
  inpainted = read(out)
  hole = np.kron(small_mask, np.ones((2, 2), np.uint8)) == 255
  np.testing.assert_array_equal(inpainted[~hole], image[~hole])
  assert (inpainted[hole] != image[hole]).any(axis=-1).mean() > 0.5


def test_padding_the_last_batch_is_dropped(tmp_path):
  pairs = []
  for i in range(5):
    image_path = save(tmp_path / f'i{i}.png', np.full((32, 32, 3), 10 * i, np.uint8))
    mask_path = save(tmp_path / f'm{i}.png', rect_mask(32, 32, 8, 8, 24, 24))
    pairs.append(inpaint.Pair(image_path, mask_path, tmp_path / 'out' / f'o{i}.png'))
  shapes = []

  def fake_inpainter(images, masks):
    shapes.append(images.shape)
    return images * (1 - masks) + masks  # holes become white

  inpaint.inpaint_pairs(fake_inpainter, pairs, invert=False, batch_size=4)
  assert shapes == [(4, 256, 256, 3), (4, 256, 256, 3)]
  for i in range(5):
    out = read(tmp_path / 'out' / f'o{i}.png')
    mask = rect_mask(32, 32, 8, 8, 24, 24) == 255
    assert (out[~mask] == 10 * i).all()
    assert (out[10:22, 10:22] == 255).all()  # the hole's border blends in the known pixels
  assert len(list((tmp_path / 'out').iterdir())) == 5


# ---------------------------------------------------------------- the command line: bad input


@pytest.fixture
def good_pair(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
  return (
      save(tmp_path / 'img.png', random_image(64, 80)),
      save(tmp_path / 'mask.png', rect_mask(64, 80, 10, 10, 40, 40)),
  )


@pytest.mark.parametrize('kind', ['missing', 'zero', 'text', 'truncated'])
@pytest.mark.parametrize('role', ['image', 'mask'])
def test_bad_image_or_mask_file(tmp_path, official_workdir, good_pair, kind, role, run_cli):
  bad = bad_files(tmp_path)[kind]
  image, mask = (bad, good_pair[1]) if role == 'image' else (good_pair[0], bad)
  out = tmp_path / 'out.png'
  result = run_cli('--workdir', official_workdir, '--image', image, '--mask', mask, '--output', out)
  line = assert_usage_error(result, bad)
  assert role in line
  assert not out.exists()


@pytest.mark.parametrize('invert, raw', [(False, 255), (True, 0)])
def test_mask_without_known_pixel_is_refused(
    tmp_path, official_workdir, good_pair, invert, raw, run_cli
):
  mask = save(tmp_path / 'flat.png', np.full((64, 80), raw, np.uint8))
  out = tmp_path / 'out.png'
  args = ['--image', good_pair[0], '--mask', mask, '--output', out]
  result = run_cli('--workdir', official_workdir, *args, *(['--invert-mask'] if invert else []))
  assert 'is all hole; there is nothing to inpaint from' in assert_usage_error(result, mask)
  assert not out.exists()


@pytest.mark.parametrize('invert, raw, colour', [(False, 0, 'white'), (True, 255, 'black')])
def test_mask_without_hole_leaves_the_image_unchanged_with_a_warning(
    tmp_path, official_workdir, reuse_inpainter, good_pair, invert, raw, colour, run_cli
):
  mask = save(tmp_path / 'flat.png', np.full((64, 80), raw, np.uint8))
  out = tmp_path / 'out.png'
  args = ['--image', good_pair[0], '--mask', mask, '--output', out]
  result = run_cli('--workdir', official_workdir, *args, *(['--invert-mask'] if invert else []))
  assert result.returncode == 0, result.stderr
  assert f'warning: mask {mask} has no hole (no {colour} pixel): the image is left unchanged' in (
      result.stderr
  )
  np.testing.assert_array_equal(read(out), read(good_pair[0]))


@pytest.mark.parametrize(
    'invert, fraction, expected',
    [
        (
            False,
            0.6,
            'is mostly hole (60% white, black is kept); white marks a hole, so if white '
            'marks what to keep, pass --invert-mask',
        ),
        (
            True,
            0.6,
            'is mostly hole (60% black, white is kept); black marks a hole, so if black '
            'marks what to keep, drop --invert-mask',
        ),
        (False, 0.95, 'holes cover 95% of the image, little context is left'),
    ],
)
def test_masks_that_are_mostly_hole_are_warned_about(tmp_path, invert, fraction, expected):
  mask = np.zeros((40, 50), np.float32)
  mask[: round(40 * fraction)] = 1.0
  (warning,) = photo.mask_warnings(mask, 'm.png', invert)
  assert warning.startswith('mask m.png') and expected in warning
  mask[:] = 0.0
  mask[:4] = 1.0
  assert photo.mask_warnings(mask, 'm.png', invert) == []


def test_usage_error_exits_2_from_the_command_line(tmp_path, official_workdir, good_pair):
  """The real `python -m` process: one `error:` line, exit status 2, nothing written."""
  out, missing = tmp_path / 'out.png', tmp_path / 'missing.png'
  result = run_module(
      'lgnet_jax.inpaint',
      '--workdir',
      official_workdir,
      '--image',
      good_pair[0],
      '--mask',
      missing,
      '--output',
      out,
  )
  assert 'mask' in assert_usage_error(result, missing)
  assert result.stdout == '' and not out.exists()


def test_bad_workdirs(tmp_path, official_workdir, good_pair, run_cli):
  out = tmp_path / 'out.png'
  not_a_workdir = tmp_path / 'empty_dir'
  not_a_workdir.mkdir()
  no_checkpoint = tmp_path / 'no_checkpoint'
  no_checkpoint.mkdir()
  (no_checkpoint / 'config.json').write_text((official_workdir / 'config.json').read_text())
  for workdir, extra in (
      (tmp_path / 'missing', ()),
      (not_a_workdir, ()),
      (no_checkpoint, ()),
      (official_workdir, ('--step', '12345')),
  ):
    result = run_cli(
        '--workdir',
        workdir,
        '--image',
        good_pair[0],
        '--mask',
        good_pair[1],
        '--output',
        out,
        *extra,
    )
    assert_usage_error(result, workdir)
    assert not out.exists()


def test_flag_combinations(tmp_path, official_workdir, good_pair, run_cli):
  out = tmp_path / 'out.png'
  mixed = run_cli(
      '--workdir',
      official_workdir,
      '--image',
      good_pair[0],
      '--mask',
      good_pair[1],
      '--output',
      out,
      '--image-dir',
      tmp_path,
  )
  assert 'not both' in assert_usage_error(mixed)
  neither = run_cli('--workdir', official_workdir)
  assert '--image-dir' in assert_usage_error(neither, '--image')
  partial = run_cli('--workdir', official_workdir, '--image', good_pair[0], '--output', out)
  assert_usage_error(partial, '--mask')
  bad_extension = run_cli(
      '--workdir',
      official_workdir,
      '--image',
      good_pair[0],
      '--mask',
      good_pair[1],
      '--output',
      tmp_path / 'out.xyz',
  )
  assert_usage_error(bad_extension, 'out.xyz')
  assert not out.exists() and not (tmp_path / 'out.xyz').exists()


def test_empty_image_folder(tmp_path, official_workdir, run_cli):
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  image_dir.mkdir()
  (image_dir / 'readme.txt').write_text('no image here')
  save(mask_dir / 'a.png', rect_mask(8, 8, 2, 2, 4, 4))
  result = run_cli(
      '--workdir',
      official_workdir,
      '--image-dir',
      image_dir,
      '--mask-dir',
      mask_dir,
      '--output-dir',
      out_dir,
  )
  assert 'holds no image' in assert_usage_error(result, image_dir)
  assert not out_dir.exists()
  missing = run_cli(
      '--workdir',
      official_workdir,
      '--image-dir',
      tmp_path / 'nope',
      '--mask-dir',
      mask_dir,
      '--output-dir',
      out_dir,
  )
  assert_usage_error(missing, tmp_path / 'nope')


def test_folders_that_do_not_pair(tmp_path, official_workdir, run_cli):
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  save(image_dir / 'cat.png', random_image(32, 32))
  save(mask_dir / 'dog.png', rect_mask(32, 32, 2, 2, 9, 9))
  result = run_cli(
      '--workdir',
      official_workdir,
      '--image-dir',
      image_dir,
      '--mask-dir',
      mask_dir,
      '--output-dir',
      out_dir,
  )
  assert_usage_error(result, 'cat', 'dog')
  assert not out_dir.exists()


def test_one_bad_pair_fails_the_folder_before_any_output(tmp_path, official_workdir, run_cli):
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  for stem in ('a', 'b', 'c'):
    save(image_dir / f'{stem}.png', random_image(48, 48))
  save(mask_dir / 'a.png', rect_mask(48, 48, 5, 5, 20, 20))
  save(mask_dir / 'b.png', rect_mask(48, 48, 5, 5, 20, 20))
  all_hole = save(mask_dir / 'c.png', np.full((48, 48), 255, np.uint8))
  result = run_cli(
      '--workdir',
      official_workdir,
      '--image-dir',
      image_dir,
      '--mask-dir',
      mask_dir,
      '--output-dir',
      out_dir,
      '--batch-size',
      '1',
  )
  assert 'is all hole' in assert_usage_error(result, all_hole)
  assert not out_dir.exists()


def test_folder_output_may_not_overwrite_inputs(tmp_path, official_workdir, run_cli):
  folder = tmp_path / 'both'
  save(folder / 'a.png', random_image(32, 32))
  masks = tmp_path / 'masks'
  save(masks / 'a.png', rect_mask(32, 32, 2, 2, 9, 9))
  before = (folder / 'a.png').read_bytes()
  result = run_cli(
      '--workdir',
      official_workdir,
      '--image-dir',
      folder,
      '--mask-dir',
      masks,
      '--output-dir',
      folder,
  )
  assert 'overwrite' in assert_usage_error(result, folder / 'a.png')
  assert (folder / 'a.png').read_bytes() == before


def test_strategy_flags_reach_the_regions(tmp_path, official_workdir, reuse_inpainter, run_cli):
  """`--strategy=crop` fills a small hole of a large photo at native resolution (see
  test_photo); a bad margin is one error line before anything runs."""
  image, raw_mask = random_image(600, 800), rect_mask(600, 800, 300, 400, 330, 440)
  paths = [save(tmp_path / 'img.png', image), save(tmp_path / 'mask.png', raw_mask)]
  out = tmp_path / 'out.png'
  args = ['--workdir', official_workdir, '--image', paths[0], '--mask', paths[1], '--output', out]
  result = run_cli(*args, '--crop-margin', '-3')
  assert 'crop margin must be a whole number of pixels >= 0, got -3' in assert_usage_error(result)
  assert not out.exists()
  calls = []
  original = reuse_inpainter.stages

  def recording_stages(images, masks):
    calls.append(np.asarray(images))
    return original(images, masks)

  reuse_inpainter.stages = recording_stages
  try:
    assert run_cli(*args, '--strategy', 'crop').returncode == 0
  finally:
    del reuse_inpainter.stages
  (images,) = calls
  # The 256-pixel square centred on the 30x40 hole, at native resolution.
  np.testing.assert_array_equal(images[0], image[187:443, 292:548] / np.float32(127.5) - 1)
  result = read(out)
  known = raw_mask == 0
  np.testing.assert_array_equal(result[known], image[known])
