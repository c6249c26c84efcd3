"""Photos of any size: crop regions, the crop and resize strategies, known pixels kept."""

import concurrent.futures
import threading

import numpy as np
import pytest
from scipy import ndimage

from helpers import WhiteFill, random_image
from lgnet_jax.serving import photo
from lgnet_jax.serving.inference import Inpainter

pytestmark = pytest.mark.usefixtures('plain_compile')


def holes(height: int, width: int, *boxes: tuple[int, int, int, int]) -> np.ndarray:
  """A float 0/1 mask with the given (top, left, bottom, right) boxes as holes."""
  mask = np.zeros((height, width), np.float32)
  for top, left, bottom, right in boxes:
    mask[top:bottom, left:right] = 1.0
  return mask


def test_a_small_hole_in_a_large_photo_is_fed_at_native_resolution():
  image = random_image(900, 1200)
  mask = holes(900, 1200, (400, 500, 440, 560))
  network = WhiteFill()
  out = photo.fill(network, image, mask, strategy='crop')
  (region,) = photo.choose_regions(mask, 'crop', photo.DEFAULT_CROP_MARGIN)
  assert (region.bottom - region.top, region.right - region.left) == (256, 256)
  assert region.top <= 400 - 64 and region.bottom >= 440 + 64  # the margin of context
  (inputs,) = network.images
  assert inputs.shape == (1, 256, 256, 3)
  # The network sees the photo's own pixels around the hole, not a resampled copy.
  np.testing.assert_array_equal(inputs[0], image[region.window].astype(np.float32) / 127.5 - 1)
  np.testing.assert_array_equal(network.masks[0][0, :, :, 0], mask[region.window])
  known = mask == 0
  np.testing.assert_array_equal(out[known], image[known])
  assert (out[mask == 1] == 255).all()


@pytest.mark.parametrize('strategy', ['crop', 'resize', 'auto'])
def test_known_pixels_are_bit_identical_and_every_hole_is_filled(strategy):
  image = random_image(700, 1000, seed=1)
  mask = holes(700, 1000, (10, 10, 30, 50), (300, 480, 420, 520), (650, 940, 700, 1000))
  out = photo.fill(WhiteFill(), image, mask, strategy=strategy)
  known = mask == 0
  np.testing.assert_array_equal(out[known], image[known])
  if strategy != 'resize':  # at native resolution the white fill comes back exactly
    assert (out[mask == 1] == 255).all()
  else:
    assert (out[mask == 1] != image[mask == 1]).any(axis=-1).mean() > 0.9


def test_regions_cover_their_holes_stay_inside_and_do_not_overlap():
  mask = holes(
      600,
      800,
      (0, 0, 10, 10),
      (100, 100, 120, 130),
      (150, 190, 170, 200),
      (590, 780, 600, 800),
      (300, 700, 310, 710),
  )
  regions = photo.crop_regions(mask, 64, 256)
  for i, region in enumerate(regions):
    assert 0 <= region.top < region.bottom <= 600 and 0 <= region.left < region.right <= 800
    assert region.bottom - region.top >= 256 and region.right - region.left >= 256
    assert not any(region.overlaps(other) for other in regions[i + 1 :])
  covered = np.zeros_like(mask)
  for region in regions:
    covered[region.window] += 1
  assert (covered[mask == 1] == 1).all()  # every hole pixel in exactly one region


def test_nearby_holes_share_one_region_and_distant_ones_do_not():
  near = holes(1000, 1000, (100, 100, 120, 120), (150, 180, 170, 200))
  assert len(photo.crop_regions(near, 64, 256)) == 1
  far = holes(1000, 1000, (100, 100, 120, 120), (800, 800, 820, 820))
  assert len(photo.crop_regions(far, 64, 256)) == 2


def assert_partition(mask: np.ndarray, regions: list[photo.Region]) -> None:
  """Every hole pixel in exactly one region, regions inside the photo and not overlapping."""
  height, width = mask.shape
  covered = np.zeros(mask.shape, np.uint8)
  for i, region in enumerate(regions):
    assert 0 <= region.top < region.bottom <= height and 0 <= region.left < region.right <= width
    assert not any(region.overlaps(other) for other in regions[i + 1 :])
    covered[region.window] += 1
  assert (covered[mask > 0] == 1).all()


@pytest.fixture
def lookups(monkeypatch) -> list[int]:
  """Counts the planner's lookups among the regions placed so far (its unit of work)."""
  counted = []
  overlapping = photo._overlapping  # pylint: disable=protected-access

  def counting(placed, square):
    counted.append(len(placed))
    return overlapping(placed, square)

  monkeypatch.setattr(photo, '_overlapping', counting)
  return counted


def crafted_mask() -> np.ndarray:
  """The mask that kept the old planner busy for minutes (cubic in its 4,210 groups): 9000x9000,
  210 dots 600 pixels apart and 4,000 dots 2 pixels apart in a corner."""
  mask = np.zeros((9000, 9000), bool)
  mask[300:9000:600, 300:8400:600] = True  # 15 x 14
  mask[8900:9000:2, 8840:9000:2] = True  # 50 x 80, one pixel apart
  return mask


def test_the_crafted_many_dots_mask_plans_in_a_bounded_number_of_lookups(lookups):
  mask = crafted_mask()
  assert mask.sum() == 210 + 4000
  with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a hang fails instead of blocking
    regions = pool.submit(photo.crop_regions, mask, 64, 256).result(timeout=300)
  groups = len(photo.hole_groups(mask))
  assert groups == 211  # the corner's dots are one group
  assert len(lookups) <= 2 * groups  # one per group, plus one per region it absorbs
  assert max(lookups) <= (9000 // 256 + 1) ** 2  # placed regions never overlap
  assert len(regions) == 211
  assert_partition(mask, regions)


def test_planning_is_bounded_by_the_photo_size_whatever_the_pattern(lookups):
  dense = np.zeros((2000, 2000), bool)
  dense[::2, ::2] = True  # a million one-pixel holes: one group
  assert len(photo.hole_groups(dense)) == 1
  assert photo.crop_regions(dense, 64, 256) == [photo.Region(0, 0, 2000, 2000)]
  del lookups[:]
  spread = np.zeros((2000, 2000), bool)
  spread[::64, ::64] = True  # one dot in every other cell: the most groups the grid allows
  groups = len(photo.hole_groups(spread))
  cells = -(-2000 // photo.GROUP_CELL)
  assert groups == (-(-cells // 2)) ** 2
  regions = photo.crop_regions(spread, 64, 256)
  assert len(lookups) <= 2 * groups
  assert_partition(spread, regions)


def test_hole_groups_hold_whole_connected_holes_and_are_tight():
  rng = np.random.default_rng(4)
  mask = rng.random((300, 500)) > 0.997
  mask[100:140, 200:203] = True
  boxes = photo.hole_groups(mask, cell=16).tolist()
  labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
  assert 1 < len(boxes) < count  # nearby holes were grouped, distant ones not
  for rows, cols in ndimage.find_objects(labels):  # each connected hole lies in a group's box
    assert any(
        top <= rows.start and rows.stop <= bottom and left <= cols.start and cols.stop <= right
        for top, left, bottom, right in boxes
    )
  for top, left, bottom, right in boxes:  # each box's four edges touch a hole
    box = mask[top:bottom, left:right]
    assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()


def test_a_set_stop_event_ends_the_fill_between_batches():
  stop = threading.Event()
  network = WhiteFill()

  def stopping_network(images, masks):
    if len(network.images) == 1:
      stop.set()  # set while the second batch runs: that batch completes, no third starts
    return network(images, masks)

  mask = holes(600, 600, (50, 50, 60, 60), (500, 500, 510, 510), (50, 500, 60, 510))
  with pytest.raises(photo.Stopped, match='stopped after 2 of 3 network batches'):
    photo.fill(stopping_network, random_image(600, 600), mask, 'crop', batch_size=1, stop=stop)
  assert len(network.images) == 2


def test_a_region_larger_than_the_network_is_downscaled_to_it():
  mask = holes(1000, 1000, (300, 300, 600, 500))
  (region,) = photo.crop_regions(mask, 64, 256)
  assert region.bottom - region.top == region.right - region.left == 300 + 128
  network = WhiteFill()
  photo.fill(network, random_image(1000, 1000), mask, strategy='crop')
  assert network.images[0].shape == (1, 256, 256, 3)


def test_auto_crops_small_holes_in_large_photos_only():
  large = np.zeros((1000, 1500), np.float32)
  large[500:530, 700:760] = 1
  assert photo.choose_regions(large, 'auto', 64) == photo.choose_regions(large, 'crop', 64)
  big_hole = holes(1000, 1500, (100, 100, 900, 1200))
  assert photo.choose_regions(big_hole, 'auto', 64) == [photo.Region(0, 0, 1000, 1500)]
  small_photo = holes(256, 256, (100, 100, 110, 110))
  assert photo.choose_regions(small_photo, 'auto', 64) == [photo.Region(0, 0, 256, 256)]
  assert photo.choose_regions(np.zeros((300, 300)), 'crop', 64) == []  # nothing to fill


def test_regions_of_several_photos_share_fixed_size_batches():
  photos = [
      (random_image(600, 600, seed=s), holes(600, 600, (50, 50, 60, 60), (500, 500, 510, 510)))
      for s in range(3)
  ]
  network = WhiteFill()
  jobs = [(image, mask, photo.choose_regions(mask, 'crop', 64)) for image, mask in photos]
  outputs = photo.fill_regions(network, jobs, 256, batch_size=4)
  assert [images.shape[0] for images in network.images] == [4, 4]  # 6 regions, last padded
  for (image, mask), out in zip(photos, outputs):
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert (out[mask == 1] == 255).all()


@pytest.mark.parametrize('strategy, margin', [('tile', 64), ('crop', -1), ('crop', 2.5)])
def test_bad_options_are_refused_in_one_line(strategy, margin):
  with pytest.raises(photo.PhotoError, match=r'^(strategy|crop margin) ') as info:
    photo.choose_regions(holes(300, 300, (1, 1, 2, 2)), strategy, margin)
  assert '\n' not in str(info.value)


@pytest.fixture(scope='module')
def inpainter(official_workdir) -> Inpainter:
  return Inpainter.from_workdir(official_workdir)


@pytest.mark.parametrize('strategy', ['crop', 'resize'])
def test_the_real_network_keeps_known_pixels_in_both_strategies(inpainter, strategy):
  image = random_image(400, 600, seed=2)
  mask = holes(400, 600, (200, 300, 240, 340))
  out = inpainter.fill(image, mask, strategy=strategy)
  assert out.shape == image.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
  assert (out[mask == 1] != image[mask == 1]).any(axis=-1).mean() > 0.5
