"""The benchmark's floor: direct-convolution flops read from a program's shapes, and the rate of
a large matrix product."""

import jax
import jax.numpy as jnp
import pytest

from lgnet_jax.bench import floor
from lgnet_jax.ops import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


def direct_conv(x, kernel, stride):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), 'VALID', dimension_numbers=NHWC)


def test_a_convolution_counts_as_a_direct_one():
  x, kernel = jnp.ones((2, 10, 10, 3)), jnp.ones((3, 3, 3, 4))
  # (2, 8, 8, 4) outputs, each 3 * 3 * 3 multiply-adds.
  assert floor.reference_flops(lambda x, k: direct_conv(x, k, 1), x, kernel) == 2 * 2 * 64 * 4 * 27
  assert floor.reference_flops(lambda x, k: direct_conv(x, k, 2), x, kernel) == 2 * 2 * 16 * 4 * 27


def test_the_projects_cpu_kernels_count_as_direct_convolutions():
  """The project's convolution (on the CPU, matrix products or Winograd, which does fewer
  multiplications) counts as the direct one."""
  x, kernel = jnp.ones((1, 34, 34, 16)), jnp.ones((3, 3, 16, 16))
  expected = 2 * 32 * 32 * 16 * 9 * 16
  assert floor.reference_flops(lambda x, k: conv.conv2d(x, k, 1), x, kernel) == expected


def test_a_strided_convolutions_gradient_counts_no_dilation_zeros():
  """The input and kernel gradients of a stride-2 convolution: each about the forward's count
  (the input gradient pads its input's border, so a little more); the forward itself is not
  needed for them and is not counted."""
  x, kernel = jnp.ones((2, 33, 33, 8)), jnp.ones((3, 3, 8, 8))
  forward = floor.reference_flops(lambda x, k: direct_conv(x, k, 2), x, kernel)
  both = floor.reference_flops(
      jax.grad(lambda x, k: direct_conv(x, k, 2).sum(), argnums=(0, 1)), x, kernel
  )
  assert 2 * forward <= both < 2.2 * forward


def test_a_transposed_convolutions_gradient_and_dead_work():
  """The project's transposed convolution (a custom gradient whose forward pass appears twice
  in the traced gradient): input and kernel gradients, each the forward's count."""
  x, kernel = jnp.ones((2, 32, 32, 16)), jnp.ones((4, 4, 8, 16))
  forward = floor.reference_flops(lambda x, k: conv.transposed_conv(x, k, 2, 1, 0), x, kernel)
  assert forward == 2 * 2 * 32 * 32 * 16 * 16 * 8  # each input pixel meets the whole kernel
  grad = jax.grad(lambda x, k: conv.transposed_conv(x, k, 2, 1, 0).sum(), argnums=(0, 1))
  assert floor.reference_flops(grad, x, kernel) == 2 * forward


def test_matrix_products_scans_and_branches():
  a, b = jnp.ones((5, 7)), jnp.ones((7, 3))
  assert floor.reference_flops(jnp.matmul, a, b) == 2 * 5 * 7 * 3

  def scanned(a, b):
    return jax.lax.scan(lambda carry, _: (carry, carry @ b), a, None, length=4)[1]

  assert floor.reference_flops(scanned, a, b) == 4 * 2 * 5 * 7 * 3

  def branches(a, b):
    return jax.lax.cond(a[0, 0] > 0, lambda: (a @ b) @ b.T, lambda: a)

  assert floor.reference_flops(branches, a, b) == 2 * 5 * 7 * 3 + 2 * 5 * 3 * 7


def test_the_floor_fields():
  fields = floor.floor_fields(4e9, batch=2, step_s_median=0.5, dtype='float32')
  rate = floor.matmul_gflops('float32')
  assert fields['matmul_gflops'] == pytest.approx(rate, abs=0.05) and rate > 1
  assert fields['reference_flops_per_image'] == 2e9
  assert fields['floor_s'] == pytest.approx(4 / rate, rel=1e-4)
  assert fields['floor_fraction'] == pytest.approx(fields['floor_s'] / 0.5, rel=1e-3)
