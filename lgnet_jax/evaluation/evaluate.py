"""Evaluation: the paper's table (metrics x hole-ratio buckets) for a workdir's checkpoint.

`python -m lgnet_jax.main --config=CONFIG --mode=eval --workdir=W` restores W's newest
readable checkpoint (or `eval.step`), runs the test images with the masks of every bucket, and writes
W/eval/step_N/results.{md,csv,json} plus sample composites. The networks are built from W's
own config.json (a trained or imported workdir); data and evaluation settings come from
CONFIG. Composites and ground truth are mapped to uint8 as the reference does before any
metric (`metrics.to_uint8_values`).
"""

import csv
import functools
import io
import itertools
import json
import pathlib
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from lgnet_jax.data import image_io, masks, sources, testset
from lgnet_jax.evaluation import metrics
from lgnet_jax.runtime import sharding
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.config_checks import ConfigError, check_config
from lgnet_jax.evaluation.metrics_nets import inception as inception_lib
from lgnet_jax.evaluation.metrics_nets import lpips as lpips_lib
from lgnet_jax.models import build_generator
from lgnet_jax.models import first_stage as first_stage_lib

METRICS = ('l1', 'psnr', 'ssim', 'fid', 'lpips')
# The scores of an X_LG workdir's first-stage composite (Table VIII's "X" row) in eval_step.
FIRST_STAGE_PREFIX = 'first_stage/'
METRIC_TITLES = {'l1': 'l1 (%)', 'psnr': 'PSNR', 'ssim': 'SSIM', 'fid': 'FID', 'lpips': 'LPIPS'}
FID_HELP = (
    "FID needs pytorch-fid's pt_inception-2015-12-05-6726825d.pth (published with the "
    "pytorch-fid package's releases): --config.eval.inception_weights=PATH"
)
LPIPS_HELP = (
    "LPIPS needs torchvision's alexnet-owt-7be5be79.pth (or vgg16-397923af.pth with "
    "--config.eval.lpips_backbone=vgg) and the lpips package's v0.1 head file alex.pth "
    '(vgg.pth, inside the package at lpips/weights/v0.1/): '
    '--config.eval.lpips_backbone_weights=PATH --config.eval.lpips_head_weights=PATH'
)


def load_metric_networks(eval_config: ml_collections.ConfigDict, warn: bool = True) -> dict:
  """Weights of the FID and LPIPS networks that are configured; the others are left out
  (with a warning saying how to add them, unless not `warn`)."""
  networks = {}
  try:
    if eval_config.inception_weights:
      networks['inception'] = inception_lib.load_fid_inception_params(eval_config.inception_weights)
    elif warn:
      logging.warning('FID column left out. %s', FID_HELP)
    if eval_config.lpips_backbone_weights and eval_config.lpips_head_weights:
      networks['lpips'] = lpips_lib.load_lpips_params(
          eval_config.lpips_backbone_weights,
          eval_config.lpips_head_weights,
          eval_config.lpips_backbone,
      )
    elif warn:
      logging.warning('LPIPS column left out. %s', LPIPS_HELP)
  except ValueError as e:  # unreadable or mismatched weight files
    raise ConfigError(str(e)) from None
  return networks


def bucket_title(bucket: int) -> str:
  low, high = masks.BUCKETS[bucket]
  return f'{low * 100:.0f}-{high * 100:.0f}%'


def eval_step(
    variables, batch, metric_networks, *, generator, lpips_backbone: str
) -> tuple[dict[str, jax.Array], jax.Array]:
  """Per-image metrics (and FID features) of the final composite, and the composite (0..255).

  Behind a first stage other than the coarse U-Net (X_LG), the first stage's composite is
  scored too, as the metrics prefixed FIRST_STAGE_PREFIX: Table VIII's "X" row.
  """
  outputs = generator.apply(
      variables,
      batch['image'],
      batch['mask'],
      train=False,
      first_stage_out=batch.get('first_stage'),
  )
  final = outputs[f'merged{len(generator.stages)}']
  real = metrics.to_uint8_values(batch['image'])
  composites = {'': metrics.to_uint8_values(final)}  # (B, H, W, 3) each
  if generator.first_stage:
    composites[FIRST_STAGE_PREFIX] = metrics.to_uint8_values(outputs['merged1'])
  features = {}
  if 'inception' in metric_networks:  # one call for every composite and the ground truth
    everything = jax.numpy.concatenate([*composites.values(), real]) / 255.0
    pool3 = inception_lib.FIDInceptionV3().apply(metric_networks['inception'], everything)
    *fakes, features['real'] = jax.numpy.split(pool3, len(composites) + 1)
    features.update(zip(composites, fakes))
  scores = {}
  for prefix, fake in composites.items():
    scores[prefix + 'l1'] = metrics.l1_percent(fake, real)
    scores[prefix + 'psnr'] = metrics.psnr(fake, real)
    scores[prefix + 'ssim'] = metrics.ssim(fake, real)
    if features:
      scores[prefix + 'fid_fake'], scores[prefix + 'fid_real'] = features[prefix], features['real']
    if 'lpips' in metric_networks:
      scores[prefix + 'lpips'] = lpips_lib.LPIPS(lpips_backbone).apply(
          metric_networks['lpips'], fake / 127.5 - 1.0, real / 127.5 - 1.0
      )
  return scores, composites['']


def _gather(x: jax.Array) -> np.ndarray:
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def format_tables(
    table: dict[str, dict[str, float]], first_stage_table: dict | None = None
) -> tuple[str, str]:
  """Markdown and CSV renderings: rows are metrics, columns are buckets (as Table I). With the
  first stage's table (an X_LG workdir) each metric has two rows, "X" then "X_LG" (Table VIII)."""
  buckets = list(table)
  present = [m for m in METRICS if m in table[buckets[0]]]
  methods = {'X': first_stage_table, 'X_LG': table} if first_stage_table else {'': table}
  head = ['metric'] + (['row'] if first_stage_table else [])
  lines = [
      '| ' + ' | '.join(head + buckets) + ' |',
      '|---|' + '---|' * (len(head) - 1 + len(buckets)),
  ]
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(head + buckets)
  for metric in present:
    for method, rows in methods.items():
      cells = [
          f'{rows[b][metric]:.4f}' if metric in ('ssim', 'lpips') else f'{rows[b][metric]:.2f}'
          for b in buckets
      ]
      title = [METRIC_TITLES[metric]] + ([method] if method else [])
      lines.append('| ' + ' | '.join(title + cells) + ' |')
      writer.writerow(
          [metric] + ([method] if method else []) + [repr(rows[b][metric]) for b in buckets]
      )
  return '\n'.join(lines) + '\n', out.getvalue()


def first_stage_note(model: ml_collections.ConfigDict) -> str:
  """What Table VIII's "X" row is for this workdir (printed under the table)."""
  spec = model.get('first_stage', first_stage_lib.BUILT_IN)
  if first_stage_lib.trains_first_stage(model):
    return f'X: the first stage ({first_stage_lib.describe(spec)}) trained jointly with LG'
  how = 'only LG learned' if spec == first_stage_lib.PRECOMPUTED else 'frozen; only LG learned'
  return f'X: {first_stage_lib.describe(spec)}, the standalone method ({how})'


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, devices: list | None = None
) -> dict[str, dict[str, float]]:
  """Scores `workdir`'s checkpoint on every mask bucket; returns {bucket: {metric: mean}}.

  Each batch is split over `devices` (default: every device of every process).
  """
  workdir = workdir_lib.as_path(workdir)
  checkpoint_config = workdir_lib.load_config(workdir)
  config = ml_collections.ConfigDict(config.to_dict())
  config.model = checkpoint_config.model
  mesh = sharding.create_mesh(devices)
  check_config(config, mode='eval', num_devices=mesh.size)
  workdir_lib.check_writable(workdir)  # the tables and samples go to WORKDIR/eval/
  replicated = sharding.replicated(mesh)
  data_sharding = sharding.batch_split(mesh)

  step, restored = workdir_lib.restore(
      workdir, config, config.eval.step, fields=('g_params', 'g_batch_stats'), sharding=replicated
  )
  variables = {'params': restored['g_params'], 'batch_stats': restored['g_batch_stats']}
  metric_networks, step_fn = _compiled_eval_step(config, mesh)

  out_dir = workdir / 'eval' / f'step_{step}'
  score = functools.partial(
      _score_bucket,
      step_fn,
      variables,
      metric_networks,
      data_sharding,
      sample_dir=out_dir / 'samples',
      num_samples=config.eval.num_samples,
  )
  if config.model.get('first_stage') == first_stage_lib.PRECOMPUTED:
    testset.check_first_stage_results(config)  # every bucket's, before the first is scored
  rows = {
      bucket_title(bucket): score(testset.create_test_dataset(config, bucket), bucket)
      for bucket in range(len(masks.BUCKETS))
  }
  table = {title: row[''] for title, row in rows.items()}
  first_stage_table = {
      title: row[FIRST_STAGE_PREFIX] for title, row in rows.items() if FIRST_STAGE_PREFIX in row
  }
  _write_results(workdir, out_dir, step, table, first_stage_table, config.model)
  return table


def _compiled_eval_step(
    config: ml_collections.ConfigDict, mesh, warn: bool = True
) -> tuple[dict, Callable]:
  """The configured metric networks (replicated) and the jitted `eval_step` over `mesh`."""
  replicated = sharding.replicated(mesh)
  data_sharding = sharding.batch_split(mesh)
  metric_networks = jax.device_put(load_metric_networks(config.eval, warn), replicated)
  step_fn = jax.jit(
      functools.partial(
          eval_step,
          generator=build_generator(config.model),
          lpips_backbone=config.eval.lpips_backbone,
      ),
      in_shardings=(replicated, data_sharding, replicated),
      out_shardings=replicated,
  )
  return metric_networks, step_fn


def periodic_evaluator(
    config: ml_collections.ConfigDict, mesh
) -> Callable[[dict], dict[str, dict[str, float]]]:
  """Scores generator variables on a fixed subset of the test set, for evaluation while training.

  The subset is the first `train.eval_num_images` test images (rounded up to whole
  `eval.batch_size` batches) of every hole-ratio bucket: the same images at every call, so
  the curves compare steps. Datasets and metric networks are set up here, once, so a missing
  test set or weight file stops training before its first step.
  """
  data_sharding = sharding.batch_split(mesh)
  metric_networks, step_fn = _compiled_eval_step(config, mesh, warn=False)
  num_batches = -(-config.train.eval_num_images // config.eval.batch_size)
  datasets = [testset.create_test_dataset(config, bucket) for bucket in range(len(masks.BUCKETS))]

  def run(variables: dict) -> dict[str, dict[str, float]]:
    return {
        bucket_title(bucket): _score_bucket(
            step_fn,
            variables,
            metric_networks,
            data_sharding,
            itertools.islice(dataset, num_batches),
            bucket,
            sample_dir=None,
            num_samples=0,
            quiet=True,
        )['']
        for bucket, dataset in enumerate(datasets)
    }

  return run


def _score_bucket(
    step_fn: Callable,
    variables,
    metric_networks,
    data_sharding: NamedSharding,
    batches,
    bucket: int,
    sample_dir: pathlib.Path | None,
    num_samples: int,
    quiet: bool = False,
) -> dict[str, float]:
  """Mean scores over one mask bucket's test batches; the first valid composites saved."""
  scores: dict[str, list[np.ndarray]] = {}
  valid, samples_written = [], 0
  for local_batch in batches:
    local_valid = local_batch.pop('valid')
    local_index = local_batch.pop('index')
    local_batch.pop('skipped', None)
    batch = sharding.make_global_batch(local_batch, data_sharding)
    batch_scores, composites = step_fn(variables, batch, metric_networks)
    for name, value in batch_scores.items():
      scores.setdefault(name, []).append(_gather(value))
    valid.append(_gather(jax.make_array_from_process_local_data(data_sharding, local_valid)))
    if jax.process_index() == 0 and samples_written < num_samples:
      kept = [
          (image, index)
          for image, index, ok in zip(
              np.asarray(composites)[: len(local_index)], local_index, local_valid
          )
          if ok
      ]
      for image, index in kept[: num_samples - samples_written]:
        image_io.save_image_atomic(
            sample_dir / f'{masks.bucket_name(bucket)}_{index:05d}.png', image.astype(np.uint8)
        )
        samples_written += 1
  per_image = {name: np.concatenate(v) for name, v in scores.items()}
  weights, title = np.concatenate(valid), bucket_title(bucket)
  rows = {
      '': _bucket_means({k: v for k, v in per_image.items() if '/' not in k}, weights, title, quiet)
  }
  first = {
      k[len(FIRST_STAGE_PREFIX) :]: v
      for k, v in per_image.items()
      if k.startswith(FIRST_STAGE_PREFIX)
  }
  if first:
    rows[FIRST_STAGE_PREFIX] = _bucket_means(first, weights, f'{title}, first stage', quiet)
  return rows


def _bucket_means(
    per_image: dict[str, np.ndarray], weights: np.ndarray, title: str, quiet: bool = False
) -> dict[str, float]:
  """Each metric's mean over the valid images (weights > 0), and FID from their features;
  logged unless `quiet` (evaluation while training logs one line for all buckets)."""
  if weights.sum() == 0:
    raise sources.DataError(f'no readable test image for bucket {title}')
  row = {
      name: float(np.sum(np.where(weights > 0, values, 0.0)) / weights.sum())
      for name, values in per_image.items()
      if not name.startswith('fid_')
  }
  if 'fid_fake' in per_image:
    keep = weights > 0
    try:
      row['fid'] = metrics.frechet_distance_of_features(
          per_image['fid_fake'][keep], per_image['fid_real'][keep]
      )
    except ValueError as error:  # fewer than 2 images
      logging.warning('bucket %s: %s: FID reported as nan', title, error)
      row['fid'] = float('nan')
  if not quiet:
    logging.info(
        'bucket %s: %s (%d images)',
        title,
        ', '.join(f'{k} {v:.4f}' for k, v in row.items()),
        int(weights.sum()),
    )
  return row


def _write_results(
    workdir: pathlib.Path,
    out_dir: pathlib.Path,
    step: int,
    table: dict[str, dict[str, float]],
    first_stage_table: dict[str, dict[str, float]],
    model: ml_collections.ConfigDict,
) -> None:
  """The table (with the first stage's rows for X_LG) as results.md/.csv/.json under
  `out_dir` (process 0) and as eval scalars."""
  if jax.process_index() == 0:
    markdown, csv_text = format_tables(table, first_stage_table)
    results = {'step': step, 'workdir': str(workdir), 'table': table}
    if first_stage_table:
      markdown += '\n' + first_stage_note(model) + '\n'
      results['first_stage'] = {'note': first_stage_note(model), 'table': first_stage_table}
    workdir_lib.atomic_write_text(out_dir / 'results.md', markdown)
    workdir_lib.atomic_write_text(out_dir / 'results.csv', csv_text)
    workdir_lib.atomic_write_text(out_dir / 'results.json', json.dumps(results, indent=2) + '\n')
    logging.info('evaluation of step %d:\n%s', step, markdown)
  # clu's metric writers import TensorFlow: only when there are results to write.
  from clu import metric_writers  # pylint: disable=import-outside-toplevel

  writer = metric_writers.create_default_writer(
      str(workdir), just_logging=jax.process_index() > 0, collection='eval'
  )
  scalars = {
      f'{name}/{title}': value for title, row in table.items() for name, value in row.items()
  }
  for title, row in first_stage_table.items():
    scalars.update({f'{FIRST_STAGE_PREFIX}{name}/{title}': value for name, value in row.items()})
  writer.write_scalars(step, scalars)
  writer.flush()
