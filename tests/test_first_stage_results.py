"""Precomputed first-stage results (lgnet_jax/data/first_stage_results.py): training triples paired
by file name, evaluation pairs written for another method and its results read back, and the
`eval-pairs` command."""

import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from helpers import assert_usage_error, random_image, run_cli_in_process, save_image, tiny_config
from lgnet_jax import __main__ as lgnet
from lgnet_jax.data import batching, first_stage_results, image_io, masks, sources, testset
from lgnet_jax.tools import eval_pairs

SIZE = 32  # model.image_size here: small and fast
SHAPE = (24, 40)  # (height, width) of the training files


def solid(value: int, shape=SHAPE) -> np.ndarray:
  return np.full((*shape, 3), value, np.uint8)


def left_hole(shape=SHAPE) -> np.ndarray:
  mask = np.zeros(shape, np.uint8)
  mask[:, : shape[1] // 4] = 255
  return mask


def write_triples(root: pathlib.Path, names: dict[str, int]) -> None:
  """images/NAME.png (grey value v), masks/NAME.bmp and results/NAME.jpg (value 255 - v)."""
  for name, value in names.items():
    save_image(root / 'images' / f'{name}.png', solid(value))
    save_image(root / 'masks' / f'{name}.bmp', left_hole())
    save_image(root / 'results' / f'{name}.jpg', solid(255 - value), quality=100)


def train_config(root: pathlib.Path, *extra: str):
  return tiny_config(
      '--config.data.source=folder',
      f'--config.data.train_dir={root / "images"}',
      f'--config.data.train_mask_dir={root / "masks"}',
      f'--config.data.first_stage_dir={root / "results"}',
      '--config.model.first_stage=precomputed',
      f'--config.model.image_size={SIZE}',
      '--config.data.read_threads=1',
      *extra,
  )


def value(image: np.ndarray) -> int:
  """The uint8 grey value of a uniform [-1, 1] image."""
  return int(round((float(image.mean()) + 1.0) * 127.5))


def test_triples_pair_by_relative_path_or_by_name_for_a_list(tmp_path):
  write_triples(tmp_path, {'a': 20, 'sub/b': 60})
  save_image(tmp_path / 'results' / 'b.webp', solid(200), lossless=True)  # a root-level 'b'
  config = train_config(tmp_path)
  triples = first_stage_results.train_triples(config.data)
  assert triples == [
      (str(tmp_path / 'images' / n) + '.png', str(tmp_path / 'masks' / n) + '.bmp', r)
      for n, r in (
          ('a', str(tmp_path / 'results/a.jpg')),
          ('sub/b', str(tmp_path / 'results/sub/b.jpg')),
      )
  ]
  source = first_stage_results.TripleSource(triples)
  for index in range(2):
    record = source[index]
    assert int(record['image'].mean()) + int(record['first_stage'].mean()) in range(254, 257)
    assert record['mask'].shape == SHAPE and record['mask'][:, 0].min() == 1.0

  listing = tmp_path / 'train.txt'  # a list pairs by the bare name: sub/b.png -> results/b.*
  listing.write_text('images/a.png\nimages/sub/b.png\n')
  save_image(tmp_path / 'masks' / 'b.png', left_hole())
  config.data.train_dir, config.data.train_files = None, str(listing)
  triples = first_stage_results.train_triples(config.data)
  assert [t[1:] for t in triples] == [
      (str(tmp_path / 'masks/a.bmp'), str(tmp_path / 'results/a.jpg')),
      (str(tmp_path / 'masks/b.png'), str(tmp_path / 'results/b.webp')),
  ]


def test_image_mask_and_result_flip_together():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)
  result = rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)
  mask = left_hole((SIZE, SIZE)).astype(np.float32) / 255
  record = {'image': image, 'mask': mask, 'first_stage': result, 'skipped': np.int32(0)}
  expected = {
      'image': image_io.to_signed_unit(image),
      'mask': mask[..., None],
      'first_stage': image_io.to_signed_unit(result),
  }
  transform = first_stage_results.TriplePreprocess(SIZE)
  seen = set()
  for seed in range(16):
    out = transform.random_map(record, np.random.default_rng(seed))
    flips = set()
    for key, unflipped in expected.items():
      assert out[key].shape == unflipped.shape and out[key].dtype == np.float32
      if np.array_equal(out[key], unflipped):
        flips.add(False)
      else:
        np.testing.assert_array_equal(out[key], unflipped[:, ::-1])
        flips.add(True)
    assert len(flips) == 1, f'seed {seed}: the three were not flipped together'
    seen |= flips
  assert seen == {False, True}


def _break(root: pathlib.Path, case: str) -> str:
  """Spoils the triple of image 'sub/b' as `case` says; a fragment the error must hold."""
  if case == 'missing result':
    (root / 'results/sub/b.jpg').unlink()
    return str(root / 'results/sub/b') + '.*'
  if case == 'missing mask':
    (root / 'masks/sub/b.bmp').unlink()
    return str(root / 'masks/sub/b') + '.*'
  if case == 'size':
    save_image(root / 'results/sub/b.jpg', solid(9, (24, 41)))
    return f'{root / "results/sub/b.jpg"} is 41x24 (the image'
  if case == 'unreadable':
    (root / 'masks/sub/b.bmp').write_bytes(b'')
    return str(root / 'masks/sub/b.bmp')
  save_image(root / 'results/sub/b.png', solid(9))  # two results for one image
  return str(root / 'results/sub/b.png')


@pytest.mark.parametrize('case', ['missing result', 'missing mask', 'size', 'unreadable', 'two'])
def test_a_bad_triple_stops_the_iterator_before_a_batch(tmp_path, case):
  write_triples(tmp_path, {'a': 20, 'sub/b': 60, 'c': 90})
  fragment = _break(tmp_path, case)
  with pytest.raises(sources.DataError) as error:
    batching.create_train_iterator(train_config(tmp_path))
  message = str(error.value)
  assert '\n' not in message and fragment in message and message.startswith('1 of 3 training')


def test_precomputed_training_needs_folders(tmp_path):
  write_triples(tmp_path, {'a': 20})
  with pytest.raises(sources.DataError, match='first_stage_dir=FOLDER'):
    batching.create_train_iterator(train_config(tmp_path, '--config.data.first_stage_dir=""'))
  with pytest.raises(sources.DataError, match='data.source=folder'):
    batching.create_train_iterator(train_config(tmp_path, '--config.data.source=demo'))


def test_train_batches_carry_the_results(tmp_path):
  values = {'a': 20, 'b': 60, 'sub/c': 100, 'sub/d': 140}
  write_triples(tmp_path, values)
  iterator, count = batching.create_train_iterator(train_config(tmp_path))
  assert count == 4
  seen = set()
  for _ in range(4):
    batch = next(iterator)
    assert batch['image'].shape == batch['first_stage'].shape == (2, SIZE, SIZE, 3)
    assert batch['mask'].shape == (2, SIZE, SIZE, 1) and batch['first_stage'].dtype == np.float32
    for image, result in zip(batch['image'], batch['first_stage']):
      assert abs(value(image) + value(result) - 255) <= 1  # the result of this very image
      seen.add(value(image))
  assert seen == set(values.values())
  config = train_config(tmp_path, "--config.model.first_stage=''")  # the coarse U-Net's data
  batch = next(batching.create_train_iterator(config)[0])
  assert 'first_stage' not in batch and batch['image'].shape == (2, SIZE, SIZE, 3)


def test_result_for_finds_the_result_by_name(tmp_path):
  save_image(tmp_path / 'results/sub/x.png', solid(7, (6, 5)))
  found = first_stage_results.result_for(
      tmp_path / 'results', tmp_path / 'photos/sub/x.jpg', tmp_path / 'photos'
  )
  np.testing.assert_array_equal(found, solid(7, (6, 5)))
  with pytest.raises(sources.DataError, match=r'no first-stage result .*results/x\.\*'):
    first_stage_results.result_for(tmp_path / 'results', 'x.jpg')
  with pytest.raises(sources.DataError, match=r'x\.png is 5x6, expected 6x4'):
    first_stage_results.result_for(tmp_path / 'results', 'sub/x.jpg', '', shape=(4, 6))


EVAL_ARGS = (
    '--config.data.source=folder',
    f'--config.model.image_size={SIZE}',
    '--config.data.test_masks_per_bucket=2',
    '--config.eval.batch_size=4',
    '--config.data.read_threads=1',
)


def records(config, bucket: int) -> dict[str, np.ndarray]:
  batches = list(testset.create_test_dataset(config, bucket))
  return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def test_eval_pairs_are_the_evaluation_pairs_and_results_read_back(tmp_path, capsys):
  tests = tmp_path / 'test'
  for i, shape in enumerate([(40, 48), (32, 32), (50, 30)]):
    save_image(tests / f'{i}.png', random_image(*shape, seed=i))
  (tests / '3_bad.png').write_bytes(b'')  # unreadable: left out of the pairs and the scores
  args = (*EVAL_ARGS, f'--config.data.test_dir={tests}')
  out = tmp_path / 'pairs'
  results = tmp_path / 'results'  # named in the config before it exists: the pairs come first
  result = run_cli_in_process(
      capsys,
      eval_pairs,
      '--config=demo',
      f'--output-dir={out}',
      *args,
      f'--config.data.test_first_stage_dir={results}',
  )
  assert result.returncode == 0, result.stderr
  assert 'test_first_stage_dir=RESULTS' in result.stdout.splitlines()[-1]
  config = tiny_config(*args)
  for bucket in range(len(masks.BUCKETS)):
    name = masks.bucket_name(bucket)
    expected = records(config, bucket)
    assert expected['valid'].tolist() == [1, 1, 1, 0] and 'first_stage' not in expected
    assert sorted(p.name for p in (out / name / 'images').iterdir()) == [
        '00000.png',
        '00001.png',
        '00002.png',
    ]
    for i in range(3):
      with Image.open(out / name / 'images' / f'{i:05d}.png') as img:
        assert img.mode == 'RGB'
        image = np.asarray(img)
      with Image.open(out / name / 'masks' / f'{i:05d}.png') as img:
        assert img.mode == 'L'
        mask = np.asarray(img)
      np.testing.assert_array_equal(image_io.to_signed_unit(image), expected['image'][i])
      np.testing.assert_array_equal(mask, np.rint(expected['mask'][i, :, :, 0] * 255))
      save_image(results / name / f'{i:05d}.bmp', 255 - image)  # "the method": any function
  config.data.test_first_stage_dir = str(results)
  testset.check_first_stage_results(config)
  for bucket in (0, 5):
    got = records(config, bucket)
    np.testing.assert_allclose(got['first_stage'][:3], -got['image'][:3], atol=1e-6)
    assert not got['first_stage'][3].any()

  wrong = results / masks.bucket_name(5) / '00001.bmp'
  save_image(wrong, random_image(SIZE, SIZE + 1))
  with pytest.raises(sources.DataError, match=re.escape(f'{wrong} is {SIZE + 1}x{SIZE}, expected')):
    testset.check_first_stage_results(config)
  wrong.unlink()
  missing = str(results / masks.bucket_name(5) / '00001') + '.*'
  with pytest.raises(sources.DataError) as error:
    testset.create_test_dataset(config, 5)
  assert missing in str(error.value) and 'evaluation pair 1' in str(error.value)
  testset.create_test_dataset(config, 4)  # the other buckets are complete


@pytest.mark.parametrize('case', ['no config', 'config missing', 'not empty', 'stray argument'])
def test_eval_pairs_usage_errors_write_nothing(tmp_path, capsys, case):
  out = tmp_path / 'pairs'
  args = [f'--output_dir={out}', '--config=demo', *EVAL_ARGS, f'--config.data.test_dir={tmp_path}']
  fragments = []
  if case == 'no config':
    args.remove('--config=demo')
    fragments = ['--config']
  elif case == 'config missing':
    args[1] = f'--config={tmp_path / "none.py"}'
    fragments = [tmp_path / 'none.py', 'does not exist']
  elif case == 'not empty':
    (out / 'old').mkdir(parents=True)
    fragments = [out, 'not empty', '--overwrite']
  else:
    args.append('stray')
    fragments = ['stray']
  before = sorted(tmp_path.rglob('*'))
  assert_usage_error(run_cli_in_process(capsys, eval_pairs, *args), *fragments)
  assert sorted(tmp_path.rglob('*')) == before


def test_eval_pairs_is_an_lgnet_command(capsys, monkeypatch):
  monkeypatch.setattr('sys.argv', ['lgnet'])
  with pytest.raises(SystemExit) as exit_info:
    lgnet.main(['eval-pairs', '--help'])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: lgnet eval-pairs ') and '--output-dir' in out


@pytest.mark.parametrize('suffix', ['.jpg', '.png', '.webp'])
def test_header_sizes_follow_the_exif_orientation(tmp_path, suffix):
  exif = Image.Exif()
  exif[0x0112] = 6  # rotated a quarter turn: width and height swap when decoded
  path = save_image(tmp_path / f'rotated{suffix}', solid(9, (20, 30)), exif=exif.tobytes())
  height, width = image_io.load_image(path).shape[:2]
  assert first_stage_results.oriented_size(path) == (width, height) == (20, 30)
