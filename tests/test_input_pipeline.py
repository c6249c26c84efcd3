"""The input pipeline (lgnet_jax.data), module by module: sources (folders, file lists, bad and
missing files), the paper's TFDS subsets, training preprocessing, training batches, test
batches."""

import json
import logging
import pathlib
import re

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags
from PIL import Image

from lgnet_jax.bench import data as bench_data
from lgnet_jax.configs import celeba_hq, default, paris_streetview, places2
from lgnet_jax.data import (
    batching,
    datasets,
    image_io,
    masks,
    preprocess,
    sources,
    testset,
    tfds_sources,
)

SIZE = 32  # model.image_size in these tests: the pipeline is size-agnostic and this is fast


def solid(path: pathlib.Path, value: int, shape=(40, 48)) -> pathlib.Path:
  """A uniform grey image; its value identifies it after resizing and flipping."""
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((*shape, 3), value, np.uint8)).save(path)
  return path


def image_value(image: np.ndarray) -> int:
  """The uint8 value of a uniform image in [-1, 1]."""
  return int(round((float(image.mean()) + 1.0) * 127.5))


def folder_config(train_dir=None, test_dir=None, **data) -> ml_collections.ConfigDict:
  config = paris_streetview.get_config()
  config.model.image_size = SIZE
  config.train.batch_size = 2
  config.eval.batch_size = 4
  config.data.train_dir = train_dir and str(train_dir)
  config.data.test_dir = test_dir and str(test_dir)
  config.data.hole_ratio = (0.1, 0.3)
  config.data.read_threads = 1
  for key, value in data.items():
    config.data[key] = value
  return config


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(count)]


def test_folder_listing_is_recursive_sorted_and_images_only(tmp_path):
  solid(tmp_path / 'b.png', 10)
  solid(tmp_path / 'a.jpg', 20)
  solid(tmp_path / 'sub' / 'deeper' / 'c.webp', 30)
  (tmp_path / 'notes.txt').write_text('not an image')
  (tmp_path / '.hidden.png').write_bytes(b'')
  assert sources.list_images(tmp_path) == [
      str(tmp_path / 'a.jpg'),
      str(tmp_path / 'b.png'),
      str(tmp_path / 'sub' / 'deeper' / 'c.webp'),
  ]


def test_file_lists_resolve_relative_paths_against_the_list(tmp_path):
  first = solid(tmp_path / 'data' / 'one.png', 40)
  second = solid(tmp_path / 'elsewhere' / 'two.png', 80)
  listing = tmp_path / 'data' / 'train.txt'
  listing.write_text(f'# training images\none.png\n\n{second}\n')
  assert sources.read_file_list(listing) == [str(first), str(second)]

  config = folder_config(train_files=str(listing))
  iterator, count = batching.create_train_iterator(config)
  assert count == 2
  values = {image_value(image) for batch in take(iterator, 2) for image in batch['image']}
  assert values == {40, 80}

  config.data.train_dir = str(tmp_path / 'data')
  with pytest.raises(sources.DataError, match='not both'):
    batching.create_train_iterator(config)


def test_train_and_test_folders_are_separate_splits(tmp_path):
  for i in range(4):
    solid(tmp_path / 'train' / f'{i}.png', 10 + i)
  for i in range(3):
    solid(tmp_path / 'test' / f'{i}.jpg', 200 + 20 * i)
  config = folder_config(tmp_path / 'train', tmp_path / 'test', test_masks_per_bucket=2)
  iterator, count = batching.create_train_iterator(config)
  assert count == 4
  train_values = {image_value(image) for batch in take(iterator, 4) for image in batch['image']}
  assert train_values == {10, 11, 12, 13}
  test_images = datasets.test_image_source(config.data)
  assert len(test_images) == 3
  [batch] = list(testset.create_test_dataset(config, 0))
  assert [image_value(im) for im in batch['image'][:3]] == [200, 220, 240]


def test_unreadable_images_are_skipped_counted_and_logged_once(tmp_path, caplog):
  folder = tmp_path / 'images'
  good = {'a.png': 20, 'c.png': 60, 'e.png': 100, 'f.png': 140}
  for name, value in good.items():
    solid(folder / name, value)
  truncated = folder / 'b.jpg'
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
  Image.fromarray(noise).save(tmp_path / 'full.jpg', quality=95)
  data = (tmp_path / 'full.jpg').read_bytes()
  truncated.write_bytes(data[: len(data) // 2])
  empty = folder / 'd.png'
  empty.write_bytes(b'')
  config = folder_config(folder)
  with caplog.at_level(logging.WARNING):
    iterator, count = batching.create_train_iterator(config)
    assert count == 6
    epochs = [take(iterator, 3) for _ in range(2)]  # 6 records per epoch, batches of 2
  for path in (truncated, empty):
    with pytest.raises(image_io.ImageError):
      image_io.load_image(path)
  for epoch in epochs:
    assert sum(int(b['skipped'].sum()) for b in epoch) == 2
    values = [image_value(image) for b in epoch for image in b['image']]
    assert set(values) <= set(good.values()) and len(values) == 6
  for path in (truncated, empty):
    assert sum(str(path) in r.getMessage() for r in caplog.records) == 1, path

  config.data.test_dir = str(folder)
  config.data.test_masks_per_bucket = 1
  batch = {
      k: np.concatenate([b[k] for b in testset.create_test_dataset(config, 0)])
      for k in ('valid', 'skipped', 'index')
  }
  np.testing.assert_array_equal(batch['valid'], [1, 0, 1, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(batch['skipped'], [0, 1, 0, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(batch['index'], [0, 1, 2, 3, 4, 5, -1, -1])


def test_missing_or_empty_folders_stop_with_the_path(tmp_path):
  missing, empty = tmp_path / 'missing', tmp_path / 'empty'
  empty.mkdir()
  (empty / 'readme.txt').write_text('no images')
  for folder in (missing, empty):
    with pytest.raises(sources.DataError, match=re.escape(str(folder))) as error:
      batching.create_train_iterator(folder_config(folder))
    assert 'folder of images' in str(error.value)
  with pytest.raises(sources.DataError, match='train_dir=PATH'):
    batching.create_train_iterator(folder_config())
  listing = tmp_path / 'list.txt'
  listing.write_text('# nothing\n')
  with pytest.raises(sources.DataError, match=re.escape(str(listing))):
    batching.create_train_iterator(folder_config(train_files=str(listing)))
  solid(tmp_path / 'images' / 'a.png', 1)
  config = folder_config(tmp_path / 'images', train_mask_dir=str(missing))
  with pytest.raises(sources.DataError, match=re.escape(str(missing))):
    batching.create_train_iterator(config)
  config = folder_config(test_dir=tmp_path / 'images', test_mask_dir=str(empty))
  with pytest.raises(sources.DataError, match=re.escape(str(empty))):
    testset.create_test_dataset(config, 0)


def test_unprepared_tfds_datasets_say_how_to_prepare(tmp_path):
  config = places2.get_config()
  config.data.tfds_data_dir = str(tmp_path / 'tfds')
  with pytest.raises(sources.DataError) as error:
    batching.create_train_iterator(config)
  message = str(error.value)
  assert 'places365_small is not prepared in' in message and str(tmp_path / 'tfds') in message
  assert 'tfds build places365_small' in message and '--file_format=array_record' in message
  config = celeba_hq.get_config()
  config.data.tfds_data_dir = str(tmp_path / 'tfds')
  with pytest.raises(sources.DataError) as error:
    testset.create_test_dataset(config, 0)
  message = str(error.value)
  assert 'celeb_a_hq/256 is not prepared in' in message and 'data256x256.tar' in message
  assert f'place it in {tmp_path / "tfds" / "downloads" / "manual"}' in message


TRAIN_RECORDS, VALIDATION_RECORDS, CLASSES = 240, 60, 6


def labelled_records(split: str) -> list[dict]:
  """Records whose label is index mod 6 (train) or (index * 5) mod 6 (validation).

  Each image is uniform, with its record index as the value, so reads can be traced.
  """
  count = TRAIN_RECORDS if split == 'train' else VALIDATION_RECORDS
  return [
      {
          'image': np.full((8, 8, 3), i % 256, np.uint8),
          'label': np.int64(i % CLASSES if split == 'train' else (i * 5) % CLASSES),
          'filename': f'{split}/{i}.jpg',
      }
      for i in range(count)
  ]


def as_data_source(self, split, **kwargs):
  del self, kwargs
  return labelled_records(split)


@pytest.fixture
def places_mock():
  with tfds.testing.mock_data(
      policy=tfds.testing.MockPolicy.USE_CODE, as_data_source_fn=as_data_source
  ):
    yield


def places_config(tmp_path, **data) -> ml_collections.ConfigDict:
  config = places2.get_config()
  config.model.image_size = SIZE
  config.train.batch_size = 2
  config.eval.batch_size = 8
  config.data.cache_dir = str(tmp_path / 'cache')
  config.data.categories = ('airfield', 2, 'alley')  # ids 0, 2, 4
  config.data.train_per_category = 7
  config.data.test_masks_per_bucket = 3
  for key, value in data.items():
    config.data[key] = value
  return config


def test_places2_default_categories_are_places365_names():
  names = tfds.builder('places365_small').info.features['label'].names
  categories = places2.get_config().data.categories
  assert len(categories) == len(set(categories)) == 20
  assert set(categories) <= set(names)
  assert places2.get_config().data.train_per_category == 2000


def test_places2_category_subset(tmp_path, places_mock):
  del places_mock
  train_labels = np.arange(TRAIN_RECORDS) % CLASSES
  source = tfds_sources.places2_source(places_config(tmp_path).data, train=True)
  indices = source.indices
  assert len(indices) == 21 == len(set(indices.tolist()))
  assert sorted(np.bincount(train_labels[indices], minlength=CLASSES).tolist()) == [
      0,
      0,
      0,
      7,
      7,
      7,
  ]
  assert set(train_labels[indices]) == {0, 2, 4}
  assert [source[i]['image'][0, 0, 0] for i in range(3)] == [v % 256 for v in indices[:3]]

  again = tfds_sources.places2_source(places_config(tmp_path).data, train=True).indices
  np.testing.assert_array_equal(indices, again)
  other = tfds_sources.places2_source(places_config(tmp_path, subset_seed=1).data, True).indices
  assert set(train_labels[other]) == {0, 2, 4} and not np.array_equal(indices, other)
  # One class's draw does not depend on the others chosen.
  alone = tfds_sources.places2_source(places_config(tmp_path, categories=(2,)).data, True).indices
  np.testing.assert_array_equal(alone, indices[train_labels[indices] == 2])

  cache = json.loads((tmp_path / 'cache' / 'lgnet_jax_labels_train.json').read_text())
  assert cache['labels'] == train_labels.tolist() and cache['dataset'] == 'places365_small'


def test_places2_test_set_is_every_validation_image_of_the_categories(tmp_path, places_mock):
  del places_mock
  config = places_config(tmp_path)
  validation_labels = (np.arange(VALIDATION_RECORDS) * 5) % CLASSES
  expected = np.flatnonzero(np.isin(validation_labels, [0, 2, 4]))
  images = datasets.test_image_source(config.data)
  np.testing.assert_array_equal(images.indices, expected)
  batches = list(testset.create_test_dataset(config, 0))
  valid = np.concatenate([b['valid'] for b in batches]).astype(bool)
  values = [image_value(im) for b in batches for im in b['image']]
  assert valid.sum() == len(expected) == 30
  assert [v for v, ok in zip(values, valid) if ok] == expected.tolist()


def test_places2_unknown_category_is_a_clear_error(tmp_path, places_mock):
  del places_mock
  with pytest.raises(sources.DataError, match="unknown category 'beachh'.*beach"):
    tfds_sources.places2_source(places_config(tmp_path, categories=('beachh',)).data, True)
  with pytest.raises(sources.DataError, match='out of range'):
    tfds_sources.places2_source(places_config(tmp_path, categories=(365,)).data, True)


def test_places2_through_the_tfds_mock_data_source(tmp_path):
  """The stock mock (random records served through tfds.data_source) end to end."""
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    labels = np.array([int(r['label']) for r in tfds.data_source('places365_small', split='train')])
    common = [int(c) for c in np.argsort(-np.bincount(labels, minlength=365), kind='stable')[:2]]
    config = places_config(tmp_path, categories=tuple(common), train_per_category=1)
    iterator, count = batching.create_train_iterator(config)
    assert count == 2
    batch = next(iterator)
    assert batch['image'].shape == (2, SIZE, SIZE, 3) and batch['skipped'].sum() == 0
    valid = sum(b['valid'].sum() for b in testset.create_test_dataset(config, 0))
    assert valid == np.isin(labels, common).sum()  # the mock's splits hold the same records


def test_celeba_hq_split_is_disjoint_and_seeded(tmp_path):
  config = celeba_hq.get_config()
  config.model.image_size = SIZE
  config.data.celeba_test_size = 12
  config.data.test_masks_per_bucket = 1
  with tfds.testing.mock_data(num_examples=50, policy=tfds.testing.MockPolicy.USE_CODE):
    train = tfds_sources.celeba_hq_source(config.data, train=True).indices
    test = datasets.test_image_source(config.data).indices
    assert len(train) == 38 and len(test) == 12
    assert not set(train.tolist()) & set(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(50))
    np.testing.assert_array_equal(test, tfds_sources.celeba_hq_source(config.data, False).indices)
    config.data.split_seed = 1
    assert not np.array_equal(test, tfds_sources.celeba_hq_source(config.data, False).indices)
    valid = sum(b['valid'].sum() for b in testset.create_test_dataset(config, 5))
    assert valid == 12
  assert celeba_hq.get_config().data.celeba_test_size == 3000
  assert default.get_config().eval.batch_size == 8


class HalfMask:
  """A mask sampler whose masks cover the left half: flips show up as right-half holes."""

  def sample(self, rng, size=256, binarize=False):
    del rng, binarize
    mask = np.zeros((size, size), np.float32)
    mask[:, : size // 2] = 1.0
    return mask


def test_image_and_mask_flips_are_independent():
  image = np.zeros((SIZE, SIZE, 3), np.uint8)
  image[:, SIZE // 2 :] = 255  # bright right half
  transform = preprocess.TrainPreprocess(SIZE, mask_sampler=HalfMask())
  image_flips, mask_flips = [], []
  for seed in range(64):
    out = transform.random_map({'image': image}, np.random.default_rng(seed))
    image_flips.append(out['image'][:, : SIZE // 2].mean() > 0)
    mask_flips.append(out['mask'][:, SIZE // 2 :].mean() > 0.5)
    assert out['image'].min() == -1.0 and out['image'].max() == 1.0
  image_flips, mask_flips = np.array(image_flips), np.array(mask_flips)
  assert 0 < image_flips.sum() < 64 and 0 < mask_flips.sum() < 64
  assert (image_flips != mask_flips).any() and (image_flips == mask_flips).any()


def soft_masks(folder: pathlib.Path, count: int = 3) -> pathlib.Path:
  """Masks with a linear ramp between known and hole: soft values after any resize."""
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    ramp = np.clip((np.arange(64) - 20 - 4 * i) * 8, 0, 255).astype(np.uint8)
    Image.fromarray(np.tile(ramp, (64, 1))).save(folder / f'mask{i}.png')
  return folder


@pytest.mark.parametrize('binarize', [False, True])
def test_mask_folder_training_masks_and_binarize(tmp_path, binarize):
  for i in range(2):
    solid(tmp_path / 'images' / f'{i}.png', 100)
  config = folder_config(
      tmp_path / 'images',
      train_mask_dir=str(soft_masks(tmp_path / 'masks')),
      mask_binarize=binarize,
  )
  iterator, _ = batching.create_train_iterator(config)
  values = np.concatenate([batch['mask'].ravel() for batch in take(iterator, 4)])
  assert values.min() == 0.0 and values.max() == 1.0
  soft = np.count_nonzero((values > 0) & (values < 1))
  assert soft == 0 if binarize else soft > 0


def test_training_batches_have_the_documented_keys_and_ranges(tmp_path):
  halves = np.zeros((50, 70, 3), np.uint8)
  halves[:, 35:] = 255
  for i in range(4):
    Image.fromarray(halves).save(tmp_path / f'{i}.png')
  iterator, _ = batching.create_train_iterator(folder_config(tmp_path))
  batch = next(iterator)
  assert set(batch) == {'image', 'mask', 'skipped'}
  assert batch['image'].shape == (2, SIZE, SIZE, 3) and batch['image'].dtype == np.float32
  assert batch['mask'].shape == (2, SIZE, SIZE, 1) and batch['mask'].dtype == np.float32
  assert batch['skipped'].shape == (2,) and batch['skipped'].dtype == np.int32
  assert batch['image'].min() == -1.0 and batch['image'].max() == 1.0
  assert batch['mask'].min() == 0.0 and batch['mask'].max() == 1.0


@pytest.fixture
def parsed_flags():
  """absl flags marked parsed for the test, as a command's are: grain's worker pool reads them."""
  was_parsed = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  yield
  if not was_parsed:
    flags.FLAGS.unparse_flags()


def test_a_worker_process_prepares_the_batches_of_the_loading_process(tmp_path, parsed_flags):
  """Reading, crops, flips and masks do not depend on where grain prepares the records.

  (With several workers each batches its own share of the records: the same records, grouped
  differently.)
  """
  del parsed_flags
  for i in range(6):
    noise = np.random.default_rng(i).integers(0, 256, (40, 48, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / f'{i}.png')
  runs = {}
  for workers in (0, 1):
    config = folder_config(
        tmp_path, train_mask_dir=str(soft_masks(tmp_path / 'masks')), num_workers=workers
    )
    iterator, _ = batching.create_train_iterator(config)
    runs[workers] = take(iterator, 4)
  for alone, in_worker in zip(runs[0], runs[1]):
    for key in ('image', 'mask', 'skipped'):
      np.testing.assert_array_equal(alone[key], in_worker[key])


def test_data_benchmark_reports_the_iterator_throughput():
  config = places2.get_config()
  config.model.image_size = SIZE
  config.train.batch_size = 2
  record = bench_data.throughput(
      config, num_workers=0, batches=2, warmup=1, images=3, mask_mode='folder'
  )
  assert record['what'] == 'data' and record['num_workers'] == 0 and record['masks'] == 'folder'
  assert record['batches'] == 2 and record['batch_size'] == 2 and record['images_per_s'] > 0


def bucket_one_masks(folder: pathlib.Path, size: int = SIZE) -> list[int]:
  """Three masks in bucket (0.1, 0.2] with distinct hole counts, in file order."""
  folder.mkdir(parents=True, exist_ok=True)
  counts = []
  for i, rows in enumerate((4, 5, 6)):  # 12.5%, 15.6%, 18.8% of 32 rows
    mask = np.zeros((size, size), np.uint8)
    mask[:rows] = 255
    Image.fromarray(mask).save(folder / f'm{i}.png')
    counts.append(rows * size)
  return counts


def test_test_batches_pair_image_i_with_mask_i_mod_count_and_pad(tmp_path):
  for i in range(5):
    solid(tmp_path / 'test' / f'{i:02d}.png', 30 * i + 10, shape=(SIZE, SIZE))
  counts = bucket_one_masks(tmp_path / 'masks')
  config = folder_config(test_dir=tmp_path / 'test', test_mask_dir=str(tmp_path / 'masks'))
  batches = list(testset.create_test_dataset(config, 1))
  assert len(batches) == 2
  assert all(set(b) == {'image', 'mask', 'valid', 'index', 'skipped'} for b in batches)
  assert all(b['image'].shape == (4, SIZE, SIZE, 3) for b in batches)
  batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  np.testing.assert_array_equal(batch['valid'], [1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(batch['index'], [0, 1, 2, 3, 4, -1, -1, -1])
  assert [image_value(im) for im in batch['image'][:5]] == [10, 40, 70, 100, 130]
  assert [int(m.sum()) for m in batch['mask'][:5]] == [counts[i % 3] for i in range(5)]
  assert not batch['image'][5:].any() and not batch['mask'][5:].any()
  again = list(testset.create_test_dataset(config, 1))
  for first, second in zip(batches, again):
    for key in first:
      np.testing.assert_array_equal(first[key], second[key])
  with pytest.raises(sources.DataError, match='no mask with a hole ratio in 20-30'):
    testset.create_test_dataset(config, 2)


def test_procedural_test_masks_follow_the_seed(tmp_path):
  for i in range(3):
    solid(tmp_path / 'test' / f'{i}.png', 50)
  config = folder_config(test_dir=tmp_path / 'test', test_masks_per_bucket=2, test_mask_seed=7)
  [batch] = list(testset.create_test_dataset(config, 3))
  expected = masks.procedural_test_masks(3, 2, size=SIZE, seed=7)
  for i in range(3):
    np.testing.assert_array_equal(batch['mask'][i, ..., 0], expected[i % 2])
  config.data.test_mask_seed = 8
  [other] = list(testset.create_test_dataset(config, 3))
  assert not np.array_equal(batch['mask'][:3], other['mask'][:3])
