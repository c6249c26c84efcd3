"""The convolution kernels (lgnet_jax.ops): each CPU path computes XLA's convolution and its
gradients, and `conv.xla_convolutions()` traces XLA's plain convolutions instead."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgnet_jax.models import layers
from lgnet_jax.ops import conv, conv_cpu


def xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def weighted_sin_gradient(f, features: int):
  """The gradient of sum(sin(f(x, w)) * feature index) in (x, w): every output matters."""
  weights = jnp.arange(features, dtype=jnp.float32)
  return jax.grad(lambda a, b: jnp.sum(jnp.sin(f(a, b)) * weights), argnums=(0, 1))


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
  params = jax.jit(ours.init)(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.PRNGKey(2), p.shape), params)
  # Each function jitted, as the networks run it (eager mode compiles every operation apart).
  apply, reference_apply = jax.jit(ours.apply), jax.jit(reference.apply)
  forward_hlo = apply.lower(params, x).as_text()
  assert forward_hlo.count('stablehlo.convolution') == (ratio < conv_cpu.COL2IM_FORWARD_RATIO), (
      path,
      ratio,
  )
  output, expected = apply(params, x), reference_apply(params, x)
  if path == 'xla':
    np.testing.assert_array_equal(output, expected)
  np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)
  height, width = x_shape[1:3]
  assert output.shape == (
      x_shape[0],
      2 * height - 2 * padding + kernel - 2 + output_padding,
      2 * width - 2 * padding + kernel - 2 + output_padding,
      features,
  )

  def loss(module):
    return lambda p, v: jnp.sum(
        jnp.sin(module.apply(p, v)) * jnp.arange(features, dtype=jnp.float32)
    )

  want = jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(params, x)
  gradient = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))
  gradient_hlo = gradient.lower(params, x).as_text()
  expected_convolutions = (ratio < conv_cpu.COL2IM_FORWARD_RATIO) + (
      ratio < conv_cpu.COL2IM_BACKWARD_RATIO
  )
  assert gradient_hlo.count('stablehlo.convolution') == expected_convolutions, (path, ratio)
  got = gradient(params, x)
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
        (7, 1, (2, 20, 19, 4), 16),
        (3, 1, (2, 13, 11, 3), 12),
    ],
)
def test_im2col_convolution_and_its_gradients_match_xla(kernel, stride, x_shape, features):
  """The im2col path (strided encoder and discriminator convolutions) with its custom gradient:
  kernel gradient from the patches; input gradient from XLA's convolution, or from the patches
  for a kernel larger than the input (batch 1 here, as the U-Nets' inner encoder steps) and
  for stride 1 with a few input channels (the last two cases, as the stems and VGG16's
  conv1_1)."""
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, x_shape[-1], features)) * 0.1
  weight_bound = w.size >= conv_cpu.COL2IM_BACKWARD_RATIO * x.size
  assert weight_bound == (x_shape[0] == 1)
  few_inputs = stride == 1 and x_shape[-1] <= conv_cpu.FEW_INPUT_CHANNELS
  ours = jax.jit(lambda a, b: conv.conv2d(a, b, stride))
  assert 'convolution' not in ours.lower(x, w).as_text()
  np.testing.assert_allclose(ours(x, w), xla(x, w, stride), rtol=0, atol=1e-5)
  want = jax.jit(weighted_sin_gradient(lambda a, b: xla(a, b, stride), features))(x, w)
  gradient = jax.jit(weighted_sin_gradient(ours, features))
  assert ('convolution' in gradient.lower(x, w).as_text()) != (weight_bound or few_inputs)
  got = gradient(x, w)
  for a, b in zip(want, got):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(jnp.abs(a).max()))


# Each case takes one of `conv.conv2d`'s CPU paths, at or near its threshold: Winograd
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

  # The forward program compiled for the CPU takes a matrix-product path: it has no convolution.
  assert jax.default_backend() == 'cpu'
  forward = jax.jit(lambda a, b: conv.conv2d(a, b, 1))  # jitted, as the networks run it
  assert 'convolution' not in forward.lower(x, w).as_text()
  want = xla(x, w, 1)  # float32 sums of up to 6400 terms, in another order
  np.testing.assert_allclose(forward(x, w), want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))
  want = jax.jit(weighted_sin_gradient(lambda a, b: xla(a, b, 1), features))(x, w)
  got = jax.jit(weighted_sin_gradient(lambda a, b: conv.conv2d(a, b, 1), features))(x, w)
  for a, b in zip(want, got):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(jnp.abs(a).max()))


# One case per CPU path: Winograd, im2col (strided), few outputs, col2im transposed (kernel 40x
# its input), XLA's transposed (kernel smaller than its input).
SWITCH_CASES = {
    'winograd': ('conv', (2, 10, 9, 32), (3, 3, 32, 32)),
    'im2col': ('conv', (2, 13, 11, 6), (4, 4, 6, 12)),
    'few_outputs': ('conv', (1, 12, 12, 32), (7, 7, 32, 3)),
    'col2im': ('transposed', (1, 2, 3, 8), (4, 4, 60, 8)),
    'xla_transposed': ('transposed', (2, 9, 7, 5), (4, 4, 3, 5)),
}


@pytest.mark.parametrize('case', sorted(SWITCH_CASES))
def test_xla_convolutions_switch(case):
  """Inside `xla_convolutions()` the program has no platform choice and the CPU program runs
  XLA's convolutions (forward, and in the gradient the transposed convolution's input
  gradient), with the default path's values; outside, the CPU path is back, even for the
  same jitted function (the switch is part of jit's cache key)."""
  kind, x_shape, w_shape = SWITCH_CASES[case]
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  w = jax.random.normal(jax.random.PRNGKey(1), w_shape) * 0.1
  # XLA's convolutions in the gradient program: the forward pass's, then the input gradient's
  # and (for conv2d) the kernel gradient's; a transposed convolution's kernel gradient is
  # always matrix products.
  if kind == 'conv':
    f = lambda a, b: conv.conv2d(a, b, 2 if w_shape[0] == 4 else 1)
    xla_count = {'forward': 1, 'gradient': 3}
  else:
    f = lambda a, b: conv.transposed_conv(a, b, 2, 1, 0)
    xla_count = {'forward': 1, 'gradient': 2}
  gradient = weighted_sin_gradient(f, w_shape[-1] if kind == 'conv' else w_shape[-2])
  programs = {'forward': jax.jit(f), 'gradient': jax.jit(gradient)}

  def convolutions() -> dict[str, int]:
    return {
        name: program.lower(x, w).as_text().count('stablehlo.convolution')
        for name, program in programs.items()
    }

  default = convolutions()
  default_values = [np.asarray(v) for v in (programs['forward'](x, w), *programs['gradient'](x, w))]
  assert 'platform_index' in str(jax.make_jaxpr(gradient)(x, w))
  with conv.xla_convolutions():
    assert 'platform_index' not in str(jax.make_jaxpr(gradient)(x, w))
    assert convolutions() == xla_count
    switched = [programs['forward'](x, w), *programs['gradient'](x, w)]
  assert convolutions() == default
  if case != 'xla_transposed':  # the one case whose CPU forward pass is XLA's too
    assert default['forward'] == 0
  for a, b in zip(default_values, switched):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(np.abs(a).max()))
