"""Convolutions as matrix products, for XLA's CPU backend.

XLA's CPU convolutions (and their kernel gradients above all) are slower than matrix products
of the same sums, so on CPU `conv` writes a convolution as matrix products: 3x3 stride-1
convolutions at least 32 channels wide in and out by Winograd F(2x2, 3x3) (`winograd`, 2.25x
fewer multiplications), other stride-1 convolutions 256 channels wide in and out as sums of
products of shifted inputs, those with a few outputs (image heads) as one product followed by
shifted sums, and the rest as one product of the im2col patch matrix when that matrix is at
most `IM2COL_MAX_BYTES`. `transposed_conv` and `transposed_conv_bwd` do the same for layers
whose kernel outweighs their input (col2im). All compute the same sums as XLA's convolutions
(`conv_xla`), in different orders; the shapes where none pays off fall back to those.
"""

import functools

import jax
import jax.numpy as jnp

from lgnet_jax.ops import conv_xla, winograd

# Largest im2col patch matrix (bytes) the CPU path builds; larger convolutions use XLA's.
IM2COL_MAX_BYTES = 512 * 2**20

# From these kernel-to-input size ratios up, the CPU runs a transposed convolution's forward
# pass as `_col2im_transposed_conv` and its gradient as `_col2im_transposed_conv_bwd`, and an
# im2col convolution's input gradient by matrix products too (measured on
# a 2-core AVX2 host: a 4x4x1024 input with 4x4x512x1024 taps, 46 -> 3 ms forward; at 32x32x512
# with 4x4x128x512 taps, ratio 2, the forward pass is even and the gradient a little faster).
COL2IM_FORWARD_RATIO = 4
COL2IM_BACKWARD_RATIO = 2

# Up to this many input channels (the stems' image and mask, VGG16's conv1_1), a stride-1 im2col
# convolution's input gradient is one matrix product and the patch matrix's transpose instead
# of XLA's convolution (2-core Zen 4 host: the 7x7 stem's at batch 4, 255 -> 141 ms; conv1_1's
# on 16 images, 183 -> 84 ms; relative differences from XLA's below 6e-7).
FEW_INPUT_CHANNELS = 4


def _weight_to_input_ratio(x: jax.Array, kernel: jax.Array) -> float:
  """Kernel elements per input element: high for the small, wide inner U-Net steps."""
  return kernel.size / x.size


def _shifted_matmul_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 VALID convolution as k*k matrix products of shifted inputs, summed."""
  k = kernel.shape[0]
  height, width = x.shape[1] - k + 1, x.shape[2] - k + 1
  return sum(
      jnp.einsum('bhwc,co->bhwo', x[:, ky : ky + height, kx : kx + width], kernel[ky, kx])
      for ky in range(k)
      for kx in range(k)
  )


@jax.custom_vjp
def _matmul_shifted_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 VALID convolution with few outputs: one matrix product, then shifted sums.

  Its gradients are XLA's convolution gradients (fast for this shape; those of the shifted
  sums are not; a kernel gradient as one product of the input with the output gradient placed
  at each tap's offset measured 282 ms against XLA's 258 ms for a 7x7 head at batch 4).
  """
  k, _, channels, features = kernel.shape
  height, width = x.shape[1] - k + 1, x.shape[2] - k + 1
  taps = jnp.einsum(
      'bhwc,ctf->bhwtf', x, kernel.transpose(2, 0, 1, 3).reshape(channels, k * k, features)
  )
  return sum(
      taps[:, ky : ky + height, kx : kx + width, ky * k + kx] for ky in range(k) for kx in range(k)
  )


def _matmul_shifted_conv_fwd(x, kernel):
  return _matmul_shifted_conv(x, kernel), (x, kernel)


def _matmul_shifted_conv_bwd(residuals, grad_out):
  x, kernel = residuals
  _, vjp = jax.vjp(lambda a, b: conv_xla.conv(a, b, 1), x, kernel)
  return vjp(grad_out)


_matmul_shifted_conv.defvjp(_matmul_shifted_conv_fwd, _matmul_shifted_conv_bwd)


def _im2col_patches(x: jax.Array, k: int, stride: int) -> jax.Array:
  """The (B, H', W', k*k*C) patch matrix of a VALID convolution, in (ky, kx, c) order."""
  height = (x.shape[1] - k) // stride + 1
  width = (x.shape[2] - k) // stride + 1
  return jnp.concatenate(
      [
          x[
              :,
              ky : ky + stride * (height - 1) + 1 : stride,
              kx : kx + stride * (width - 1) + 1 : stride,
          ]
          for ky in range(k)
          for kx in range(k)
      ],
      axis=-1,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _im2col_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """VALID convolution as one matrix product of the (B, H', W', k*k*C) patch matrix.

  The kernel gradient is one matrix product of the patches with the output gradient (XLA's
  CPU kernel-gradient convolution runs 2-4x slower). The input gradient is XLA's: the
  transpose of the patch matrix adds k*k strided, interior-padded copies, which XLA's CPU
  fusions evaluate element by element (with it, D's forward and backward on 8 images took
  4.4 s instead of 2.7 s). Kernels larger than their input, and stride-1 convolutions of at
  most `FEW_INPUT_CHANNELS` inputs, take the matrix-product route.
  """
  k, _, channels, features = kernel.shape
  patches = _im2col_patches(x, k, stride)
  return jnp.einsum('bhwp,pf->bhwf', patches, kernel.reshape(k * k * channels, features))


def _im2col_conv_fwd(x, kernel, stride):
  return _im2col_conv(x, kernel, stride), (x, kernel)


def _im2col_conv_bwd(stride, residuals, grad_out):
  x, kernel = residuals
  k, _, channels, features = kernel.shape
  taps = kernel.reshape(k * k * channels, features)
  patches, patches_transpose = jax.vjp(lambda a: _im2col_patches(a, k, stride), x)
  if _weight_to_input_ratio(x, kernel) >= COL2IM_BACKWARD_RATIO:
    # Small, wide layers (the U-Nets' inner encoder steps): the patch gradient as one product
    # that reads the kernel in its stored layout, then the patch matrix's transpose (cheap at
    # these sizes). XLA's input gradient would flip and transpose the whole kernel.
    grad_patches = jnp.einsum('pf,bhwf->pbhw', taps, grad_out).transpose(1, 2, 3, 0)
    (grad_x,) = patches_transpose(grad_patches)
  elif stride == 1 and channels <= FEW_INPUT_CHANNELS:
    # A few input channels: the patch gradient is one product with k*k*C outputs, and the
    # patch matrix's transpose k*k shifted adds of C-wide slices, which XLA fuses in one pass.
    (grad_x,) = patches_transpose(jnp.einsum('bhwf,pf->bhwp', grad_out, taps))
  else:
    _, input_vjp = jax.vjp(lambda a: conv_xla.conv(a, kernel, stride), x)
    (grad_x,) = input_vjp(grad_out)
  grad_kernel = jnp.einsum('bhwp,bhwf->pf', patches, grad_out)
  return grad_x, grad_kernel.reshape(kernel.shape)


_im2col_conv.defvjp(_im2col_conv_fwd, _im2col_conv_bwd)


def conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """The fastest of the matrix-product formulations on XLA's CPU backend, for this shape."""
  k, _, channels, features = kernel.shape
  if k == 3 and stride == 1 and channels >= 32 and features >= 32:
    return winograd.conv(x, kernel)
  if k > 1 and stride == 1 and channels >= 256 and features >= 256:
    return _shifted_matmul_conv(x, kernel)
  if k > 1 and stride == 1 and features <= 8 and channels >= 32:
    return _matmul_shifted_conv(x, kernel)
  height = (x.shape[1] - k) // stride + 1
  width = (x.shape[2] - k) // stride + 1
  patch_bytes = x.shape[0] * height * width * k * k * channels * x.dtype.itemsize
  if k > 1 and patch_bytes <= IM2COL_MAX_BYTES:
    return _im2col_conv(x, kernel, stride)
  return conv_xla.conv(x, kernel, stride)


def _col2im_transposed_conv(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, output_padding: int
) -> jax.Array:
  """The transposed convolution as one matrix product of the input with every tap, after
  which each tap's outputs are added in place at stride `stride` (col2im).

  The (k*k*out, in) kernel is read once in its stored layout, so layers whose kernel is much
  larger than their input (the U-Nets' inner decoder steps) cost about one pass over the
  weights; XLA's CPU convolution first flips and transposes the whole kernel.
  """
  k, _, features, channels = kernel.shape
  batch, height, width, _ = x.shape
  # Kernel first, output (k*k*F, B*H*W): the product reads the kernel in its stored layout
  # (a (B, H, W, k*k, F) output makes XLA transpose the whole kernel first).
  taps = jnp.einsum('tfc,bhwc->tfbhw', kernel.reshape(k * k, features, channels), x)
  taps = taps.transpose(2, 3, 4, 0, 1)  # (B, H, W, k*k, F)
  span_h, span_w = stride * (height - 1) + 1, stride * (width - 1) + 1
  out_h = stride * (height - 1) - 2 * padding + k + output_padding
  out_w = stride * (width - 1) - 2 * padding + k + output_padding
  full_h, full_w = max(span_h + k - 1, out_h + padding), max(span_w + k - 1, out_w + padding)
  zero = jnp.zeros((), taps.dtype)
  out = sum(
      jax.lax.pad(
          taps[:, :, :, ky * k + kx],
          zero,
          (
              (0, 0, 0),
              (ky, full_h - ky - span_h, stride - 1),
              (kx, full_w - kx - span_w, stride - 1),
              (0, 0, 0),
          ),
      )
      for ky in range(k)
      for kx in range(k)
  )  # (B, full_h, full_w, F)
  return out[:, padding : padding + out_h, padding : padding + out_w]


def transposed_conv(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, output_padding: int
) -> jax.Array:
  """The transposed convolution by col2im where the kernel outweighs the input, else XLA's."""
  if _weight_to_input_ratio(x, kernel) >= COL2IM_FORWARD_RATIO:
    return _col2im_transposed_conv(x, kernel, stride, padding, output_padding)
  return conv_xla.transposed_conv(x, kernel, stride, padding, output_padding)


def _col2im_transposed_conv_bwd(stride, padding, output_padding, residuals, grad_out):
  """Both gradients as matrix products with the tap windows of the output gradient; the
  kernel is read in its stored (k*k*out, in) layout."""
  x, kernel = residuals
  k, _, features, channels = kernel.shape
  windows = jnp.stack(
      conv_xla.output_gradient_windows(grad_out, x.shape, k, stride, padding), axis=3
  )
  grad_x = jnp.einsum('bhwtf,tfc->bhwc', windows, kernel.reshape(k * k, features, channels))
  grad_kernel = jnp.einsum('bhwtf,bhwc->tfc', windows, x)  # (B, H, W, k*k, F) windows
  return grad_x.astype(x.dtype), grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


def transposed_conv_bwd(stride, padding, output_padding, residuals, grad_out):
  """The transposed convolution's gradients: col2im's from `COL2IM_BACKWARD_RATIO` up, else
  those of every backend (`conv_xla.transposed_conv_bwd`)."""
  x, kernel = residuals
  if _weight_to_input_ratio(x, kernel) >= COL2IM_BACKWARD_RATIO:
    return _col2im_transposed_conv_bwd(stride, padding, output_padding, residuals, grad_out)
  return conv_xla.transposed_conv_bwd(stride, padding, output_padding, residuals, grad_out)
