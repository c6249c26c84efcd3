"""The project's convolutions, NHWC with PyTorch's geometry, each backend with its own kernels.

The kernels are chosen where a program is lowered for its platform
(`jax.lax.platform_dependent`): matrix products on the CPU (`conv_cpu`), XLA's convolutions on
GPUs and TPUs (`conv_xla`). All compute the same sums, in different orders.

Exporters whose converters cannot read `platform_dependent`, or the CPU's 4-D matrix products
(TF 2.21's TFLite converter rejects those), trace the program inside `xla_convolutions()`: the
convolutions are then XLA's on every backend, as lowered for a GPU.
"""

import contextlib
import functools

import jax

from lgnet_jax.ops import conv_cpu, conv_xla

# Read when a convolution is traced. A JAX user context is part of the key of jit's tracing
# and compilation caches, so a function jitted before is traced anew inside the switch.
_XLA_CONVOLUTIONS = jax.make_user_context(default_value=False)


def xla_convolutions() -> contextlib.AbstractContextManager:
  """A context in which the convolutions traced are XLA's plain ones on any backend."""
  return _XLA_CONVOLUTIONS(True)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """VALID convolution of NHWC `x` with an HWIO kernel.

  On the CPU, matrix products chosen for the shape (`conv_cpu.conv`, each with its own
  gradient); elsewhere, or under `xla_convolutions()`, XLA's convolution.
  """
  if _XLA_CONVOLUTIONS.value:
    return conv_xla.conv(x, kernel, stride)
  return jax.lax.platform_dependent(
      x,
      kernel,
      cpu=functools.partial(conv_cpu.conv, stride=stride),
      default=functools.partial(conv_xla.conv, stride=stride),
  )


def transposed_conv(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, output_padding: int
) -> jax.Array:
  """PyTorch's ConvTranspose2d (no bias) on NHWC input; kernel (k, k, out, in).

  out[s*i - p + ky, s*j - p + kx] += x[i, j] @ W[ky, kx] (then `output_padding` extra rows
  and columns at the end). The kernel gradient is computed as k*k matrix products of the
  input with strided slices of the output gradient: XLA's own gradient of a transposed
  convolution is a dilated convolution that runs up to 100x slower on CPU. On CPU, layers
  whose kernel outweighs their input use col2im (see `conv_cpu`'s ratios).
  """
  # The switch is read here, in the forward pass, so the gradient follows the same choice.
  xla_only = bool(_XLA_CONVOLUTIONS.value)
  return _transposed_conv(x, kernel, stride, padding, output_padding, xla_only)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _transposed_conv(x, kernel, stride, padding, output_padding, xla_only):
  return _transposed_conv_forward(x, kernel, stride, padding, output_padding, xla_only)


def _transposed_conv_forward(x, kernel, stride, padding, output_padding, xla_only):
  geometry = (stride, padding, output_padding)
  if xla_only:
    return conv_xla.transposed_conv(x, kernel, *geometry)
  return jax.lax.platform_dependent(
      x,
      kernel,
      cpu=lambda a, b: conv_cpu.transposed_conv(a, b, *geometry),
      default=lambda a, b: conv_xla.transposed_conv(a, b, *geometry),
  )


def _transposed_conv_fwd(x, kernel, stride, padding, output_padding, xla_only):
  y = _transposed_conv_forward(x, kernel, stride, padding, output_padding, xla_only)
  return y, (x, kernel)


def _transposed_conv_bwd(stride, padding, output_padding, xla_only, residuals, grad_out):
  geometry = (stride, padding, output_padding)
  if xla_only:
    return conv_xla.transposed_conv_bwd(*geometry, residuals, grad_out)
  x, kernel = residuals
  return jax.lax.platform_dependent(
      x,
      kernel,
      grad_out,
      cpu=lambda a, b, g: conv_cpu.transposed_conv_bwd(*geometry, (a, b), g),
      default=lambda a, b, g: conv_xla.transposed_conv_bwd(*geometry, (a, b), g),
  )


_transposed_conv.defvjp(_transposed_conv_fwd, _transposed_conv_bwd)
