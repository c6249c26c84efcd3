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
from jax.sharding import NamedSharding, PartitionSpec

from lgnet_jax import bench, losses, train_step
from lgnet_jax import train_state as train_state_lib
from lgnet_jax.inference import Inpainter
from lgnet_jax.models import build_generator, vgg16
from conftest import count_compiles, tiny_config

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


def test_bfloat16_train_step_is_finite_and_keeps_float32_params(fast_compile):
  """One step of the tiny configuration in bfloat16 (the VGG16 terms are checked in bfloat16
  below, at a size that compiles quickly)."""
  config = tiny_config('--config.model.dtype=bfloat16', '--config.train.batch_size=1')
  mesh = train_step.create_mesh(jax.devices()[:1])
  replicated = NamedSharding(mesh, PartitionSpec())
  with bench.quick_init():  # the same programs; only the random init compiles faster
    state = jax.jit(functools.partial(train_state_lib.create_train_state, config))(jax.random.PRNGKey(0))
  step_fn = train_step.compile_train_step(config, mesh, jax.tree.map(lambda _: replicated, state))
  batch = bench.random_inputs(1, config.model.image_size)
  state, terms = step_fn(state, train_step.make_global_batch(batch, NamedSharding(mesh, PartitionSpec('data'))),
                         None)
  values = {k: float(v) for k, v in jax.device_get(terms).items()}
  assert all(np.isfinite(v) for v in values.values()), values
  assert values['l1_hole_3'] > 0 and values['total_g'] > 0 and values['gan_d'] > 0, values
  for tree in (state.g_params, state.d_params, state.g_batch_stats):
    assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
  assert int(state.step) == 1


def test_bfloat16_vgg_terms_follow_float32(fast_compile):
  """The perceptual and style terms with VGG16 computing in bfloat16 (as the training step
  builds it for model.dtype='bfloat16'): float32 results within bfloat16's precision, finite
  gradients. 32x32 images: the same layers and loss code as at 256."""
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  images = jax.random.uniform(keys[0], (2, 32, 32, 3), minval=-1, maxval=1)
  masks = (jax.random.uniform(keys[1], (2, 32, 32, 1)) > 0.6).astype(jnp.float32)
  outputs = {f'{kind}{s}': jax.random.uniform(keys[s + 1], images.shape, minval=-1, maxval=1)
             for s in (1, 2, 3) for kind in ('out', 'merged')}
  loss_config = ml_collections.ConfigDict({
      'lambda_valid': 1.0, 'lambda_hole': 6.0, 'lambda_tv': 0.1, 'lambda_perceptual': 0.05,
      'lambda_style': 120.0, 'lambda_gan': 0.1})
  vgg_params = vgg16.random_params(0)

  def terms_fn(dtype):
    vgg = vgg16.VGG16Features(dtype=dtype)
    vgg_fn = lambda x: vgg.apply({'params': vgg_params}, x)
    def total(outs):
      terms = losses.generator_loss_terms(outs, images, masks, vgg_fn, None, loss_config)
      return terms['total_g'], terms
    return jax.jit(jax.value_and_grad(total, has_aux=True))(outputs)

  (_, full), _ = terms_fn(jnp.float32)
  (_, half), grads = terms_fn(jnp.bfloat16)
  for name in ('perceptual_2', 'perceptual_3', 'style_2', 'style_3', 'total_g'):
    assert half[name].dtype == jnp.float32, name
    assert float(full[name]) > 0, name
    np.testing.assert_allclose(float(half[name]), float(full[name]), rtol=0.05, err_msg=name)
  assert any(float(half[n]) != float(full[n]) for n in ('perceptual_3', 'style_3')), 'bfloat16 not in effect'
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert np.abs(np.asarray(grads['out3'])).max() > 0


def test_remat_gives_the_same_outputs_and_gradients(fast_compile):
  """`model.remat` recomputes the stages in the backward pass; results do not change."""
  config = ml_collections.ConfigDict({'variant': 'C+L', 'ngf': 4, 'ngf_local': 4})  # U-Net and G2
  plain = build_generator(config)
  config.remat = True
  remat = build_generator(config)
  images = jax.random.uniform(jax.random.PRNGKey(0), (1, 256, 256, 3), minval=-1, maxval=1)
  masks = (jax.random.uniform(jax.random.PRNGKey(1), (1, 256, 256, 1)) > 0.7).astype(jnp.float32)
  init = functools.partial(plain.init, train=False)
  variables = jax.jit(init)(jax.random.PRNGKey(2), images, masks)
  assert jax.tree.structure(jax.eval_shape(functools.partial(remat.init, train=False),
                                           jax.random.PRNGKey(2), images, masks)) == \
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

