"""The networks compute what the authors' implementation computes (ngf-16 fixture)."""

import functools

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


@pytest.mark.slow
def test_train_mode_matches_reference(inpainter, official_io):
  variables = inpainter.variables
  apply = functools.partial(inpainter.generator.apply, train=True, mutable=['batch_stats'])
  outputs, updates = jax.jit(apply)(variables, official_io['images'], official_io['masks'])
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
  apply = functools.partial(discriminator.apply, update_stats=False)
  scores = jax.jit(apply)(variables, official_io['eval_merged1'])
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
