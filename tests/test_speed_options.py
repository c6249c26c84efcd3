"""Speed options keep the results: bfloat16 compute, and one compilation per jitted step.

bfloat16: `model.dtype='bfloat16'` (params stay float32) run on the authors' ngf-16
checkpoint stays within a stated tolerance of their float32 outputs; the training step runs in
bfloat16 with finite loss terms and float32 params.

Compilations are counted with conftest's `count_compiles` (JAX's backend-compile event, by
function name), checked here against a known case; the training step's single compilation is
checked in test_train, evaluation's in test_evaluate.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lgnet_jax.bench import timing
from lgnet_jax.training import losses, step as train_step
from lgnet_jax.runtime import sharding
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.serving.inference import Inpainter
from lgnet_jax.models import build_generator, vgg16
from helpers import THREE_STAGES, count_compiles, model_config, tiny_config

STAGE_KEYS = ['out1', 'merged1', 'out2', 'merged2', 'out3', 'merged3']
# Measured (CPU, XLA 0.10.2) bfloat16 vs the reference float32 outputs, max / mean abs error:
# out1 4.4e-4 / 5.3e-5, out2 4.8e-4 / 9.8e-5, out3 3.7e-4 / 5.1e-5; merged1..3 max 4.5e-4,
# mean <= 1.3e-5 (only the 12.5% hole pixels differ). The reference outputs' std is about
# 0.02-0.04, so these are 0.2-0.5% relative errors. float32 gives at most 7.5e-8.
BF16_MAX_ABS = 1e-3  # about 2x the largest measured max
BF16_MEAN_ABS = 2e-4  # about 2x the largest measured mean


def test_compile_counter_sees_every_compilation():
  """The counting method itself: a new input shape is one more compilation, a repeat is none."""
  fn = jax.jit(lambda x: jnp.tanh(x) * 2.0)
  small, other, large = jnp.ones((2, 3)), jnp.zeros((2, 3)), jnp.ones((3, 3))
  with count_compiles() as names:
    jax.block_until_ready([fn(small), fn(other), fn(large)])
  assert [name for name in names if 'lambda' in name] == ['jit(<lambda>)', 'jit(<lambda>)']


@pytest.mark.slow
def test_bfloat16_eval_outputs_match_reference_within_tolerance(official_workdir, official_io):
  inpainter = Inpainter.from_workdir(official_workdir)
  model = ml_collections.ConfigDict(inpainter.config.model.to_dict())
  model.dtype = 'bfloat16'
  generator = build_generator(model)
  outputs = jax.jit(functools.partial(generator.apply, train=False))(
      inpainter.variables, official_io['images'], official_io['masks']
  )
  assert jax.tree.leaves(inpainter.variables)[0].dtype == jnp.float32
  for key in STAGE_KEYS:
    assert outputs[key].dtype == jnp.float32  # outputs are upcast
    error = np.abs(np.asarray(outputs[key], np.float64) - official_io[f'eval_{key}'])
    assert error.max() < BF16_MAX_ABS and error.mean() < BF16_MEAN_ABS, (
        key,
        error.max(),
        error.mean(),
    )
    if key.startswith('out'):
      assert error.max() > 1e-5, (key, 'bfloat16 compute seems not to be in effect')


@pytest.mark.slow
def test_bfloat16_train_step_is_finite_and_keeps_float32_params(plain_compile):
  """One step of the tiny configuration in bfloat16 (its VGG16 in the next test)."""
  config = tiny_config(THREE_STAGES, '--config.model.dtype=bfloat16', '--config.train.batch_size=1')
  mesh = sharding.create_mesh(jax.devices()[:1])
  replicated = NamedSharding(mesh, PartitionSpec())
  state = jax.jit(
      functools.partial(train_state_lib.create_train_state, config), out_shardings=replicated
  )(jax.random.PRNGKey(0))
  step_fn = train_step.compile_train_step(config, mesh)
  batch = timing.random_inputs(1, config.model.image_size)
  state, terms = step_fn(
      state, sharding.make_global_batch(batch, NamedSharding(mesh, PartitionSpec('data'))), None
  )
  values = {k: float(v) for k, v in jax.device_get(terms).items()}
  assert all(np.isfinite(v) for v in values.values()), values
  assert values['l1_hole_3'] > 0 and values['total_g'] > 0 and values['gan_d'] > 0, values
  for tree in (state.g_params, state.d_params, state.g_batch_stats):
    assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
  assert int(state.step) == 1


def vgg_terms(dtype, params, outputs: jax.Array, images: jax.Array):
  """Perceptual and style terms of `outputs` against `images` through a VGG16 computing in
  `dtype`, and the gradient of their sum w.r.t. `outputs`."""
  vgg = vgg16.VGG16Features(dtype=dtype)

  def terms(x):
    fake, real = vgg.apply({'params': params}, x), vgg.apply({'params': params}, images)
    assert {f.dtype for f in fake.values()} == {jnp.dtype(dtype)}
    perceptual, style = losses.perceptual(fake, real), losses.style(fake, real)
    return (perceptual + style).astype(jnp.float32), (perceptual, style)

  (_, (perceptual, style)), grad = jax.value_and_grad(terms, has_aux=True)(outputs)
  return perceptual, style, grad


def test_bfloat16_vgg16_perceptual_and_style_terms(plain_compile):
  """The perceptual and style terms through a bfloat16 VGG16 (float32 params, random weights):
  bfloat16 features; finite, positive terms and gradients."""
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 32, 32, 3), minval=-1, maxval=1)
  outputs = images + 0.3 * jax.random.normal(jax.random.PRNGKey(1), images.shape)
  perceptual, style, grad = jax.jit(functools.partial(vgg_terms, jnp.bfloat16))(
      vgg16.random_params(1), outputs, images
  )
  assert float(perceptual) > 0 and float(style) > 0
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0


def test_remat_gives_the_same_outputs_and_gradients(plain_compile):
  """`model.remat` recomputes the stages in the backward pass; results do not change."""
  config = model_config(variant='C', ngf=4)  # the coarse U-Net alone
  plain = build_generator(config)
  config.remat = True
  remat = build_generator(config)
  images = jax.random.uniform(jax.random.PRNGKey(0), (1, 256, 256, 3), minval=-1, maxval=1)
  masks = (jax.random.uniform(jax.random.PRNGKey(1), (1, 256, 256, 1)) > 0.7).astype(jnp.float32)
  init = functools.partial(plain.init, train=False)
  variables = jax.jit(init)(jax.random.PRNGKey(2), images, masks)
  assert jax.tree.structure(
      jax.eval_shape(
          functools.partial(remat.init, train=False), jax.random.PRNGKey(2), images, masks
      )
  ) == jax.tree.structure(variables)

  def loss(module):
    def fn(params):
      outputs, _ = module.apply(
          {**variables, 'params': params}, images, masks, train=True, mutable=['batch_stats']
      )
      return jnp.mean(jnp.abs(outputs['merged1'] - images))

    return jax.jit(jax.value_and_grad(fn))

  (value, grads), (value_remat, grads_remat) = (
      loss(m)(variables['params']) for m in (plain, remat)
  )
  np.testing.assert_allclose(value_remat, value, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_remat)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
