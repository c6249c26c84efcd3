"""The convolutions of every backend but the CPU: XLA's own, with PyTorch's geometry.

`conv.conv2d` and `conv.transposed_conv` use these where the program is lowered for a GPU or
TPU, everywhere under `conv.xla_convolutions()`, and on the CPU for the shapes its matrix
products do not pay off (`conv_cpu`).
"""

import jax
import jax.numpy as jnp


def conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """XLA's VALID convolution of NHWC `x` with an HWIO kernel."""
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def transposed_conv(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, output_padding: int
) -> jax.Array:
  """XLA's transposed convolution: PyTorch's ConvTranspose2d, kernel (k, k, out, in)."""
  kernel_size = kernel.shape[0]
  lo = kernel_size - 1 - padding
  return jax.lax.conv_transpose(
      x,
      kernel,
      (stride, stride),
      ((lo, lo + output_padding), (lo, lo + output_padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      transpose_kernel=True,
  )


def output_gradient_windows(
    grad_out: jax.Array, x_shape: tuple[int, ...], kernel_size: int, stride: int, padding: int
) -> list[jax.Array]:
  """For each tap (ky, kx), the output gradient at s*i - p + ky, s*j - p + kx.  # k*k x (B, H, W, F)"""
  height, width = x_shape[1:3]
  span_h, span_w = stride * (height - 1) + kernel_size, stride * (width - 1) + kernel_size
  padded = jnp.pad(
      grad_out,
      (
          (0, 0),
          (padding, max(0, span_h - padding - grad_out.shape[1])),
          (padding, max(0, span_w - padding - grad_out.shape[2])),
          (0, 0),
      ),
  )
  return [
      padded[
          :,
          ky : ky + stride * (height - 1) + 1 : stride,
          kx : kx + stride * (width - 1) + 1 : stride,
      ]
      for ky in range(kernel_size)
      for kx in range(kernel_size)
  ]


def transposed_conv_bwd(stride, padding, output_padding, residuals, grad_out):
  """`transposed_conv`'s gradients: the input's by XLA's convolution, the kernel's by k*k
  matrix products (XLA's own is a dilated convolution, up to 100x slower on CPU)."""
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda v: transposed_conv(v, kernel, stride, padding, output_padding), x)
  (grad_x,) = input_vjp(grad_out)
  k = kernel.shape[0]
  # grad_W[ky, kx] = sum over (b, i, j) of x[b, i, j]^T grad_out[b, s*i - p + ky, s*j - p + kx]
  windows = output_gradient_windows(grad_out, x.shape, k, stride, padding)
  grad_kernel = jnp.stack([jnp.einsum('bhwi,bhwo->oi', x, window) for window in windows])
  return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)  # (k, k, out, in)
