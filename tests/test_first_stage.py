"""LG behind another first stage (the paper's X_LG, Table VIII): a Flax module trained jointly
or frozen, and precomputed results; their training, resuming, evaluation rows, and the
commands that refuse a workdir naming user code without --allow-user-code.

Every run is the tiny configuration with LG reduced to the local refiner (variant C+L) behind
tests/toy_first_stage.py's ToyStage, on one device with plain programs."""

import dataclasses
import json
import pathlib
import re
import shutil
from collections.abc import Sequence

import flax
import jax
import numpy as np
import pytest

from helpers import (
    absl_messages,
    assert_usage_error,
    plain_programs,
    rect_mask,
    run_cli_in_process,
    run_main_in_process,
    save_image,
    tiny_config,
    write_random_images,
)
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.data import image_io, masks, testset
from lgnet_jax.evaluation import evaluate, metrics
from lgnet_jax.models import first_stage as first_stage_lib
from lgnet_jax.serving import export, inpaint, server
from lgnet_jax.tools import eval_pairs
from lgnet_jax.training import loop, losses
from lgnet_jax.training import state as train_state_lib
import toy_first_stage

TOY = 'toy_first_stage:ToyStage'
XLG_ARGS = (
    '--config.model.variant=C+L',
    '--config.train.batch_size=2',
    '--config.train.checkpoint_every_steps=2',
    '--config.train.eval_every_steps=0',
    '--config.train.sample_every_steps=2',
    '--config.data.demo_num_images=4',
)
JOINT = (f'--config.model.first_stage={TOY}',)
NUM_TEST_IMAGES = 2


def xlg_config(*args: str):
  return tiny_config(*XLG_ARGS, *args)


def train(workdir: pathlib.Path, steps: int, *args: str):
  """Trains `xlg_config(ARGS)` to `steps` in this process; the final state on the host."""
  with plain_programs():
    state = loop.train_and_evaluate(
        xlg_config(*args, f'--config.train.num_train_steps={steps}'),
        str(workdir),
        devices=jax.devices()[:1],
    )
  return jax.device_get(state)


def fresh_state(*args: str):
  config = xlg_config(*args)
  with plain_programs():
    state = jax.jit(lambda: train_state_lib.create_train_state(config, jax.random.PRNGKey(0)))()
  return jax.tree.map(np.array, jax.device_get(state))


def largest_change(a, b) -> float:
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def toy_weights(path: pathlib.Path) -> dict:
  """ToyStage variables other than a fresh state's (another seed), written as .msgpack."""
  x = np.zeros((1, 256, 256, 4), np.float32)
  variables = toy_first_stage.ToyStage().init(jax.random.PRNGKey(7), x, False)
  variables = jax.tree.map(lambda v: np.asarray(v) + 0.25, flax.core.unfreeze(variables))
  path.write_bytes(flax.serialization.msgpack_serialize(variables))
  return variables


def write_triples(root: pathlib.Path, count: int = 4) -> None:
  """images/NAME.png with masks/NAME.png (a rectangle) and results/NAME.png (the image, darker)."""
  for i in range(count):
    image = np.random.default_rng(i).integers(0, 256, (256, 256, 3), np.uint8)
    save_image(root / 'images' / f'{i}.png', image)
    save_image(root / 'masks' / f'{i}.png', rect_mask(256, 256, 40 + i, 60, 140, 180 + i))
    save_image(root / 'results' / f'{i}.png', image // 2)


def precomputed_args(root: pathlib.Path) -> tuple[str, ...]:
  return (
      '--config.model.first_stage=precomputed',
      '--config.data.source=folder',
      f'--config.data.train_dir={root / "images"}',
      f'--config.data.train_mask_dir={root / "masks"}',
      f'--config.data.first_stage_dir={root / "results"}',
  )


@dataclasses.dataclass
class Route:
  """A workdir trained to step 2 and resumed to step 3, its config flags, what it logged."""

  workdir: pathlib.Path
  args: tuple[str, ...]
  fresh: object
  step2: object
  step3: object
  resumed_log: str


def train_route(folder: pathlib.Path, args: tuple[str, ...]) -> Route:
  workdir = folder / 'workdir'
  fresh = fresh_state(*args)
  step2 = train(workdir, 2, *args)
  with absl_messages() as messages:
    step3 = train(workdir, 3, *args)
  return Route(workdir, args, fresh, step2, step3, '\n'.join(messages))


@pytest.fixture(scope='module')
def joint(tmp_path_factory) -> Route:
  return train_route(tmp_path_factory.mktemp('joint'), JOINT)


@pytest.fixture(scope='module')
def frozen(tmp_path_factory) -> tuple[Route, dict]:
  folder = tmp_path_factory.mktemp('frozen')
  weights = toy_weights(folder / 'toy.msgpack')
  args = (
      *JOINT,
      '--config.model.first_stage_trainable=False',
      f'--config.model.first_stage_weights={folder / "toy.msgpack"}',
  )
  return train_route(folder, args), weights


@pytest.fixture(scope='module')
def precomputed(tmp_path_factory) -> Route:
  folder = tmp_path_factory.mktemp('precomputed')
  write_triples(folder)
  return train_route(folder, precomputed_args(folder))


def assert_resumed(route: Route) -> None:
  assert re.search(
      r'resumed from .* at step 2$', route.resumed_log, re.MULTILINE
  ), route.resumed_log
  assert int(route.step3.step) == 3
  steps = workdir_lib.checkpoint_manager(route.workdir, read_only=True).all_steps()
  assert 2 in steps and 3 in steps


@pytest.mark.slow
def test_a_jointly_trained_module_learns_with_lg_and_the_discriminator(joint):
  assert sorted(joint.step2.g_params) == ['G1', 'G2']
  # The toy's own parameter tree is stage G1's: a convolution, BatchNorm, a convolution.
  assert sorted(joint.step2.g_params['G1']) == ['BatchNorm_0', 'Conv_0', 'Conv_1']
  for name in ('G1', 'G2'):
    assert largest_change(joint.fresh.g_params[name], joint.step2.g_params[name]) > 1e-4, name
  assert largest_change(joint.fresh.d_params, joint.step2.d_params) > 1e-4
  assert_resumed(joint)
  assert largest_change(joint.step2.g_params['G1'], joint.step3.g_params['G1']) > 1e-5


@pytest.mark.slow
def test_a_frozen_module_keeps_its_weights_and_statistics_while_lg_learns(frozen):
  route, weights = frozen
  for state in (route.step2, route.step3):
    assert largest_change(weights['params'], state.g_params['G1']) == 0.0
    assert largest_change(weights['batch_stats'], state.g_batch_stats['G1']) == 0.0
    assert state.d_params == {} and state.d_spectral == {}  # no discriminator
  assert largest_change(route.fresh.g_params['G2'], route.step2.g_params['G2']) > 1e-4
  assert largest_change(route.step2.g_params['G2'], route.step3.g_params['G2']) > 1e-5
  assert_resumed(route)


@pytest.mark.slow
def test_precomputed_results_train_lg_alone(precomputed):
  assert sorted(precomputed.step2.g_params) == ['G2']  # no first-stage network
  assert precomputed.step2.d_params == {}
  moved = largest_change(precomputed.fresh.g_params['G2'], precomputed.step2.g_params['G2'])
  assert moved > 1e-4
  assert_resumed(precomputed)


def test_without_a_learning_first_stage_its_terms_leave_the_objective():
  """generator_loss_terms from stage 2 (frozen or precomputed first stage): no stage-1 term,
  and the total is the full objective less exactly the stage-1 terms."""
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  holes = (rng.uniform(size=(2, 16, 16, 1)) > 0.5).astype(np.float32)
  outputs = {}
  for s in (1, 2):
    outputs[f'out{s}'] = rng.uniform(-1, 1, images.shape).astype(np.float32)
    outputs[f'merged{s}'] = images * (1 - holes) + outputs[f'out{s}'] * holes
  config = tiny_config().loss
  full = losses.generator_loss_terms(outputs, images, holes, None, None, config)
  lg_only = losses.generator_loss_terms(outputs, images, holes, None, None, config, first_stage=2)
  assert sorted(set(full) - set(lg_only)) == ['l1_hole_1', 'l1_valid_1']
  stage1 = config.lambda_valid * full['l1_valid_1'] + config.lambda_hole * full['l1_hole_1']
  assert float(lg_only['total_g']) == pytest.approx(float(full['total_g'] - stage1), rel=1e-6)


def eval_args(test_dir: pathlib.Path, *args: str) -> tuple[str, ...]:
  """Evaluation of the X_LG runs (ARGS) on the images of `test_dir`, one mask per bucket."""
  return (
      *XLG_ARGS,
      *args,
      '--config.data.source=folder',
      f'--config.data.test_dir={test_dir}',
      '--config.data.test_masks_per_bucket=1',
      f'--config.eval.batch_size={NUM_TEST_IMAGES}',
      '--config.eval.num_samples=0',
  )


@pytest.mark.slow
def test_evaluation_writes_the_x_and_x_lg_rows_of_every_bucket(frozen, tmp_path):
  route, _ = frozen
  workdir = tmp_path / 'workdir'
  shutil.copytree(route.workdir, workdir)
  write_random_images(tmp_path / 'test', NUM_TEST_IMAGES, seed=3)
  with plain_programs():
    table = evaluate.evaluate(
        tiny_config(*eval_args(tmp_path / 'test', *route.args)),
        str(workdir),
        devices=jax.devices()[:1],
    )
  out = workdir / 'eval' / 'step_3'
  results = json.loads((out / 'results.json').read_text())
  titles = [evaluate.bucket_title(b) for b in range(len(masks.BUCKETS))]
  assert list(results['table']) == list(results['first_stage']['table']) == titles
  assert results['table'] == table
  assert results['first_stage']['note'].startswith('X: toy_first_stage:ToyStage, the standalone')
  lines = (out / 'results.md').read_text().splitlines()
  assert lines[0] == '| metric | row | ' + ' | '.join(titles) + ' |'
  assert [line.split(' |')[:2] for line in lines[2:8]] == [
      ['| l1 (%)', ' X'],
      ['| l1 (%)', ' X_LG'],
      ['| PSNR', ' X'],
      ['| PSNR', ' X_LG'],
      ['| SSIM', ' X'],
      ['| SSIM', ' X_LG'],
  ]
  for title in titles:  # LG changed the composite: the two rows differ
    assert results['table'][title]['l1'] != results['first_stage']['table'][title]['l1']
  csv_head = (out / 'results.csv').read_text().splitlines()[0]
  assert csv_head == 'metric,row,' + ','.join(titles)


@pytest.mark.slow
def test_the_x_row_of_precomputed_results_is_their_own_score(precomputed, tmp_path, capsys):
  """eval-pairs writes the pairs; a 'method' (here: the image made darker in the hole) fills
  them; evaluation's X row is the metrics of those results composited, computed here apart."""
  write_random_images(tmp_path / 'test', NUM_TEST_IMAGES, seed=4)
  args = eval_args(tmp_path / 'test', *precomputed.args)
  config_file = tmp_path / 'eval_config.py'
  config_file.write_text(
      'from helpers import tiny_config\n\n\ndef get_config():\n'
      f'  return tiny_config(*{list(args)!r})\n'
  )
  result = run_cli_in_process(
      capsys, eval_pairs, f'--config={config_file}', '--output-dir', tmp_path / 'pairs'
  )
  assert result.returncode == 0, result.stderr
  for bucket in range(len(masks.BUCKETS)):
    name = masks.bucket_name(bucket)
    for image_path in sorted((tmp_path / 'pairs' / name / 'images').iterdir()):
      image = image_io.load_image(image_path)
      save_image(tmp_path / 'results' / name / image_path.name, (image * 0.6).astype(np.uint8))
  config = tiny_config(*args, f'--config.data.test_first_stage_dir={tmp_path / "results"}')
  workdir = tmp_path / 'workdir'
  shutil.copytree(precomputed.workdir, workdir)
  with plain_programs():
    evaluate.evaluate(config, str(workdir), devices=jax.devices()[:1])
  results = json.loads((workdir / 'eval' / 'step_3' / 'results.json').read_text())
  assert results['first_stage']['note'].startswith('X: precomputed results, the standalone')
  for bucket in range(len(masks.BUCKETS)):
    records = list(testset.create_test_dataset(config, bucket))
    images = np.concatenate([r['image'] for r in records])
    holes = np.concatenate([r['mask'] for r in records])
    given = np.concatenate([r['first_stage'] for r in records])
    fake = metrics.to_uint8_values(images * (1 - holes) + given * holes)
    real = metrics.to_uint8_values(images)
    expected = {
        'l1': float(np.mean(metrics.l1_percent(fake, real))),
        'psnr': float(np.mean(metrics.psnr(fake, real))),
        'ssim': float(np.mean(metrics.ssim(fake, real))),
    }
    row = results['first_stage']['table'][evaluate.bucket_title(bucket)]
    for metric, value in expected.items():
      assert row[metric] == pytest.approx(value, rel=1e-5), (bucket, metric)


@pytest.mark.parametrize('command', [inpaint, server, export])
def test_commands_refuse_a_workdir_naming_user_code_without_the_opt_in(tmp_path, capsys, command):
  """The refusal comes from the workdir's config alone, before any checkpoint is read: the
  workdir here has no checkpoint (the trained one is `joint`'s)."""
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  workdir_lib.save_config(workdir, xlg_config(*JOINT))
  out = tmp_path / 'out'
  args = {
      inpaint: (
          '--image',
          tmp_path / 'a.png',
          '--mask',
          tmp_path / 'm.png',
          '--output',
          out / 'a.png',
      ),
      server: ('--port', '0'),
      export: ('--format', 'jax', '--out', out),
  }[command]
  save_image(tmp_path / 'a.png', np.zeros((256, 256, 3), np.uint8))
  save_image(tmp_path / 'm.png', rect_mask(256, 256, 10, 10, 50, 50))
  result = run_cli_in_process(capsys, command, '--workdir', workdir, *args)
  assert_usage_error(result, 'toy_first_stage:ToyStage', '--allow-user-code')
  assert not out.exists()


@pytest.mark.slow
def test_with_the_opt_in_the_module_runs_in_inpaint_and_export(joint, tmp_path, capsys):
  image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)
  save_image(tmp_path / 'a.png', image)
  hole = rect_mask(256, 256, 60, 60, 120, 140)
  save_image(tmp_path / 'm.png', hole)
  with plain_programs():
    result = run_cli_in_process(
        capsys,
        inpaint,
        *('--workdir', joint.workdir, '--image', tmp_path / 'a.png', '--mask', tmp_path / 'm.png'),
        *('--output', tmp_path / 'out.png', '--allow-user-code'),
    )
    assert result.returncode == 0, result.stderr
    filled = image_io.load_image(tmp_path / 'out.png')
    known = hole == 0
    np.testing.assert_array_equal(filled[known], image[known])
    assert np.abs(filled[~known].astype(int) - image[~known]).mean() > 1
    result = run_cli_in_process(
        capsys,
        export,
        *('--workdir', joint.workdir, '--format', 'onnx', '--out', tmp_path / 'export'),
        '--allow-user-code',
    )
  assert result.returncode == 0, result.stderr
  manifest = json.loads((tmp_path / 'export' / export.MANIFEST).read_text())
  assert manifest['format'] == 'onnx'
  # The ONNX model (its first stage the module) fills as the command did.
  import onnxruntime  # pylint: disable=import-outside-toplevel  # only here

  session = onnxruntime.InferenceSession(str(tmp_path / 'export' / 'inpainter.onnx'))
  feeds = {'images': image[None], 'masks': hole[None, :, :, None]}
  (onnx_filled,) = session.run(['inpainted'], feeds)[0]
  assert np.abs(onnx_filled.astype(int) - filled).max() <= 1


@pytest.mark.slow
def test_serving_and_export_refuse_precomputed_results(precomputed, tmp_path, capsys):
  for command, args in (
      (server, ('--port', '0')),
      (export, ('--format', 'jax', '--out', tmp_path / 'x')),
  ):
    result = run_cli_in_process(capsys, command, '--workdir', precomputed.workdir, *args)
    assert_usage_error(result, 'precomputed', 'inpaint --first-stage-dir')
  assert not (tmp_path / 'x').exists()


@pytest.mark.slow
def test_inpaint_runs_lg_behind_the_results_given_for_each_image(precomputed, tmp_path, capsys):
  images, hole = tmp_path / 'images', rect_mask(300, 280, 50, 40, 150, 200)
  write_random_images(images, 2, seed=5, size=(300, 280))
  for path in sorted(images.iterdir()):
    save_image(tmp_path / 'masks' / path.name, hole)
    save_image(tmp_path / 'results' / path.name, image_io.load_image(path) // 3)
  common = (
      *('--workdir', precomputed.workdir, '--image-dir', images, '--mask-dir', tmp_path / 'masks'),
  )
  missing = run_cli_in_process(capsys, inpaint, *common, '--output-dir', tmp_path / 'out')
  assert_usage_error(missing, '--first-stage-dir')
  (tmp_path / 'results' / sorted(images.iterdir())[1].name).unlink()
  with_results = (
      *common,
      '--output-dir',
      tmp_path / 'out',
      '--first-stage-dir',
      tmp_path / 'results',
  )
  one_missing = run_cli_in_process(capsys, inpaint, *with_results)
  assert_usage_error(one_missing, 'first-stage result', str(tmp_path / 'results'))
  assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())
  path = sorted(images.iterdir())[1]
  save_image(tmp_path / 'results' / path.name, image_io.load_image(path) // 3)
  with plain_programs():
    result = run_cli_in_process(capsys, inpaint, *with_results)
  assert result.returncode == 0, result.stderr
  for path in sorted(images.iterdir()):
    filled = image_io.load_image(tmp_path / 'out' / f'{path.stem}.png')
    original = image_io.load_image(path)
    np.testing.assert_array_equal(filled[hole == 0], original[hole == 0])


def assert_refused_before_writing(tmp_path, capsys, args: Sequence[str], *fragments: str) -> None:
  """Training with `args` (on the session's 8 devices) is refused in one line naming every
  fragment, exit 2, and leaves its workdir empty."""
  workdir = tmp_path / 'workdir'
  result = run_main_in_process(
      capsys,
      tmp_path,
      *XLG_ARGS,
      '--config.train.batch_size=8',  # the session's 8 devices
      *args,
      f'--workdir={workdir}',
  )
  assert_usage_error(result, *fragments)
  assert not workdir.exists() or not list(workdir.iterdir())


@pytest.mark.parametrize(
    'first_stage, message',
    [
        ('toy_first_stage:FourChannels', 'returned shape (1, 256, 256, 4)'),
        ('no_such_module_anywhere:Net', 'importing no_such_module_anywhere failed'),
        ('toy_first_stage:not_a_module', 'returned str, not a flax.linen Module'),
        ('toy_first_stage', 'is not a module:callable name'),
    ],
)
def test_a_bad_first_stage_is_one_line_and_writes_nothing(tmp_path, capsys, first_stage, message):
  assert_refused_before_writing(
      tmp_path, capsys, [f'--config.model.first_stage={first_stage}'], message
  )


def test_a_results_folder_missing_a_file_is_one_line_and_writes_nothing(tmp_path, capsys):
  write_triples(tmp_path)
  (tmp_path / 'results' / '2.png').unlink()
  assert_refused_before_writing(
      tmp_path, capsys, precomputed_args(tmp_path), str(tmp_path / 'results' / '2'), 'for the image'
  )


def test_frozen_weights_of_another_module_are_one_line(tmp_path, capsys):
  variables = {'params': {'Conv_0': {'kernel': np.zeros((3, 3, 4, 5), np.float32)}}}
  (tmp_path / 'w.msgpack').write_bytes(flax.serialization.msgpack_serialize(variables))
  frozen = [
      *JOINT,
      '--config.model.first_stage_trainable=False',
      f'--config.model.first_stage_weights={tmp_path / "w.msgpack"}',
  ]
  assert_refused_before_writing(tmp_path, capsys, frozen, str(tmp_path / 'w.msgpack'), 'missing')


def test_the_published_variants_are_unchanged_by_the_plug_in():
  """No first stage named: the generator is built as before (one parameter tree for every
  variant, which the fixture and old-checkpoint tests check in full)."""
  for variant in ('lgnet', 'C+L', 'lgnet_share'):
    config = tiny_config(f'--config.model.variant={variant}')
    generator, discriminator = train_state_lib.build_networks(config)
    assert generator.first_stage == first_stage_lib.BUILT_IN and discriminator is not None
    assert train_state_lib.frozen_stages(config.model) == ()


def test_first_stage_settings_read_back_equal_those_of_the_config_flags():
  """A workdir's config.json (written before these settings existed) against the config as
  `--config=` flags parse it: the empty first_stage_args compare equal, so resuming works."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config file', flag_values=values)
  values(['prog', f'--config={pathlib.Path(workdir_lib.DEFAULT_CONFIG_FILE).parent / "demo.py"}'])
  there = workdir_lib.load_config(pathlib.Path(__file__).parent / 'fixtures' / 'workdir_v0_1')
  differences = workdir_lib.model_differences(there, values.config)
  assert differences and not [d for d in differences if 'first_stage' in d], differences
