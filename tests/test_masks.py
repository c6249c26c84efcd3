"""Hole masks: test buckets, procedural and regular test masks, training masks from folders."""

import hashlib
import pathlib
import pickle

import numpy as np
import pytest
from PIL import Image

from helpers import assert_usage_error, run_cli_in_process
from lgnet_jax.data import image_io, masks
from lgnet_jax.tools import make_masks


def _save_png(path: pathlib.Path, mask: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray((np.asarray(mask) * 255).astype(np.uint8)).save(path)


def _mask_with_ratio(ratio: float, size: int = 256) -> np.ndarray:
  """A binary mask whose first round(ratio * size^2) pixels (row-major) are holes."""
  flat = np.zeros(size * size, np.float32)
  flat[: round(ratio * size * size)] = 1.0
  return flat.reshape(size, size)


def _asymmetric_mask(size: int = 64) -> np.ndarray:
  mask = np.zeros((size, size), np.float32)
  mask[5:20, 3:15] = 1.0
  mask[40:50, 30:33] = 1.0
  return mask


IDENTITY = {'rotation': (0.0, 0.0), 'dilation': (0, 0), 'scale': (1.0, 1.0)}


def test_bucket_names_and_boundaries():
  assert [masks.bucket_name(i) for i in range(6)] == [
      '01-10',
      '10-20',
      '20-30',
      '30-40',
      '40-50',
      '50-60',
  ]
  assert masks.bucket_index(0.01) is None  # (low, high]: the low end is outside
  assert masks.bucket_index(0.0101) == 0
  assert masks.bucket_index(0.1) == 0
  assert masks.bucket_index(0.1001) == 1
  assert masks.bucket_index(0.6) == 5
  assert masks.bucket_index(0.61) is None
  assert masks.bucket_index(0.0) is None


def test_hole_ratio_counts_soft_pixels_above_half():
  mask = np.array([[0.0, 0.4], [0.6, 1.0]], np.float32)
  assert masks.hole_ratio(mask) == 0.5


@pytest.mark.parametrize('bucket', range(len(masks.BUCKETS)))
def test_procedural_masks_land_in_their_bucket(bucket):
  low, high = masks.BUCKETS[bucket]
  generated = masks.procedural_test_masks(bucket, 40)
  ratios = []
  for mask in generated:
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    ratio = float(mask.mean())  # the ones are the holes: their share is the bucket's ratio
    assert low < ratio <= high
    assert masks.bucket_index(ratio) == bucket
    ratios.append(ratio)
  # Spread over the bucket rather than piled at one end.
  assert max(ratios) - min(ratios) > 0.4 * (high - low)


def test_procedural_masks_in_other_sizes_land_in_their_bucket():
  for size in (32, 100):
    for bucket in range(len(masks.BUCKETS)):
      for mask in masks.procedural_test_masks(bucket, 5, size=size):
        assert mask.shape == (size, size)
        assert masks.bucket_index(masks.hole_ratio(mask)) == bucket


def test_procedural_masks_are_deterministic_and_independent_of_count():
  first = masks.procedural_test_masks(3, 6, seed=7)
  again = masks.procedural_test_masks(3, 6, seed=7)
  more = masks.procedural_test_masks(3, 12, seed=7)
  for a, b, c in zip(first, again, more):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
  np.testing.assert_array_equal(masks.procedural_test_mask(3, 4, seed=7), first[4])
  # Different masks for different indices, seeds and buckets.
  assert not np.array_equal(first[0], first[1])
  other_seed = masks.procedural_test_masks(3, 6, seed=8)
  assert all(not np.array_equal(a, b) for a, b in zip(first, other_seed))
  assert not np.array_equal(masks.procedural_test_mask(2, 0, seed=7), first[0])


def test_procedural_masks_are_pinned():
  """The published test set must not drift: a change here changes every reported number."""
  generated = [masks.procedural_test_masks(bucket, 2) for bucket in range(len(masks.BUCKETS))]
  assert [[int(m.sum()) for m in pair] for pair in generated] == [
      [4751, 3407],
      [12917, 12196],
      [13890, 16555],
      [25638, 20232],
      [32387, 32636],
      [35402, 35534],
  ]
  digest = hashlib.sha256(
      b''.join(m.astype(np.uint8).tobytes() for pair in generated for m in pair)
  )
  assert digest.hexdigest() == '38ec0b33f53326ec9239cea088dbdf03ab7430d28ad94392fd066e9e9272e472'


def test_procedural_masks_of_the_largest_bucket_in_a_batch():
  """Twenty masks of the 50-60% bucket (the most strokes to draw): distinct, all in the bucket."""
  generated = list(masks.procedural_test_masks(5, 20))
  assert len(generated) == 20
  assert [masks.bucket_index(masks.hole_ratio(m)) for m in generated] == [5] * 20
  assert len({np.asarray(m).tobytes() for m in generated}) == 20


def test_procedural_masks_reject_bad_arguments():
  with pytest.raises(ValueError, match='bucket'):
    masks.procedural_test_masks(6, 1)
  with pytest.raises(ValueError, match='count'):
    masks.procedural_test_masks(0, -1)


def test_brush_stroke_mask_is_deterministic_and_binary():
  a = masks.brush_stroke_mask(np.random.default_rng(3), 128, (0.1, 0.3))
  b = masks.brush_stroke_mask(np.random.default_rng(3), 128, (0.1, 0.3))
  np.testing.assert_array_equal(a, b)
  assert set(np.unique(a)) == {0.0, 1.0}
  assert 0.1 <= a.mean()


def test_regular_masks():
  regular = masks.regular_masks()
  center, circles = regular['center'], regular['circles']
  assert center.shape == circles.shape == (256, 256)
  assert center.sum() == 128 * 128
  assert center[128, 128] == 1.0 and center[0, 0] == 0.0
  assert center[64, 64] == 1.0 and center[63, 64] == 0.0 and center[191, 191] == 1.0
  assert center[192, 191] == 0.0
  expected = np.pi * (30**2 + 30**2 + 40**2 + 40**2)
  assert abs(circles.sum() - expected) / expected < 0.02
  for row, col, radius in masks.REGULAR_CIRCLES:
    assert circles[int(row), int(col)] == 1.0
    assert circles[int(row), int(col + radius + 2)] == 0.0
  # Each quadrant holds one circle of the listed radius.
  quadrants = [circles[:128, :128], circles[:128, 128:], circles[128:, :128], circles[128:, 128:]]
  for quadrant, (_, _, radius) in zip(quadrants, masks.REGULAR_CIRCLES):
    assert abs(quadrant.sum() - np.pi * radius**2) / (np.pi * radius**2) < 0.02
  half = masks.regular_masks(128)
  assert half['center'].sum() == 64 * 64
  assert abs(half['circles'].sum() - expected / 4) / (expected / 4) < 0.03


def test_augment_mask_shape_range_and_determinism():
  mask = masks.procedural_test_mask(2, 0, size=300)
  a = masks.augment_mask(mask, np.random.default_rng(11), size=256)
  b = masks.augment_mask(mask, np.random.default_rng(11), size=256)
  c = masks.augment_mask(mask, np.random.default_rng(12), size=256)
  assert a.shape == (256, 256) and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() <= 1.0
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  small = masks.augment_mask(mask, np.random.default_rng(0), size=64)
  assert small.shape == (64, 64)


def test_augment_mask_bicubic_output_is_soft_unless_binarized():
  mask = masks.procedural_test_mask(2, 1)
  soft = masks.augment_mask(mask, np.random.default_rng(5), rotation=(20.0, 20.0))
  assert np.any((soft > 0.0) & (soft < 1.0))
  hard = masks.augment_mask(mask, np.random.default_rng(5), rotation=(20.0, 20.0), binarize=True)
  assert set(np.unique(hard)) <= {0.0, 1.0}
  np.testing.assert_array_equal(hard, (soft > 0.5).astype(np.float32))


def test_augment_mask_identity_keeps_soft_values():
  mask = np.zeros((32, 32), np.float32)
  mask[4:10, 4:20] = 0.5
  mask[20:24, 2:6] = 0.25
  mask[12:14, 25:30] = 1.0
  out = masks.augment_mask(mask, np.random.default_rng(0), size=32, flip=False, **IDENTITY)
  np.testing.assert_array_equal(out, mask)


def test_augment_mask_flip_mirrors_horizontally():
  mask = _asymmetric_mask()
  mirrored = mask[:, ::-1]
  seen = set()
  for seed in range(20):
    out = masks.augment_mask(mask, np.random.default_rng(seed), size=64, **IDENTITY)
    if np.array_equal(out, mask):
      seen.add('same')
    else:
      np.testing.assert_array_equal(out, mirrored)
      seen.add('mirrored')
    unflipped = masks.augment_mask(
        mask, np.random.default_rng(seed), size=64, flip=False, **IDENTITY
    )
    np.testing.assert_array_equal(unflipped, mask)
  assert seen == {'same', 'mirrored'}


def test_augment_mask_dilation_grows_holes():
  mask = np.zeros((64, 64), np.float32)
  mask[32, 32] = 1.0
  out = masks.augment_mask(
      mask,
      np.random.default_rng(0),
      size=64,
      flip=False,
      rotation=(0.0, 0.0),
      dilation=(5, 5),
      scale=(1.0, 1.0),
  )
  ys, xs = np.nonzero(out)
  assert (ys.min(), ys.max(), xs.min(), xs.max()) == (30, 34, 30, 34)
  assert out[32, 32] == 1.0


def test_augment_mask_scaling_changes_hole_area():
  mask = np.zeros((64, 64), np.float32)
  mask[24:40, 24:40] = 1.0
  small = masks.augment_mask(
      mask,
      np.random.default_rng(0),
      size=64,
      flip=False,
      rotation=(0.0, 0.0),
      dilation=(0, 0),
      scale=(0.5, 0.5),
      binarize=True,
  )
  large = masks.augment_mask(
      mask,
      np.random.default_rng(0),
      size=64,
      flip=False,
      rotation=(0.0, 0.0),
      dilation=(0, 0),
      scale=(1.5, 1.5),
      binarize=True,
  )
  assert abs(small.sum() - 16 * 16 * 0.25) <= 12
  assert abs(large.sum() - 16 * 16 * 2.25) <= 30


def test_augment_mask_rejects_bad_input():
  with pytest.raises(ValueError, match='shape'):
    masks.augment_mask(np.zeros((4, 4, 3)), np.random.default_rng(0))
  with pytest.raises(ValueError, match='scale'):
    masks.augment_mask(np.zeros((4, 4)), np.random.default_rng(0), scale=(1.2, 0.8))


@pytest.fixture
def mask_folder(tmp_path):
  """Three masks: 8-bit grayscale with a soft value, RGB, and 16-bit grayscale (in a subfolder)."""
  folder = tmp_path / 'masks'
  gray = np.zeros((40, 50), np.uint8)
  gray[5:15, 5:25] = 255
  gray[30:35, 30:40] = 128
  (folder / 'sub').mkdir(parents=True)
  Image.fromarray(gray).save(folder / 'a_gray.png')
  rgb = np.zeros((40, 50, 3), np.uint8)
  rgb[10:30, 20:45] = 255
  Image.fromarray(rgb).save(folder / 'b_rgb.png')
  deep = np.zeros((40, 50), np.uint16)
  deep[0:20, 0:10] = 65535
  Image.fromarray(deep).save(folder / 'sub' / 'c_16bit.png')
  (folder / 'notes.txt').write_text('not a mask')
  return folder


def test_mask_values_are_read_in_any_mode_without_thresholding(mask_folder):
  gray = image_io.load_mask_values(mask_folder / 'a_gray.png')
  assert gray.dtype == np.float32 and gray.shape == (40, 50)
  assert gray[10, 10] == 1.0 and gray[0, 0] == 0.0
  assert gray[32, 35] == pytest.approx(128 / 255)
  assert Image.open(mask_folder / 'b_rgb.png').mode == 'RGB'
  rgb = image_io.load_mask_values(mask_folder / 'b_rgb.png')
  assert rgb.shape == (40, 50) and rgb[20, 30] == 1.0 and rgb[5, 5] == 0.0
  assert Image.open(mask_folder / 'sub' / 'c_16bit.png').mode.startswith('I')
  deep = image_io.load_mask_values(mask_folder / 'sub' / 'c_16bit.png')
  assert deep[10, 5] == 1.0 and deep[30, 30] == 0.0
  inverted = image_io.load_mask_values(mask_folder / 'a_gray.png', invert=True)
  np.testing.assert_allclose(inverted, 1.0 - gray, atol=1e-6)


def test_mask_file_errors_name_the_file(tmp_path):
  missing = tmp_path / 'missing.png'
  with pytest.raises(image_io.ImageError, match='missing.png'):
    image_io.load_mask_values(missing)
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'not a png at all')
  with pytest.raises(image_io.ImageError, match='broken.png') as error:
    image_io.load_mask_values(broken)
  folder = masks.MaskFolder(tmp_path)
  with pytest.raises(image_io.ImageError, match='broken.png'):
    folder.load(0)
  assert '\n' not in str(error.value)
  assert isinstance(error.value, ValueError)


def test_mask_folder_lists_loads_samples_and_pickles(mask_folder):
  folder = masks.MaskFolder(mask_folder)
  assert len(folder) == 3
  assert [pathlib.Path(p).name for p in folder.paths] == ['a_gray.png', 'b_rgb.png', 'c_16bit.png']
  np.testing.assert_array_equal(
      folder.load(0), image_io.load_mask_values(mask_folder / 'a_gray.png')
  )
  inverted = masks.MaskFolder(mask_folder, invert=True)
  np.testing.assert_allclose(inverted.load(1), 1.0 - folder.load(1), atol=1e-6)
  assert inverted.load(1)[5, 5] == 1.0

  sample = folder.sample(np.random.default_rng(4), size=32)
  assert sample.shape == (32, 32) and sample.dtype == np.float32
  assert 0.0 <= sample.min() and sample.max() <= 1.0
  np.testing.assert_array_equal(sample, folder.sample(np.random.default_rng(4), size=32))
  binary = folder.sample(np.random.default_rng(4), size=32, binarize=True)
  assert set(np.unique(binary)) <= {0.0, 1.0}
  # Every file gets drawn.
  rng = np.random.default_rng(0)
  drawn = {int(rng.integers(len(folder))) for _ in range(50)}
  assert drawn == {0, 1, 2}

  clone = pickle.loads(pickle.dumps(folder))
  assert clone.paths == folder.paths and clone.invert == folder.invert
  np.testing.assert_array_equal(clone.sample(np.random.default_rng(4), size=32), sample)
  assert len(pickle.dumps(folder)) < 1000


def test_mask_folder_errors_name_the_path(tmp_path):
  empty = tmp_path / 'empty_masks'
  empty.mkdir()
  (empty / 'readme.txt').write_text('no masks here')
  with pytest.raises(masks.MaskError, match='empty_masks'):
    masks.MaskFolder(empty)
  with pytest.raises(masks.MaskError, match='no_such_folder'):
    masks.MaskFolder(tmp_path / 'no_such_folder')


def test_bucket_mask_files_groups_by_ratio(tmp_path):
  folder = tmp_path / 'test_masks'
  expected = {}
  for name, ratio in (
      ('a', 0.05),
      ('b', 0.15),
      ('c', 0.155),
      ('d', 0.35),
      ('e', 0.55),
      ('f', 0.005),
      ('g', 0.75),
  ):
    _save_png(folder / f'{name}.png', _mask_with_ratio(ratio, 512))
    index = masks.bucket_index(ratio)
    if index is not None:
      expected.setdefault(index, []).append(str(folder / f'{name}.png'))
  # A soft mask counts only the pixels above one half.
  soft = _mask_with_ratio(0.25) * 0.9 + (1.0 - _mask_with_ratio(0.25)) * 0.3
  _save_png(folder / 'soft' / 'h.png', soft)
  expected[2] = [str(folder / 'soft' / 'h.png')]
  groups = masks.bucket_mask_files(folder)
  assert set(groups) == set(range(len(masks.BUCKETS)))
  assert {i: paths for i, paths in groups.items() if paths} == expected
  assert groups[4] == []
  # Black = hole when inverted: only g (0.75 -> 0.25) and e (0.55 -> 0.45) stay in a bucket.
  inverted = masks.bucket_mask_files(folder, invert=True)
  assert {i: paths for i, paths in inverted.items() if paths} == {
      2: [str(folder / 'g.png')],
      4: [str(folder / 'e.png')],
  }


def test_bucket_mask_files_measures_at_test_size(tmp_path):
  """Ratios are measured after the nearest resize to 256x256, as the test feeds the masks."""
  block = np.zeros((1024, 1024), np.float32)
  block[:, :160] = 1.0  # 15.6% at any size
  _save_png(tmp_path / 'm' / 'block.png', block)
  stripes = np.zeros((1024, 1024), np.float32)
  stripes[:, 0::4] = 1.0  # 25% at full size; nearest neighbour samples columns 4i + 2 only
  _save_png(tmp_path / 'm' / 'stripes.png', stripes)
  groups = masks.bucket_mask_files(tmp_path / 'm')
  assert {i: paths for i, paths in groups.items() if paths} == {
      1: [str(tmp_path / 'm' / 'block.png')]
  }


@pytest.fixture
def make_masks_in_process(capsys):
  """Runs `python -m lgnet_jax.tools.make_masks ARGS` in this process."""
  return lambda *args: run_cli_in_process(capsys, make_masks, *args)


def _tree(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_make_masks_writes_every_bucket_reproducibly(tmp_path, make_masks_in_process):
  out = tmp_path / 'out'
  result = make_masks_in_process(
      '--out', out, '--per-bucket', '3', '--size', '64', '--seed', '2', '--regular'
  )
  assert result.returncode == 0, result.stderr
  names = [masks.bucket_name(i) for i in range(len(masks.BUCKETS))]
  expected = {f'{name}/{k:05d}.png' for name in names for k in range(3)}
  expected |= {'regular/center.png', 'regular/circles.png'}
  first = _tree(out)
  assert set(first) == expected
  for bucket, name in enumerate(names):
    for k in range(3):
      written = np.asarray(Image.open(out / name / f'{k:05d}.png'))
      assert written.dtype == np.uint8 and written.shape == (64, 64)
      assert set(np.unique(written)) <= {0, 255}
      # White is exactly the hole of the library's mask.
      np.testing.assert_array_equal(
          written == 255, masks.procedural_test_mask(bucket, k, 64, seed=2) == 1.0
      )
    summary = [line for line in result.stdout.splitlines() if line.startswith(f'{name}:')]
    assert len(summary) == 1 and '3 masks' in summary[0]
  center = np.asarray(Image.open(out / 'regular' / 'center.png'))
  assert np.count_nonzero(center == 255) == 32 * 32

  again = make_masks_in_process(
      '--out', out, '--per-bucket', '3', '--size', '64', '--seed', '2', '--regular'
  )
  assert again.returncode == 0, again.stderr
  assert _tree(out) == first
  other = tmp_path / 'other'
  assert (
      make_masks_in_process(
          '--out', other, '--per-bucket', '3', '--size', '64', '--seed', '2', '--regular'
      ).returncode
      == 0
  )
  assert _tree(other) == first


@pytest.mark.parametrize(
    'args, fragment',
    [
        (('--per-bucket', '0'), '--per-bucket'),
        (('--per-bucket', 'many'), '--per-bucket'),
        (('--per-bucket', '2', '--size', '4'), '--size'),
        (('--per-bucket', '2', '--out-is-file'), 'not a folder'),
    ],
)
def test_make_masks_usage_errors(tmp_path, args, fragment, make_masks_in_process):
  out = tmp_path / 'out'
  if '--out-is-file' in args:
    out.write_text('a file')
    args = tuple(a for a in args if a != '--out-is-file')
  assert_usage_error(make_masks_in_process('--out', out, *args), fragment)
  assert not (out.is_dir() and any(out.iterdir()))
