"""The `python -m lgnet_jax.inpaint` command line: its results, warnings and refusals.

One test runs the real command in a process of its own with the real network; the others run
its `main` in this process (helpers.run_cli_in_process) with a stand-in network that fills
holes with white, since they test the command's logic (the network's numerics are
test_models' job, a photo's strategies test_photo's, image decoding test_image_io's).
"""

import pathlib

import numpy as np
import pytest

from helpers import (
    FAST_COMPILE,
    WhiteFill,
    assert_usage_error,
    bad_image_files,
    random_image,
    read_rgb,
    rect_mask,
    run_cli_in_process,
    run_module,
    save_image,
)
from lgnet_jax.data import image_io
from lgnet_jax.serving import inpaint, mask_checks
from lgnet_jax.serving.inference import Inpainter
from lgnet_jax.serving.pairs import Pair


@pytest.fixture
def run_cli(capsys):
  """Runs `python -m lgnet_jax.inpaint ARGS` in this process (see helpers.run_cli_in_process)."""
  return lambda *args: run_cli_in_process(capsys, inpaint, *args)


@pytest.fixture
def network(monkeypatch) -> WhiteFill:
  """What `Inpainter.from_workdir` loads, for the command: a WhiteFill recording its batches."""
  fake = WhiteFill()
  monkeypatch.setattr(Inpainter, 'from_workdir', classmethod(lambda cls, *args: fake))
  return fake


@pytest.fixture
def good_pair(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
  return (
      save_image(tmp_path / 'img.png', random_image(64, 80)),
      save_image(tmp_path / 'mask.png', rect_mask(64, 80, 10, 10, 40, 40)),
  )


def one_image_args(workdir, image, mask, output) -> list:
  return ['--workdir', workdir, '--image', image, '--mask', mask, '--output', output]


def folder_args(workdir, image_dir, mask_dir, output_dir) -> list:
  return [
      '--workdir',
      workdir,
      '--image-dir',
      image_dir,
      '--mask-dir',
      mask_dir,
      '--output-dir',
      output_dir,
  ]


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


def test_one_photo_through_the_real_network_in_a_real_process(tmp_path, official_workdir):
  image = random_image(200, 300)
  raw_mask = rect_mask(200, 300, 40, 60, 130, 210)
  out = tmp_path / 'out' / 'result.png'
  image_path = save_image(tmp_path / 'img.png', image)
  mask_path = save_image(tmp_path / 'mask.png', raw_mask)
  result = run_module(
      'lgnet_jax.inpaint',
      *one_image_args(official_workdir, image_path, mask_path, out),
      env=FAST_COMPILE,
  )
  assert result.returncode == 0, result.stderr
  assert 'warning:' not in result.stderr
  assert str(out) in result.stdout
  inpainted = read_rgb(out)
  assert inpainted.shape == image.shape
  known, hole = raw_mask == 0, raw_mask == 255
  np.testing.assert_array_equal(inpainted[known], image[known])
  assert (inpainted[hole] != image[hole]).any(axis=-1).mean() > 0.5
  assert sorted(p.name for p in out.parent.iterdir()) == ['result.png']


def test_folder_mode_pairs_by_stem_and_batches(tmp_path, official_workdir, network, run_cli):
  images = {
      'a': random_image(200, 300, 1),
      'b': random_image(256, 256, 2),
      'c': random_image(180, 120, 3),
  }
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  save_image(image_dir / 'a.png', images['a'])
  save_image(image_dir / 'b.jpg', images['b'], quality=90)
  save_image(image_dir / 'c.bmp', images['c'])
  (image_dir / 'notes.txt').write_text('ignored')
  masks = {stem: rect_mask(*img.shape[:2], 20, 30, 90, 100) for stem, img in images.items()}
  for stem, mask in masks.items():
    save_image(mask_dir / f'{stem}.png', mask)
  result = run_cli(*folder_args(official_workdir, image_dir, mask_dir, out_dir), '--batch-size', 2)
  assert result.returncode == 0, result.stderr
  assert 'inpainted 2/3' in result.stderr and 'inpainted 3/3' in result.stderr
  assert f'wrote 3 images to {out_dir}' in result.stdout
  assert [batch.shape for batch in network.images] == [(2, 256, 256, 3), (2, 256, 256, 3)]
  assert sorted(p.name for p in out_dir.iterdir()) == ['a.png', 'b.png', 'c.png']
  for stem, source in (('a', 'a.png'), ('b', 'b.jpg'), ('c', 'c.bmp')):
    original = image_io.load_image(image_dir / source)
    inpainted = read_rgb(out_dir / f'{stem}.png')
    assert inpainted.shape == original.shape
    known = masks[stem] == 0
    np.testing.assert_array_equal(inpainted[known], original[known])
    assert (inpainted[~known] != original[~known]).any()


def test_folder_mode_skips_unpaired_files_with_a_warning(
    tmp_path, official_workdir, network, run_cli
):
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  save_image(image_dir / 'a.png', random_image(64, 64))
  save_image(image_dir / 'lonely.png', random_image(64, 64))
  save_image(mask_dir / 'a.png', rect_mask(64, 64, 10, 10, 30, 30))
  save_image(mask_dir / 'orphan.png', rect_mask(64, 64, 10, 10, 30, 30))
  result = run_cli(*folder_args(official_workdir, image_dir, mask_dir, out_dir))
  assert result.returncode == 0, result.stderr
  assert f'warning: image {image_dir / "lonely.png"} has no mask' in result.stderr
  assert f'warning: mask {mask_dir / "orphan.png"} has no image' in result.stderr
  assert [p.name for p in out_dir.iterdir()] == ['a.png']


def test_invert_mask_black_is_hole(tmp_path, official_workdir, network, run_cli):
  image = random_image(100, 150)
  raw_mask = 255 - rect_mask(100, 150, 20, 30, 60, 90)  # black rectangle on white
  out = tmp_path / 'out.png'
  image_path, mask_path = save_image(tmp_path / 'i.png', image), save_image(
      tmp_path / 'm.png', raw_mask
  )
  result = run_cli(*one_image_args(official_workdir, image_path, mask_path, out), '--invert-mask')
  assert result.returncode == 0, result.stderr
  assert result.stdout == f'wrote {out}\n'
  inpainted = read_rgb(out)
  hole = raw_mask == 0
  np.testing.assert_array_equal(inpainted[~hole], image[~hole])
  assert (inpainted[hole] != image[hole]).any(axis=-1).mean() > 0.5


def test_non_binary_mask_warns_and_thresholds(tmp_path, official_workdir, network, run_cli):
  image = random_image(120, 160)
  raw_mask = rect_mask(120, 160, 30, 40, 80, 120)
  raw_mask[30:80, 40] = 100  # antialiased left edge: below the threshold, so known
  raw_mask[30:80, 119] = 200  # right edge: above it, so a hole
  mask_path = save_image(tmp_path / 'soft.png', raw_mask)
  out = tmp_path / 'out.png'
  result = run_cli(
      *one_image_args(official_workdir, save_image(tmp_path / 'i.png', image), mask_path, out)
  )
  assert f'warning: {mask_path} is not binary; thresholded at 0.5' in result.stderr
  inpainted = read_rgb(out)
  known = raw_mask <= 127
  np.testing.assert_array_equal(inpainted[known], image[known])
  np.testing.assert_array_equal(inpainted[30:80, 40], image[30:80, 40])
  assert (inpainted[~known] != image[~known]).any(axis=-1).mean() > 0.5


def test_jpeg_mask_is_thresholded(tmp_path, official_workdir, network, run_cli):
  image = random_image(96, 96)
  mask_path = save_image(tmp_path / 'm.jpg', rect_mask(96, 96, 21, 27, 70, 75), quality=75)
  out = tmp_path / 'out.png'
  result = run_cli(
      *one_image_args(official_workdir, save_image(tmp_path / 'i.png', image), mask_path, out)
  )
  assert 'not binary; thresholded at 0.5' in result.stderr
  mask, thresholded = image_io.load_mask(mask_path)
  assert thresholded and 0.2 < mask.mean() < 0.3
  np.testing.assert_array_equal(read_rgb(out)[mask == 0], image[mask == 0])


def test_mask_of_another_size_is_resized_nearest(tmp_path, official_workdir, network, run_cli):
  image = random_image(200, 300)
  small_mask = rect_mask(100, 150, 20, 30, 60, 90)
  mask_path = save_image(tmp_path / 'small.png', small_mask)
  out = tmp_path / 'out.png'
  result = run_cli(
      *one_image_args(official_workdir, save_image(tmp_path / 'i.png', image), mask_path, out)
  )
  assert 'warning:' in result.stderr and str(mask_path) in result.stderr
  assert 'nearest neighbour' in result.stderr
  inpainted = read_rgb(out)
  hole = np.kron(small_mask, np.ones((2, 2), np.uint8)) == 255
  np.testing.assert_array_equal(inpainted[~hole], image[~hole])
  assert (inpainted[hole] != image[hole]).any(axis=-1).mean() > 0.5


def test_padding_the_last_batch_is_dropped(tmp_path):
  pairs = []
  for i in range(5):
    image_path = save_image(tmp_path / f'i{i}.png', np.full((32, 32, 3), 10 * i, np.uint8))
    mask_path = save_image(tmp_path / f'm{i}.png', rect_mask(32, 32, 8, 8, 24, 24))
    pairs.append(Pair(image_path, mask_path, tmp_path / 'out' / f'o{i}.png'))
  network = WhiteFill()
  inpaint.inpaint_pairs(network, pairs, invert=False, batch_size=4)
  assert [batch.shape for batch in network.images] == [(4, 256, 256, 3), (4, 256, 256, 3)]
  for i in range(5):
    out = read_rgb(tmp_path / 'out' / f'o{i}.png')
    mask = rect_mask(32, 32, 8, 8, 24, 24) == 255
    assert (out[~mask] == 10 * i).all()
    assert (out[10:22, 10:22] == 255).all()  # the hole's border blends in the known pixels
  assert len(list((tmp_path / 'out').iterdir())) == 5


def test_strategy_flags_reach_the_regions(tmp_path, official_workdir, network, run_cli):
  """`--strategy=crop` fills a small hole of a large photo at native resolution (see
  test_photo); a bad margin is one error line before anything runs."""
  image, raw_mask = random_image(600, 800), rect_mask(600, 800, 300, 400, 330, 440)
  paths = [save_image(tmp_path / 'img.png', image), save_image(tmp_path / 'mask.png', raw_mask)]
  out = tmp_path / 'out.png'
  args = one_image_args(official_workdir, *paths, out)
  result = run_cli(*args, '--crop-margin', '-3')
  assert 'crop margin must be a whole number of pixels >= 0, got -3' in assert_usage_error(result)
  assert not out.exists() and not network.images
  assert run_cli(*args, '--strategy', 'crop').returncode == 0
  (images,) = network.images
  # The 256-pixel square centred on the 30x40 hole, at native resolution.
  np.testing.assert_array_equal(images[0], image[187:443, 292:548] / np.float32(127.5) - 1)
  known = raw_mask == 0
  np.testing.assert_array_equal(read_rgb(out)[known], image[known])


@pytest.mark.parametrize('kind', ['missing', 'zero', 'text', 'truncated'])
@pytest.mark.parametrize('role', ['image', 'mask'])
def test_bad_image_or_mask_file(tmp_path, official_workdir, good_pair, kind, role, run_cli):
  bad = bad_image_files(tmp_path)[kind]
  image, mask = (bad, good_pair[1]) if role == 'image' else (good_pair[0], bad)
  out = tmp_path / 'out.png'
  result = run_cli(*one_image_args(official_workdir, image, mask, out))
  line = assert_usage_error(result, bad)
  assert role in line
  assert result.stdout == '' and not out.exists()


@pytest.mark.parametrize('invert, raw', [(False, 255), (True, 0)])
def test_mask_without_known_pixel_is_refused(
    tmp_path, official_workdir, good_pair, invert, raw, run_cli
):
  mask = save_image(tmp_path / 'flat.png', np.full((64, 80), raw, np.uint8))
  out = tmp_path / 'out.png'
  args = one_image_args(official_workdir, good_pair[0], mask, out)
  result = run_cli(*args, *(['--invert-mask'] if invert else []))
  assert 'is all hole; there is nothing to inpaint from' in assert_usage_error(result, mask)
  assert not out.exists()


@pytest.mark.parametrize('invert, raw, colour', [(False, 0, 'white'), (True, 255, 'black')])
def test_mask_without_hole_leaves_the_image_unchanged_with_a_warning(
    tmp_path, official_workdir, network, good_pair, invert, raw, colour, run_cli
):
  mask = save_image(tmp_path / 'flat.png', np.full((64, 80), raw, np.uint8))
  out = tmp_path / 'out.png'
  args = one_image_args(official_workdir, good_pair[0], mask, out)
  result = run_cli(*args, *(['--invert-mask'] if invert else []))
  assert result.returncode == 0, result.stderr
  assert f'warning: mask {mask} has no hole (no {colour} pixel): the image is left unchanged' in (
      result.stderr
  )
  np.testing.assert_array_equal(read_rgb(out), read_rgb(good_pair[0]))
  assert not network.images  # nothing to fill


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
def test_masks_that_are_mostly_hole_are_warned_about(invert, fraction, expected):
  mask = np.zeros((40, 50), np.float32)
  mask[: round(40 * fraction)] = 1.0
  (warning,) = mask_checks.mask_warnings(mask, 'm.png', invert)
  assert warning.startswith('mask m.png') and expected in warning
  mask[:] = 0.0
  mask[:4] = 1.0
  assert mask_checks.mask_warnings(mask, 'm.png', invert) == []


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
    result = run_cli(*one_image_args(workdir, *good_pair, out), *extra)
    assert_usage_error(result, workdir)
    assert not out.exists()


def test_flag_combinations(tmp_path, official_workdir, good_pair, run_cli):
  out = tmp_path / 'out.png'
  args = one_image_args(official_workdir, *good_pair, out)
  assert 'not both' in assert_usage_error(run_cli(*args, '--image-dir', tmp_path))
  assert 'not both' in assert_usage_error(run_cli(*args, '--image_dir', tmp_path))  # an alias
  neither = run_cli('--workdir', official_workdir)
  assert '--image-dir' in assert_usage_error(neither, '--image')
  partial = run_cli('--workdir', official_workdir, '--image', good_pair[0], '--output', out)
  assert_usage_error(partial, '--mask')
  assert_usage_error(run_cli(*args, '--strategy', 'tile'), '--strategy', 'tile')
  assert_usage_error(run_cli(*args, '--batch-size', '0'), '--batch-size must be at least 1')
  bad_extension = run_cli(*one_image_args(official_workdir, *good_pair, tmp_path / 'out.xyz'))
  assert_usage_error(bad_extension, 'out.xyz')
  assert not out.exists() and not (tmp_path / 'out.xyz').exists()


def test_empty_image_folder(tmp_path, official_workdir, run_cli):
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  image_dir.mkdir()
  (image_dir / 'readme.txt').write_text('no image here')
  save_image(mask_dir / 'a.png', rect_mask(8, 8, 2, 2, 4, 4))
  result = run_cli(*folder_args(official_workdir, image_dir, mask_dir, out_dir))
  assert 'holds no image' in assert_usage_error(result, image_dir)
  assert not out_dir.exists()
  missing = run_cli(*folder_args(official_workdir, tmp_path / 'nope', mask_dir, out_dir))
  assert_usage_error(missing, tmp_path / 'nope')


def test_folders_that_do_not_pair(tmp_path, official_workdir, run_cli):
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  save_image(image_dir / 'cat.png', random_image(32, 32))
  save_image(mask_dir / 'dog.png', rect_mask(32, 32, 2, 2, 9, 9))
  result = run_cli(*folder_args(official_workdir, image_dir, mask_dir, out_dir))
  assert_usage_error(result, 'cat', 'dog')
  assert not out_dir.exists()


def test_one_bad_pair_fails_the_folder_before_any_output(
    tmp_path, official_workdir, network, run_cli
):
  image_dir, mask_dir, out_dir = tmp_path / 'images', tmp_path / 'masks', tmp_path / 'out'
  for stem in ('a', 'b', 'c'):
    save_image(image_dir / f'{stem}.png', random_image(48, 48))
  save_image(mask_dir / 'a.png', rect_mask(48, 48, 5, 5, 20, 20))
  save_image(mask_dir / 'b.png', rect_mask(48, 48, 5, 5, 20, 20))
  all_hole = save_image(mask_dir / 'c.png', np.full((48, 48), 255, np.uint8))
  args = folder_args(official_workdir, image_dir, mask_dir, out_dir)
  result = run_cli(*args, '--batch-size', '1')
  assert 'is all hole' in assert_usage_error(result, all_hole)
  assert not out_dir.exists() and not network.images


def test_folder_output_may_not_overwrite_inputs(tmp_path, official_workdir, run_cli):
  folder = tmp_path / 'both'
  save_image(folder / 'a.png', random_image(32, 32))
  masks = tmp_path / 'masks'
  save_image(masks / 'a.png', rect_mask(32, 32, 2, 2, 9, 9))
  before = (folder / 'a.png').read_bytes()
  result = run_cli(*folder_args(official_workdir, folder, masks, folder))
  assert 'overwrite' in assert_usage_error(result, folder / 'a.png')
  assert (folder / 'a.png').read_bytes() == before
