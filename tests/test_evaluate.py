"""End-to-end evaluation of an imported checkpoint on a tiny generated test set."""

import json
import logging
import shutil

import jax
import pytest
from PIL import Image

from lgnet_jax.evaluation import evaluate
from lgnet_jax.data import masks
from lgnet_jax import workdir as workdir_lib
from helpers import (
    absl_messages,
    fid_recipe_state_dict,
    lpips_recipe_state_dict,
    write_random_images,
)


@pytest.mark.slow
def test_eval_mode_writes_the_table_and_compiles_its_step_once(
    tmp_path, official_workdir, plain_compile, caplog
):
  """3 images, 2 masks per bucket, batch 2: 12 steps (6 buckets x [full, padded] batches)."""
  from lgnet_jax.configs import paris_streetview  # pylint: disable=import-outside-toplevel

  workdir = tmp_path / 'workdir'
  shutil.copytree(official_workdir, workdir)
  test_dir = tmp_path / 'test'
  write_random_images(test_dir, 3)  # 3 images with batch 2: the last batch is padded
  config = paris_streetview.get_config()
  config.data.test_dir = str(test_dir)
  config.data.test_masks_per_bucket = 2
  config.eval.batch_size = 2
  with jax.log_compiles(True), caplog.at_level(logging.WARNING), absl_messages() as messages:
    evaluate.evaluate(config, str(workdir), devices=jax.devices()[:1])
  # JAX logs every lowering for compilation (a persistent-cache hit included): one for the
  # step over every bucket and the padded batches.
  compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith('Compiling')]
  assert len([m for m in compiled if m.startswith('Compiling jit(eval_step)')]) == 1, compiled
  out = workdir / 'eval' / 'step_0'
  table = json.loads((out / 'results.json').read_text())['table']
  titles = [evaluate.bucket_title(b) for b in range(len(masks.BUCKETS))]
  assert list(table) == titles == ['1-10%', '10-20%', '20-30%', '30-40%', '40-50%', '50-60%']
  for row in table.values():
    assert 0 < row['l1'] < 100 and 5 < row['psnr'] < 80 and -1 < row['ssim'] <= 1
  # Larger holes are harder: l1 grows and SSIM falls from the first to the last bucket.
  assert table[titles[0]]['l1'] < table[titles[-1]]['l1']
  assert table[titles[0]]['ssim'] > table[titles[-1]]['ssim']
  markdown = (out / 'results.md').read_text().splitlines()
  assert markdown[0] == '| metric | ' + ' | '.join(titles) + ' |'
  assert [line.split(' |')[0] for line in markdown[2:]] == ['| l1 (%)', '| PSNR', '| SSIM']
  csv_rows = (out / 'results.csv').read_text().splitlines()
  assert csv_rows[0] == 'metric,' + ','.join(titles) and len(csv_rows) == 4
  samples = sorted(p.name for p in (out / 'samples').iterdir())
  assert len(samples) == 6 * 3 and samples[0] == '01-10_00000.png'
  with Image.open(out / 'samples' / samples[0]) as image:
    assert image.size == (256, 256)
  assert any(m.startswith('evaluation of step 0') for m in messages), messages


def test_eval_without_checkpoint_is_a_clear_error(tmp_path):
  from lgnet_jax.configs import paris_streetview  # pylint: disable=import-outside-toplevel

  with pytest.raises(workdir_lib.WorkdirError, match='is not an lgnet_jax workdir'):
    evaluate.evaluate(paris_streetview.get_config(), str(tmp_path))
  assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_fid_and_lpips_columns(tmp_path, straight_run, monkeypatch):
  """With metric weights (the fixtures' recipe weights) the table gains FID and LPIPS. The
  tiny trained workdir keeps the generator's share of the compilation small; 2 images per
  bucket are the fewest FID's covariance takes. Compiled with XLA's full optimisation:
  InceptionV3 then runs faster than the cheaper compilation saves (28 s against 32 s for
  this evaluation with 4 images, on the 2-core EPYC host)."""
  from lgnet_jax.configs import paris_streetview
  from lgnet_jax.evaluation.metrics_nets import inception, lpips

  monkeypatch.setattr(
      inception,
      'load_fid_inception_params',
      lambda path: (inception.fid_params_from_state_dict(fid_recipe_state_dict())),
  )
  monkeypatch.setattr(
      lpips,
      'load_lpips_params',
      lambda backbone_path, head_path, backbone: (
          lpips.lpips_params_from_state_dict(lpips_recipe_state_dict(backbone), backbone)
      ),
  )
  test_dir = tmp_path / 'test'
  write_random_images(test_dir, 2, seed=1)
  workdir = tmp_path / 'workdir'
  shutil.copytree(straight_run.workdir, workdir)
  config = paris_streetview.get_config()
  config.data.test_dir = str(test_dir)
  config.data.test_masks_per_bucket = 1
  config.eval.batch_size = 2  # one batch per bucket, on one device
  config.eval.num_samples = 0
  config.eval.inception_weights = 'inception.pth'
  config.eval.lpips_backbone_weights, config.eval.lpips_head_weights = 'alex.pth', 'head.pth'
  table = evaluate.evaluate(config, str(workdir), devices=jax.devices()[:1])
  first, last = table['1-10%'], table['50-60%']
  assert set(first) == {'l1', 'psnr', 'ssim', 'fid', 'lpips'}
  assert 0 <= first['lpips'] < last['lpips']
  assert first['fid'] >= 0 and last['fid'] >= 0
  markdown = (workdir / 'eval' / 'step_6' / 'results.md').read_text()
  assert '| FID |' in markdown and '| LPIPS |' in markdown
