"""Building blocks with PyTorch semantics, in NHWC.

The authors' checkpoints were trained with PyTorch layers; these modules compute the same
functions (padding, transposed convolutions, BatchNorm statistics) so that imported weights
reproduce the reference outputs to float tolerance. The convolutions they run, with each
backend's kernels, are `lgnet_jax.ops.conv`'s.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgnet_jax.ops import conv as conv_ops

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
    y = conv_ops.conv2d(x, kernel.astype(self.dtype), self.stride)
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
    y = conv_ops.transposed_conv(
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
