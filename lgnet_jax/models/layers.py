"""Building blocks with PyTorch semantics, in NHWC.

The authors' checkpoints were trained with PyTorch layers; these modules compute the same
functions (padding, transposed convolutions, BatchNorm statistics) so that imported weights
reproduce the reference outputs to float tolerance.
"""

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


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0, use_bias: bool = False,
         dtype: Dtype = jnp.float32, kernel_init: Callable = conv_init, name: str | None = None,
         param_dtype: Dtype = jnp.float32) -> nn.Conv:
  """`nn.Conv2d(in, features, kernel, stride, padding)` with zero padding."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                 dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init, name=name)


def conv_transpose(features: int, kernel: int, stride: int, padding: int, output_padding: int = 0,
                   use_bias: bool = False, dtype: Dtype = jnp.float32,
                   name: str | None = None, param_dtype: Dtype = jnp.float32) -> nn.ConvTranspose:
  """`nn.ConvTranspose2d(in, features, kernel, stride, padding, output_padding)`.

  With `transpose_kernel=True` the kernel is stored as (kh, kw, out, in), which is the
  PyTorch (in, out, kh, kw) weight transposed without any flip. The explicit padding is
  applied to the stride-dilated input: kernel - 1 - padding before, plus output_padding after.
  """
  lo = kernel - 1 - padding
  return nn.ConvTranspose(features, (kernel, kernel), strides=(stride, stride),
                          padding=((lo, lo + output_padding), (lo, lo + output_padding)),
                          use_bias=use_bias, transpose_kernel=True, dtype=dtype,
                          param_dtype=param_dtype, kernel_init=conv_init, name=name)


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
