"""Speed options keep the results: bfloat16 compute, and one compilation per jitted step.

bfloat16: `model.dtype='bfloat16'` (params stay float32) run on the authors' ngf-16
checkpoint stays within a stated tolerance of their float32 outputs; the training step runs in
bfloat16 with finite loss terms and float32 params.

Compilations: the training step compiles once over a training loop's steps, and evaluation
compiles its step once over every batch of every hole-ratio bucket, the padded last batches
included. Backend compilations are counted by JAX's monitoring event, by function name.
"""

import contextlib
import functools
import json
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lgnet_jax import bench, train_step
from lgnet_jax import train_state as train_state_lib
from lgnet_jax.inference import Inpainter
from lgnet_jax.models import build_generator
from conftest import FAST_COMPILE, run_module, write_random_images

STAGE_KEYS = ['out1', 'merged1', 'out2', 'merged2', 'out3', 'merged3']
# Measured (CPU, XLA 0.10.2) bfloat16 vs the reference float32 outputs, max / mean abs error:
# out1 4.4e-4 / 5.3e-5, out2 4.8e-4 / 9.8e-5, out3 3.7e-4 / 5.1e-5; merged1..3 max 4.5e-4,
# mean <= 1.3e-5 (only the 12.5% hole pixels differ). The reference outputs' std is about
# 0.02-0.04, so these are 0.2-0.5% relative errors. float32 gives at most 7.5e-8.
BF16_MAX_ABS = 1e-3  # about 2x the largest measured max
BF16_MEAN_ABS = 2e-4  # about 2x the largest measured mean
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'  # jax._src.dispatch


@contextlib.contextmanager
def count_compiles():
  """Collects the function name of every backend (XLA) compilation inside the block."""
  names: list[str] = []

  def listener(event: str, duration: float, **kwargs) -> None:  # pylint: disable=unused-argument
    if event == BACKEND_COMPILE_EVENT:
      names.append(str(kwargs.get('fun_name')))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_compile_counter_sees_every_compilation():
  """The counting method itself: a new input shape is one more compilation, a repeat is none."""
  fn = jax.jit(lambda x: jnp.tanh(x) * 2.0)
  small, other, large = jnp.ones((2, 3)), jnp.zeros((2, 3)), jnp.ones((3, 3))
  with count_compiles() as names:
    jax.block_until_ready([fn(small), fn(other), fn(large)])
  assert [name for name in names if 'lambda' in name] == ['jit(<lambda>)', 'jit(<lambda>)']


# --- bfloat16 -----------------------------------------------------------------------------------


def test_bfloat16_eval_outputs_match_reference_within_tolerance(official_workdir, official_io):
  inpainter = Inpainter.from_workdir(official_workdir)
  model = ml_collections.ConfigDict(inpainter.config.model.to_dict())
  model.dtype = 'bfloat16'
  generator = build_generator(model)
  outputs = jax.jit(functools.partial(generator.apply, train=False))(
      inpainter.variables, official_io['images'], official_io['masks'])
  assert jax.tree.leaves(inpainter.variables)[0].dtype == jnp.float32
  for key in STAGE_KEYS:
    assert outputs[key].dtype == jnp.float32  # outputs are upcast
    error = np.abs(np.asarray(outputs[key], np.float64) - official_io[f'eval_{key}'])
    assert error.max() < BF16_MAX_ABS and error.mean() < BF16_MEAN_ABS, (key, error.max(), error.mean())
    if key.startswith('out'):
      assert error.max() > 1e-5, (key, 'bfloat16 compute seems not to be in effect')


def _tiny_config(dtype: str = 'float32', vgg: bool = True) -> ml_collections.ConfigDict:
  from configs import demo  # pylint: disable=import-outside-toplevel
  config = demo.get_config()
  config.model.ngf, config.model.ngf_local = 4, 4
  config.model.dtype = dtype
  config.train.batch_size = 2
  # The demo turns the VGG terms off; these tests turn them back on at the paper's weights.
  config.loss.lambda_perceptual, config.loss.lambda_style = (0.05, 120.0) if vgg else (0.0, 0.0)
  return config


def _training_setup(config: ml_collections.ConfigDict, num_devices: int = 2):
  """As `train.train_and_evaluate` sets up: state born sharded, VGG replicated, jitted step."""
  mesh = train_step.create_mesh(jax.devices()[:num_devices])
  replicated = NamedSharding(mesh, PartitionSpec())
  create = functools.partial(train_state_lib.create_train_state, config)
  with bench.quick_init():  # the same programs; only the random init compiles faster
    state = jax.jit(create, out_shardings=replicated)(jax.random.PRNGKey(config.seed))
    vgg_params = jax.device_put(bench.random_vgg_params(config), replicated)
  # From the state itself: its static optimizer fields differ on every trace of `create`.
  state_shardings = jax.tree.map(lambda _: replicated, state)
  step_fn = train_step.compile_train_step(config, mesh, state_shardings)
  data_sharding = NamedSharding(mesh, PartitionSpec(train_step.DATA_AXIS))

  def global_batch(seed: int) -> dict:
    local = bench.random_inputs(config.train.batch_size, config.model.image_size, seed=seed)
    return train_step.make_global_batch(local, data_sharding)

  return state, vgg_params, step_fn, global_batch


def test_bfloat16_train_step_is_finite_and_keeps_float32_params(fast_compile):
  config = _tiny_config('bfloat16')
  state, vgg_params, step_fn, global_batch = _training_setup(config)
  state, terms = step_fn(state, global_batch(0), vgg_params)
  values = {k: float(v) for k, v in jax.device_get(terms).items()}
  assert all(np.isfinite(v) for v in values.values()), values
  assert values['perceptual_3'] > 0 and values['style_3'] > 0 and values['total_g'] > 0, values
  for tree in (state.g_params, state.d_params, state.g_batch_stats):
    assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
  assert int(state.step) == 1


# --- compilations ---------------------------------------------------------------------------------


def test_train_step_compiles_once(fast_compile):
  """Three steps of the training loop's jitted step: one compilation, none after the first step."""
  state, vgg_params, step_fn, global_batch = _training_setup(_tiny_config(vgg=False))
  with count_compiles() as names:
    state, terms = step_fn(state, global_batch(0), vgg_params)
    jax.device_get(terms)
    first = list(names)
    for step in (1, 2):
      state, terms = step_fn(state, global_batch(step), vgg_params)
      assert all(np.isfinite(v) for v in jax.device_get(terms).values())
  assert first.count('jit(train_step)') == 1, first
  assert names == first, f'compiled again after the first step: {names[len(first):]}'
  assert int(state.step) == 3


def evaluation_compiles(workdir: str, test_dir: str) -> list[str]:
  """Runs `evaluate.evaluate` (3 images, batch 2: a full and a padded batch per bucket) and
  returns the names of every compilation during it."""
  from configs import paris_streetview  # pylint: disable=import-outside-toplevel
  from lgnet_jax import evaluate  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_enable_compilation_cache', False)  # every compilation must happen here
  config = paris_streetview.get_config()
  config.data.test_dir = test_dir
  config.data.test_masks_per_bucket = 2
  config.eval.batch_size = 2
  config.eval.num_samples = 0
  with count_compiles() as names:
    evaluate.evaluate(config, workdir)
  return names


def test_evaluation_compiles_its_step_once(tmp_path, official_workdir):
  """Twelve eval steps (6 buckets x [full, padded] batches) on one device: one compilation."""
  workdir = tmp_path / 'workdir'
  shutil.copytree(official_workdir, workdir)
  test_dir = tmp_path / 'test'
  write_random_images(test_dir, 3)
  # A subprocess with one CPU device, so that batch 2 is allowed (the tests run with 8).
  result = run_module('test_speed_options', 'evaluation-compiles', workdir, test_dir,
                      env=FAST_COMPILE, check=True)
  names = json.loads(result.stdout.strip().splitlines()[-1])
  assert names.count('jit(eval_step)') == 1, names
  assert (workdir / 'eval' / 'step_0' / 'results.json').exists()


def test_remat_gives_the_same_outputs_and_gradients(fast_compile):
  """`model.remat` recomputes the stages in the backward pass; results do not change."""
  config = ml_collections.ConfigDict({'variant': 'C+L', 'ngf': 4, 'ngf_local': 4})  # U-Net and G2
  plain = build_generator(config)
  config.remat = True
  remat = build_generator(config)
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 256, 256, 3), minval=-1, maxval=1)
  masks = (jax.random.uniform(jax.random.PRNGKey(1), (2, 256, 256, 1)) > 0.7).astype(jnp.float32)
  variables = plain.init(jax.random.PRNGKey(2), images, masks, train=False)
  assert jax.tree.structure(remat.init(jax.random.PRNGKey(2), images, masks, train=False)) == \
      jax.tree.structure(variables)

  def loss(module):
    def fn(params):
      outputs, _ = module.apply({**variables, 'params': params}, images, masks, train=True,
                                mutable=['batch_stats'])
      return sum(jnp.mean(jnp.abs(outputs[f'merged{s}'] - images)) for s in (1, 2))
    return jax.jit(jax.value_and_grad(fn))

  (value, grads), (value_remat, grads_remat) = (loss(m)(variables['params']) for m in (plain, remat))
  np.testing.assert_allclose(value_remat, value, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_remat)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


if __name__ == '__main__':
  if sys.argv[1:2] == ['evaluation-compiles']:
    print(json.dumps(evaluation_compiles(*sys.argv[2:4])))
  else:
    sys.exit('usage: python -m test_speed_options evaluation-compiles WORKDIR TEST_DIR')
