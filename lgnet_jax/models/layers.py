"""Building blocks with PyTorch semantics, in NHWC.

The authors' checkpoints were trained with PyTorch layers; these modules compute the same
functions (padding, transposed convolutions, BatchNorm statistics) so that imported weights
reproduce the reference outputs to float tolerance.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Weight init of the reference generators: N(0, 0.02) for convolutions, N(1, 0.02) for BN scales.
conv_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def upcast(x: jax.Array) -> jax.Array:
  """`x` in at least float32 (bfloat16 compute is upcast; float64 stays float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def leaky_relu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, negative_slope=0.2)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """Reflection padding of H and W, like `nn.ReflectionPad2d(pad)`."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')


def _shifted_matmul_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 VALID convolution as k*k matrix products of shifted inputs, summed."""
  k = kernel.shape[0]
  height, width = x.shape[1] - k + 1, x.shape[2] - k + 1
  return sum(
      jnp.einsum('bhwc,co->bhwo', x[:, ky : ky + height, kx : kx + width], kernel[ky, kx])
      for ky in range(k)
      for kx in range(k)
  )


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


@jax.custom_vjp
def _matmul_shifted_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 VALID convolution with few outputs: one matrix product, then shifted sums.

  Its gradients are XLA's convolution gradients (fast for this shape; those of the shifted
  sums are not).
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
  _, vjp = jax.vjp(lambda a, b: _xla_conv(a, b, 1), x, kernel)
  return vjp(grad_out)


_matmul_shifted_conv.defvjp(_matmul_shifted_conv_fwd, _matmul_shifted_conv_bwd)


# Winograd F(2x2, 3x3): a 3x3 stride-1 convolution computed on 2x2 output tiles from 4x4
# input tiles with 16 matrix products instead of 36 (2.25x fewer multiplications). With
# d a 4x4 input tile and g the 3x3 kernel, out = A^T [(G g G^T) * (B^T d B)] A for
#   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
#   G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]],
#   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
# The transforms only add and halve, so float32 results stay as close to the exact sums as a
# direct convolution's (measured: 1.7e-6 vs XLA's 4.8e-6 max error at 64 channels).


def _winograd_transform(rows: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  """B^T applied to four rows (or columns) d0..d3 of 4x4 input tiles."""
  d0, d1, d2, d3 = rows
  return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _winograd_input(x: jax.Array, tiles_h: int, tiles_w: int) -> jax.Array:
  """B^T d B for every 4x4 tile of x at stride 2.  # (16, B*tiles_h*tiles_w, C)

  x (B, 2*tiles_h + 2, 2*tiles_w + 2, C) is read as 2x2 blocks, so that tile i's rows
  d0..d3 are rows 0 and 1 of blocks i and i + 1: the row transform and then the column
  transform are each one fused pass writing a stacked array (strided slices of x gave XLA
  16 separate passes and a copy).
  """
  batch, width, channels = x.shape[0], x.shape[2], x.shape[-1]
  blocks = x.reshape(batch, tiles_h + 1, 2, width, channels)
  rows = jnp.stack(
      _winograd_transform(
          (blocks[:, :-1, 0], blocks[:, :-1, 1], blocks[:, 1:, 0], blocks[:, 1:, 1])
      )
  )  # (4, B, th, W, C)
  blocks = rows.reshape(4, batch, tiles_h, tiles_w + 1, 2, channels)
  tiles = jnp.stack(
      _winograd_transform(
          (
              blocks[:, :, :, :-1, 0],
              blocks[:, :, :, :-1, 1],
              blocks[:, :, :, 1:, 0],
              blocks[:, :, :, 1:, 1],
          )
      ),
      axis=1,
  )
  return tiles.reshape(16, batch * tiles_h * tiles_w, channels)  # tiles: (4, 4, B, th, tw, C)


def _winograd_kernel(kernel: jax.Array) -> jax.Array:
  """G g G^T of a (3, 3, C, F) kernel.  # (16, C, F)"""

  def g(v0, v1, v2):
    return v0, (v0 + v1 + v2) * 0.5, (v0 - v1 + v2) * 0.5, v2

  return jnp.stack([v for r in g(kernel[0], kernel[1], kernel[2]) for v in g(r[0], r[1], r[2])])


def _winograd_output(m: jax.Array, batch: int, tiles_h: int, tiles_w: int) -> jax.Array:
  """A^T m A, tiles back in place: (16, N, F) -> (B, 2*tiles_h, 2*tiles_w, F)."""
  m = m.reshape(4, 4, batch, tiles_h, tiles_w, m.shape[-1])

  def a(v0, v1, v2, v3):
    return v0 + v1 + v2, v1 - v2 - v3

  rows = a(m[0], m[1], m[2], m[3])
  y = jnp.stack([jnp.stack(a(r[0], r[1], r[2], r[3]), axis=3) for r in rows], axis=2)
  return y.reshape(batch, 2 * tiles_h, 2 * tiles_w, y.shape[-1])  # y: (B, th, 2, tw, 2, F)


def _winograd_output_transposed(grad: jax.Array, tiles_h: int, tiles_w: int) -> jax.Array:
  """The transpose of `_winograd_output`: (B, 2*tiles_h, 2*tiles_w, F) -> (16, N, F)."""
  batch, features = grad.shape[0], grad.shape[-1]
  g = grad.reshape(batch, tiles_h, 2, tiles_w, 2, features)

  def a_t(v0, v1):  # rows of A = [[1, 0], [1, 1], [1, -1], [0, -1]]
    return v0, v0 + v1, v0 - v1, -v1

  rows = a_t(g[:, :, 0], g[:, :, 1])  # each (B, th, tw, 2, F)
  tiles = [v for r in rows for v in a_t(r[:, :, :, 0], r[:, :, :, 1])]
  return jnp.stack(tiles).reshape(16, batch * tiles_h * tiles_w, features)


def _winograd_tiles(x: jax.Array) -> tuple[jax.Array, int, int]:
  """x padded at the bottom and right to whole 2x2 output tiles, and the tile counts."""
  tiles_h, tiles_w = (x.shape[1] - 1) // 2, (x.shape[2] - 1) // 2
  x = jnp.pad(
      x, ((0, 0), (0, 2 * tiles_h + 2 - x.shape[1]), (0, 2 * tiles_w + 2 - x.shape[2]), (0, 0))
  )
  return x, tiles_h, tiles_w


def _winograd_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
  height, width = x.shape[1] - 2, x.shape[2] - 2
  padded, tiles_h, tiles_w = _winograd_tiles(x)
  m = jnp.einsum(
      'pnc,pcf->pnf', _winograd_input(padded, tiles_h, tiles_w), _winograd_kernel(kernel)
  )
  return _winograd_output(m, x.shape[0], tiles_h, tiles_w)[:, :height, :width]


@jax.custom_vjp
def _winograd_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """3x3 stride-1 VALID convolution by Winograd F(2x2, 3x3).

  Its gradients use the same algorithm: the input gradient is the Winograd convolution of
  the zero-padded output gradient with the flipped, transposed kernel, and the kernel
  gradient is 16 matrix products of the transformed input tiles with the transposed
  output transform of the output gradient.
  """
  return _winograd_forward(x, kernel)


def _winograd_conv_fwd(x, kernel):
  return _winograd_forward(x, kernel), (x, kernel)


def _winograd_conv_bwd(residuals, grad_out):
  x, kernel = residuals
  grad_x = _winograd_forward(
      jnp.pad(grad_out, ((0, 0), (2, 2), (2, 2), (0, 0))), kernel[::-1, ::-1].transpose(0, 1, 3, 2)
  )
  padded, tiles_h, tiles_w = _winograd_tiles(x)
  grad_out = jnp.pad(
      grad_out,
      ((0, 0), (0, 2 * tiles_h - grad_out.shape[1]), (0, 2 * tiles_w - grad_out.shape[2]), (0, 0)),
  )
  grad_m = _winograd_output_transposed(grad_out, tiles_h, tiles_w)
  grad_u = jnp.einsum('pnc,pnf->pcf', _winograd_input(padded, tiles_h, tiles_w), grad_m)
  _, kernel_vjp = jax.vjp(_winograd_kernel, kernel)
  return grad_x, kernel_vjp(grad_u)[0]


_winograd_conv.defvjp(_winograd_conv_fwd, _winograd_conv_bwd)


# Largest im2col patch matrix (bytes) the CPU path builds; larger convolutions use XLA's.
IM2COL_MAX_BYTES = 512 * 2**20

# From these kernel-to-input size ratios up, the CPU runs a transposed convolution's forward
# pass as `_col2im_transposed_conv` and its gradient as `_col2im_transposed_conv_bwd`, and an
# im2col convolution's input gradient by matrix products too (measured on
# a 2-core AVX2 host: a 4x4x1024 input with 4x4x512x1024 taps, 46 -> 3 ms forward; at 32x32x512
# with 4x4x128x512 taps, ratio 2, the forward pass is even and the gradient a little faster).
COL2IM_FORWARD_RATIO = 4
COL2IM_BACKWARD_RATIO = 2


def _weight_to_input_ratio(x: jax.Array, kernel: jax.Array) -> float:
  """Kernel elements per input element: high for the small, wide inner U-Net steps."""
  return kernel.size / x.size


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
  4.4 s instead of 2.7 s). Kernels larger than their input take the matrix-product route.
  """
  k, _, channels, features = kernel.shape
  patches = _im2col_patches(x, k, stride)
  return jnp.einsum('bhwp,pf->bhwf', patches, kernel.reshape(k * k * channels, features))


def _im2col_conv_fwd(x, kernel, stride):
  return _im2col_conv(x, kernel, stride), (x, kernel)


def _im2col_conv_bwd(stride, residuals, grad_out):
  x, kernel = residuals
  k, _, channels, features = kernel.shape
  if _weight_to_input_ratio(x, kernel) >= COL2IM_BACKWARD_RATIO:
    # Small, wide layers (the U-Nets' inner encoder steps): the patch gradient as one product
    # that reads the kernel in its stored layout, then the patch matrix's transpose (cheap at
    # these sizes). XLA's input gradient would flip and transpose the whole kernel.
    grad_patches = jnp.einsum('pf,bhwf->pbhw', kernel.reshape(k * k * channels, features), grad_out)
    _, patches_vjp = jax.vjp(lambda a: _im2col_patches(a, k, stride), x)
    (grad_x,) = patches_vjp(grad_patches.transpose(1, 2, 3, 0))
  else:
    _, input_vjp = jax.vjp(lambda a: _xla_conv(a, kernel, stride), x)
    (grad_x,) = input_vjp(grad_out)
  grad_kernel = jnp.einsum('bhwp,bhwf->pf', _im2col_patches(x, k, stride), grad_out)
  return grad_x, grad_kernel.reshape(kernel.shape)


_im2col_conv.defvjp(_im2col_conv_fwd, _im2col_conv_bwd)


def _cpu_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """The fastest of the matrix-product formulations on XLA's CPU backend, for this shape."""
  k, _, channels, features = kernel.shape
  if k == 3 and stride == 1 and channels >= 32 and features >= 32:
    return _winograd_conv(x, kernel)
  if k > 1 and stride == 1 and channels >= 256 and features >= 256:
    return _shifted_matmul_conv(x, kernel)
  if k > 1 and stride == 1 and features <= 8 and channels >= 32:
    return _matmul_shifted_conv(x, kernel)
  height = (x.shape[1] - k) // stride + 1
  width = (x.shape[2] - k) // stride + 1
  patch_bytes = x.shape[0] * height * width * k * k * channels * x.dtype.itemsize
  if k > 1 and patch_bytes <= IM2COL_MAX_BYTES:
    return _im2col_conv(x, kernel, stride)
  return _xla_conv(x, kernel, stride)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """VALID convolution of NHWC `x` with an HWIO kernel.

  XLA's CPU convolutions (and their kernel gradients above all) are slower than matrix
  products of the same sums, so on CPU the convolution is written as matrix products: 3x3
  stride-1 convolutions at least 32 channels wide in and out by Winograd F(2x2, 3x3) (2.25x
  fewer multiplications), other stride-1 convolutions 256 channels wide in and out as sums of
  products of shifted inputs, those with a few outputs (image heads) as one product followed
  by shifted sums, and the rest as one product of the im2col patch matrix when that matrix is at most `IM2COL_MAX_BYTES`. The
  choice is made when the program is lowered for its platform (`platform_dependent`); other
  backends use XLA's convolution. All compute the same sums, in different orders.
  """
  return jax.lax.platform_dependent(
      x,
      kernel,
      cpu=functools.partial(_cpu_conv, stride=stride),
      default=functools.partial(_xla_conv, stride=stride),
  )


class Conv(nn.Module):
  """`nn.Conv2d(in, features, kernel, stride, padding)` with zero padding; kernel (k, k, in, out)."""

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable = conv_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        'kernel',
        self.kernel_init,
        (self.kernel_size, self.kernel_size, x.shape[-1], self.features),
        self.param_dtype,
    )
    pad = self.padding
    x = x.astype(self.dtype)
    if pad:
      x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    y = conv2d(x, kernel.astype(self.dtype), self.stride)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    kernel_init: Callable = conv_init,
    name: str | None = None,
    param_dtype: Dtype = jnp.float32,
) -> Conv:
  """`nn.Conv2d(in, features, kernel, stride, padding)` with zero padding."""
  return Conv(
      features,
      kernel,
      stride,
      padding,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=kernel_init,
      name=name,
  )


def _xla_transposed_conv(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, output_padding: int
) -> jax.Array:
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


def _cpu_transposed_conv(x, kernel, stride, padding, output_padding):
  if _weight_to_input_ratio(x, kernel) >= COL2IM_FORWARD_RATIO:
    return _col2im_transposed_conv(x, kernel, stride, padding, output_padding)
  return _xla_transposed_conv(x, kernel, stride, padding, output_padding)


def _transposed_conv_forward(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, output_padding: int
) -> jax.Array:
  geometry = (stride, padding, output_padding)
  return jax.lax.platform_dependent(
      x,
      kernel,
      cpu=lambda a, b: _cpu_transposed_conv(a, b, *geometry),
      default=lambda a, b: _xla_transposed_conv(a, b, *geometry),
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def transposed_conv(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, output_padding: int
) -> jax.Array:
  """PyTorch's ConvTranspose2d (no bias) on NHWC input; kernel (k, k, out, in).

  out[s*i - p + ky, s*j - p + kx] += x[i, j] @ W[ky, kx] (then `output_padding` extra rows
  and columns at the end). The kernel gradient is computed as k*k matrix products of the
  input with strided slices of the output gradient: XLA's own gradient of a transposed
  convolution is a dilated convolution that runs up to 100x slower on CPU. On CPU, layers
  whose kernel outweighs their input use `_col2im_transposed_conv` (see the ratios above).
  """
  return _transposed_conv_forward(x, kernel, stride, padding, output_padding)


def _transposed_conv_fwd(x, kernel, stride, padding, output_padding):
  return _transposed_conv_forward(x, kernel, stride, padding, output_padding), (x, kernel)


def _output_gradient_windows(
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


def _transposed_conv_products_bwd(stride, padding, output_padding, residuals, grad_out):
  """Input gradient by XLA's convolution, kernel gradient by k*k matrix products."""
  x, kernel = residuals
  _, input_vjp = jax.vjp(
      lambda v: _xla_transposed_conv(v, kernel, stride, padding, output_padding), x
  )
  (grad_x,) = input_vjp(grad_out)
  k = kernel.shape[0]
  # grad_W[ky, kx] = sum over (b, i, j) of x[b, i, j]^T grad_out[b, s*i - p + ky, s*j - p + kx]
  windows = _output_gradient_windows(grad_out, x.shape, k, stride, padding)
  grad_kernel = jnp.stack([jnp.einsum('bhwi,bhwo->oi', x, window) for window in windows])
  return grad_x, grad_kernel.reshape(kernel.shape).astype(kernel.dtype)  # (k, k, out, in)


def _col2im_transposed_conv_bwd(stride, padding, output_padding, residuals, grad_out):
  """Both gradients as matrix products with the tap windows of the output gradient; the
  kernel is read in its stored (k*k*out, in) layout."""
  x, kernel = residuals
  k, _, features, channels = kernel.shape
  windows = jnp.stack(_output_gradient_windows(grad_out, x.shape, k, stride, padding), axis=3)
  grad_x = jnp.einsum('bhwtf,tfc->bhwc', windows, kernel.reshape(k * k, features, channels))
  grad_kernel = jnp.einsum('bhwtf,bhwc->tfc', windows, x)  # (B, H, W, k*k, F) windows
  return grad_x.astype(x.dtype), grad_kernel.reshape(kernel.shape).astype(kernel.dtype)


def _cpu_transposed_conv_bwd(stride, padding, output_padding, residuals, grad_out):
  x, kernel = residuals
  if _weight_to_input_ratio(x, kernel) >= COL2IM_BACKWARD_RATIO:
    return _col2im_transposed_conv_bwd(stride, padding, output_padding, residuals, grad_out)
  return _transposed_conv_products_bwd(stride, padding, output_padding, residuals, grad_out)


def _transposed_conv_bwd(stride, padding, output_padding, residuals, grad_out):
  x, kernel = residuals
  geometry = (stride, padding, output_padding)
  return jax.lax.platform_dependent(
      x,
      kernel,
      grad_out,
      cpu=lambda a, b, g: _cpu_transposed_conv_bwd(*geometry, (a, b), g),
      default=lambda a, b, g: _transposed_conv_products_bwd(*geometry, (a, b), g),
  )


transposed_conv.defvjp(_transposed_conv_fwd, _transposed_conv_bwd)


class ConvTranspose(nn.Module):
  """`nn.ConvTranspose2d(in, features, kernel, stride, padding, output_padding)`.

  The kernel is stored as (kh, kw, out, in), which is the PyTorch (in, out, kh, kw) weight
  transposed without any flip (the layout of `nn.ConvTranspose(transpose_kernel=True)`).
  """

  features: int
  kernel_size: int
  stride: int
  padding: int
  output_padding: int = 0
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        'kernel',
        conv_init,
        (self.kernel_size, self.kernel_size, self.features, x.shape[-1]),
        self.param_dtype,
    )
    y = transposed_conv(
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        self.stride,
        self.padding,
        self.output_padding,
    )
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def conv_transpose(
    features: int,
    kernel: int,
    stride: int,
    padding: int,
    output_padding: int = 0,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
    param_dtype: Dtype = jnp.float32,
) -> ConvTranspose:
  """`nn.ConvTranspose2d(in, features, kernel, stride, padding, output_padding)`."""
  return ConvTranspose(
      features,
      kernel,
      stride,
      padding,
      output_padding,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
  )


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch's statistics.

  Training normalises with the batch mean and biased variance over (B, H, W) and updates
  the running variance with the unbiased batch variance, as PyTorch does (Flax's own
  BatchNorm uses the biased one). `momentum` is PyTorch's: running = (1 - m) running + m batch.
  Under `jax.jit` with a batch-sharded input the reductions are over the global batch.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', bn_scale_init, (features,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), self.param_dtype)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), self.param_dtype)

    if train:
      x32 = upcast(x)
      mean = jnp.mean(x32, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))  # biased, used to normalise
      if not self.is_initializing():
        count = x.shape[0] * x.shape[1] * x.shape[2]
        unbiased = var * (count / max(count - 1, 1))
        running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * mean
        running_var.value = (1 - self.momentum) * running_var.value + self.momentum * unbiased
    else:
      mean, var = running_mean.value, running_var.value

    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    offset = bias - mean * multiplier
    return (x * multiplier.astype(self.dtype) + offset.astype(self.dtype)).astype(self.dtype)
