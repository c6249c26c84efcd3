"""The networks compute what the authors' implementation computes (ngf-16 fixture)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lgnet_jax.configs import default
from lgnet_jax.weights import official, pth
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.serving.inference import Inpainter
from lgnet_jax.models import Discriminator, build_generator
from lgnet_jax.models import attention as attention_lib
from lgnet_jax.models import layers
from lgnet_jax.models.discriminator import SPECTRAL, SpectralNormConv
from helpers import OFFICIAL_FIXTURE, model_config

STAGE_KEYS = ['out1', 'merged1', 'out2', 'merged2', 'out3', 'merged3']
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def inpainter(official_workdir) -> Inpainter:
  return Inpainter.from_workdir(official_workdir)


def test_eval_mode_matches_reference(inpainter, official_io):
  outputs = inpainter.stages(official_io['images'], official_io['masks'])
  assert sorted(outputs) == sorted(STAGE_KEYS)
  for key in STAGE_KEYS:
    error = np.abs(np.asarray(outputs[key]) - official_io[f'eval_{key}']).max()
    assert error < TOLERANCE, (key, error)
  final = inpainter(official_io['images'], official_io['masks'])
  np.testing.assert_array_equal(np.asarray(final), np.asarray(outputs['merged3']))


def test_train_mode_matches_reference(inpainter, official_io):
  variables = inpainter.variables
  outputs, updates = inpainter.generator.apply(
      variables, official_io['images'], official_io['masks'], train=True, mutable=['batch_stats']
  )
  for key in STAGE_KEYS:
    error = np.abs(np.asarray(outputs[key]) - official_io[f'train_{key}']).max()
    assert error < TOLERANCE, (key, error)
  # Training mode moves the running statistics (PyTorch momentum 0.1).
  before = variables['batch_stats']['G2']['stem_bn']['mean']
  after = updates['batch_stats']['G2']['stem_bn']['mean']
  assert not np.allclose(before, after)


def test_discriminator_matches_reference(official_io):
  discriminator = Discriminator()
  abstract = jax.eval_shape(
      lambda: discriminator.init(
          jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 3)), update_stats=False
      )
  )
  variables = official.torch_to_flax(
      pth.load_state_dict(OFFICIAL_FIXTURE / 'latest_net_D.pth'),
      official.discriminator_entries(),
      abstract,
      'D',
  )
  scores = discriminator.apply(variables, official_io['eval_merged1'], update_stats=False)
  assert scores.shape == (2, 27, 27, 1)
  np.testing.assert_allclose(np.asarray(scores), official_io['eval_d_merged1'], atol=TOLERANCE)


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize(
    'variant, expected',
    [('lgnet', 115_002_185), ('lgnet_share', 60_587_206), ('lgnet_light', 67_095_337)],
)
def test_full_width_parameter_counts(variant, expected):
  config = model_config(variant=variant)
  generator = build_generator(config)
  abstract = jax.eval_shape(
      lambda: generator.init(
          jax.random.PRNGKey(0),
          jnp.zeros((1, 256, 256, 3)),
          jnp.zeros((1, 256, 256, 1)),
          train=False,
      )
  )
  assert _count(abstract['params']) == expected
  if variant == 'lgnet':
    per_stage = {name: _count(tree) for name, tree in abstract['params'].items()}
    assert per_stage == {'G1': 54_414_979, 'G2': 5_483_203, 'G3': 55_104_003}
  if variant == 'lgnet_share':
    assert sorted(abstract['params']) == ['G2', 'G3']


def test_discriminator_parameter_count_and_patch_size():
  discriminator = Discriminator()
  abstract = jax.eval_shape(
      lambda: discriminator.init(
          jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 3)), update_stats=False
      )
  )
  assert _count(abstract['params']) == 4_318_401
  out = jax.eval_shape(
      lambda v: discriminator.apply(v, jnp.zeros((2, 256, 256, 3)), update_stats=False), abstract
  )
  assert out.shape == (2, 27, 27, 1)


@pytest.mark.parametrize(
    'variant, stages',
    [('C', 1), ('C+L', 2), ('C+G_att', 2), ('C+G+G_att', 3), ('C+L+G', 3), ('C+L+G_att', 3)],
)
def test_ablation_variants(variant, stages):
  config = model_config(variant=variant, ngf=8, ngf_local=8)
  generator = build_generator(config)
  images, masks = jnp.zeros((1, 256, 256, 3)), jnp.zeros((1, 256, 256, 1))
  abstract = jax.eval_shape(
      lambda: generator.init(jax.random.PRNGKey(0), images, masks, train=False)
  )
  assert sorted(abstract['params']) == [f'G{s + 1}' for s in range(stages)]
  has_attention = ['attention_16' in tree for tree in abstract['params'].values()]
  assert has_attention == [kind == 'unet_att' for kind in generator.stages]
  outputs = jax.eval_shape(lambda v: generator.apply(v, images, masks, train=False), abstract)
  assert sorted(outputs) == sorted(f'{k}{s + 1}' for s in range(stages) for k in ('out', 'merged'))


def test_unknown_variant_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown model.variant 'lgnet_xl'"):
    build_generator(ml_collections.ConfigDict({'variant': 'lgnet_xl'}))


def _reference_attention(features: np.ndarray) -> np.ndarray:
  """The reference algorithm literally, one sample at a time, NCHW-style, in float64."""
  out = []
  for f in features.astype(np.float64):  # (H, W, C)
    height, width, channels = f.shape
    flat = f.reshape(-1, channels)  # (N, C)
    keys = (flat + 1e-7) / np.linalg.norm(flat + 1e-7, axis=1, keepdims=True)
    scores = (flat @ keys.T).reshape(height, width, -1)  # query map per key
    padded = np.pad(scores, ((1, 1), (1, 1), (0, 0)))
    pooled = (
        sum(padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)) / 9 * 9
    )
    pooled = pooled.reshape(height * width, -1)
    weights = np.exp(pooled - pooled.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    out.append((weights @ keys).reshape(height, width, channels))
  return np.stack(out)


def test_attention_is_batched_and_matches_reference_algorithm():
  features = np.random.default_rng(0).normal(size=(3, 8, 8, 6)).astype(np.float32)
  expected = _reference_attention(features)
  whole = attention_lib.cosine_affinity_attention(jnp.asarray(features))
  chunked = attention_lib.cosine_affinity_attention(jnp.asarray(features), query_chunk=16)
  np.testing.assert_allclose(np.asarray(whole), expected, atol=1e-5)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-6)
  # The samples are independent: one sample alone gives its batch result.
  single = attention_lib.cosine_affinity_attention(jnp.asarray(features[1:2]))
  np.testing.assert_allclose(np.asarray(single)[0], np.asarray(whole)[1], atol=1e-6)


def test_batchnorm_uses_pytorch_statistics():
  x = np.random.default_rng(1).normal(2.0, 3.0, size=(2, 3, 5, 4)).astype(np.float32)
  bn = layers.BatchNorm()
  variables = bn.init(jax.random.PRNGKey(0), x, train=False)
  y, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  flat = x.reshape(-1, 4).astype(np.float64)
  scale = np.asarray(variables['params']['scale'])
  expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) * scale
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 4), expected, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['mean'], 0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(
      updates['batch_stats']['var'], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5
  )


def test_spectral_norm_power_iteration_matches_pytorch_definition():
  layer = SpectralNormConv(features=5, kernel=3, stride=1, padding=1)
  x = np.random.default_rng(2).normal(size=(1, 6, 6, 4)).astype(np.float32)
  variables = layer.init(jax.random.PRNGKey(3), x, update_stats=False)
  kernel = np.asarray(variables['params']['kernel'], np.float64)
  matrix = kernel.transpose(3, 2, 0, 1).reshape(5, -1)
  u = np.asarray(variables[SPECTRAL]['u'], np.float64)
  v = matrix.T @ u
  v /= np.linalg.norm(v)
  u = matrix @ v
  u /= np.linalg.norm(u)
  _, updates = layer.apply(variables, x, update_stats=True, mutable=[SPECTRAL])
  np.testing.assert_allclose(updates[SPECTRAL]['u'], u, atol=1e-5)
  np.testing.assert_allclose(updates[SPECTRAL]['v'], v, atol=1e-5)
  # Evaluation uses the stored vectors without iterating.
  frozen = {**variables, SPECTRAL: updates[SPECTRAL]}
  out = layer.apply(frozen, x, update_stats=False)
  sigma = u @ matrix @ v
  reference = jax.lax.conv_general_dilated(
      jnp.asarray(x),
      jnp.asarray(kernel / sigma, jnp.float32),
      (1, 1),
      ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  np.testing.assert_allclose(np.asarray(out), np.asarray(reference), atol=1e-5)


def test_inpainter_compiles_once_per_shape(inpainter, official_io):
  images, masks = official_io['images'], official_io['masks']
  inpainter(images, masks)
  inpainter(images + 0.0, masks)
  compiled = inpainter._forward._cache_size()
  inpainter(images[:1], masks[:1])
  assert inpainter._forward._cache_size() == compiled + 1
  inpainter(images[1:], masks[1:])
  assert inpainter._forward._cache_size() == compiled + 1


def test_inpainter_rejects_bad_shapes(inpainter):
  with pytest.raises(ValueError, match='multiples of 256'):
    inpainter(np.zeros((1, 200, 256, 3)), np.zeros((1, 200, 256, 1)))
  with pytest.raises(ValueError, match='masks must be'):
    inpainter(np.zeros((1, 256, 256, 3)), np.zeros((1, 256, 256, 3)))


def test_train_state_holds_everything():
  config = default.get_config()
  config.model.update({'variant': 'C+L', 'ngf': 8, 'ngf_local': 8})
  config.optim.update({'n_epochs': 1, 'n_epochs_decay': 1})
  state = jax.eval_shape(lambda: train_state_lib.create_train_state(config, jax.random.PRNGKey(0)))
  assert sorted(state.g_params) == ['G1', 'G2']
  assert sorted(state.d_spectral['conv1']) == ['u', 'v']
  assert state.g_batch_stats['G2']['stem_bn']['var'].shape == (8,)
  assert state.step.shape == ()


# Input shapes and about the kernel-to-input size ratio each case is given (through its output
# width): XLA's convolution both ways, XLA forward with the col2im gradient, and col2im both
# ways (as the U-Nets' inner decoder steps).
TRANSPOSED_CASES = {
    'xla': ((2, 9, 7, 5), 0.7),
    'col2im_gradient': ((1, 4, 4, 8), 3),
    'col2im': ((1, 2, 3, 8), 40),
}


@pytest.mark.parametrize('path', sorted(TRANSPOSED_CASES))
@pytest.mark.parametrize('kernel, stride, padding, output_padding', [(4, 2, 1, 0), (3, 2, 1, 1)])
def test_transposed_conv_matches_flax_and_its_gradient(
    kernel, stride, padding, output_padding, path
):
  """Same output as nn.ConvTranspose and the same gradients as XLA's autodiff of it, on each
  of the CPU's paths (chosen by the kernel-to-input size ratio)."""
  x_shape, target_ratio = TRANSPOSED_CASES[path]
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  features = math.ceil(target_ratio * x.size / (kernel * kernel * x_shape[-1]))
  ratio = kernel * kernel * features * x_shape[-1] / x.size
  lo = kernel - 1 - padding
  reference = nn.ConvTranspose(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      use_bias=True,
      padding=((lo, lo + output_padding), (lo, lo + output_padding)),
      transpose_kernel=True,
  )
  ours = layers.conv_transpose(features, kernel, stride, padding, output_padding, use_bias=True)
  params = ours.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  forward_hlo = jax.jit(ours.apply).lower(params, x).as_text()
  assert forward_hlo.count('stablehlo.convolution') == (ratio < layers.COL2IM_FORWARD_RATIO), (
      path,
      ratio,
  )
  if path == 'xla':
    np.testing.assert_array_equal(ours.apply(params, x), reference.apply(params, x))
  np.testing.assert_allclose(
      ours.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5
  )
  height, width = x_shape[1:3]
  assert ours.apply(params, x).shape == (
      x_shape[0],
      2 * height - 2 * padding + kernel - 2 + output_padding,
      2 * width - 2 * padding + kernel - 2 + output_padding,
      features,
  )

  def loss(module):
    return lambda p, v: jnp.sum(
        jnp.sin(module.apply(p, v)) * jnp.arange(features, dtype=jnp.float32)
    )

  want = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  gradient_hlo = jax.jit(jax.grad(loss(ours), argnums=(0, 1))).lower(params, x).as_text()
  expected_convolutions = (ratio < layers.COL2IM_FORWARD_RATIO) + (
      ratio < layers.COL2IM_BACKWARD_RATIO
  )
  assert gradient_hlo.count('stablehlo.convolution') == expected_convolutions, (path, ratio)
  got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  for (key, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves(got)):
    np.testing.assert_allclose(
        b,
        a,
        rtol=0,
        atol=1e-5 * max(1.0, float(jnp.abs(a).max())),
        err_msg=jax.tree_util.keystr(key),
    )


@pytest.mark.parametrize(
    'kernel, stride, x_shape, features',
    [
        (4, 2, (2, 13, 11, 6), 12),
        (5, 2, (2, 13, 11, 6), 12),
        (3, 1, (2, 13, 11, 6), 12),
        (4, 2, (1, 6, 6, 8), 24),
    ],
)
def test_im2col_convolution_and_its_gradients_match_xla(kernel, stride, x_shape, features):
  """The im2col path (strided encoder and discriminator convolutions) with its custom gradient:
  kernel gradient from the patches; input gradient from XLA's convolution, or, for a kernel
  larger than the input (last case, as the U-Nets' inner encoder steps), from the patches."""
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, x_shape[-1], features)) * 0.1
  weight_bound = w.size >= layers.COL2IM_BACKWARD_RATIO * x.size
  assert weight_bound == (x_shape[0] == 1)
  xla = lambda a, b: jax.lax.conv_general_dilated(
      a, b, (stride, stride), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  ours = lambda a, b: layers.conv2d(a, b, stride)
  assert 'convolution' not in jax.jit(ours).lower(x, w).as_text()
  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=0, atol=1e-5)
  weights = jnp.arange(features, dtype=jnp.float32)
  want = jax.grad(lambda a, b: jnp.sum(jnp.sin(xla(a, b)) * weights), argnums=(0, 1))(x, w)
  gradient = jax.grad(lambda a, b: jnp.sum(jnp.sin(ours(a, b)) * weights), argnums=(0, 1))
  assert ('convolution' in jax.jit(gradient).lower(x, w).as_text()) != weight_bound
  got = gradient(x, w)
  for a, b in zip(want, got):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(jnp.abs(a).max()))


# Each case takes one of `layers.conv2d`'s CPU paths, at or near its threshold: Winograd
# (3x3, >= 32 in and out), shifted products (wide, not 3x3), few outputs (<= 8 out, >= 32 in;
# the image heads have 3) and im2col (the rest). 11 rows give an odd output height.
@pytest.mark.parametrize(
    'channels, features, kernel',
    [(256, 256, 3), (32, 32, 3), (256, 256, 5), (64, 3, 7), (32, 8, 3), (16, 16, 3)],
)
def test_cpu_convolution_paths_match_xla(channels, features, kernel):
  """The matrix-product convolutions equal XLA's, with gradients."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 11, 10, channels))
  w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, channels, features)) * 0.05

  def xla(a, b):
    return jax.lax.conv_general_dilated(
        a, b, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )

  # The forward program compiled for the CPU takes a matrix-product path: it has no convolution.
  assert jax.default_backend() == 'cpu'
  assert 'convolution' not in jax.jit(lambda a, b: layers.conv2d(a, b, 1)).lower(x, w).as_text()
  want = xla(x, w)  # float32 sums of up to 6400 terms, in another order
  np.testing.assert_allclose(
      layers.conv2d(x, w, 1), want, rtol=0, atol=1e-5 * float(jnp.abs(want).max())
  )
  weights = jnp.arange(features, dtype=jnp.float32)
  want = jax.grad(lambda a, b: jnp.sum(jnp.sin(xla(a, b)) * weights), argnums=(0, 1))(x, w)
  got = jax.grad(lambda a, b: jnp.sum(jnp.sin(layers.conv2d(a, b, 1)) * weights), argnums=(0, 1))(
      x, w
  )
  for a, b in zip(want, got):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(jnp.abs(a).max()))
