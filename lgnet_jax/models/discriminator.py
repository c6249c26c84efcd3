"""The spectral-normalised PatchGAN discriminator (from PEN-Net), with PyTorch's power iteration."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgnet_jax.models import layers
from lgnet_jax.ops import conv as conv_ops

SPECTRAL = 'spectral'  # variable collection of the power-iteration vectors u and v


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def _unit_normal(key: jax.Array, size: int, dtype: layers.Dtype) -> jax.Array:
  return _normalize(jax.random.normal(key, (size,), dtype))


class SpectralNormConv(nn.Module):
  """Conv2d (no bias) whose weight is divided by its largest singular value.

  As `torch.nn.utils.spectral_norm`: the kernel viewed as a matrix W (out, in*kh*kw) keeps
  persistent vectors u (out) and v (in*kh*kw). A call with `update_stats=True` first runs one
  power iteration, v = normalize(W^T u), u = normalize(W v), and stores them; every call uses
  W / sigma with sigma = u . (W v), u and v held constant for the gradient.
  """

  features: int
  kernel: int
  stride: int
  padding: int
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool) -> jax.Array:
    in_features = x.shape[-1]
    # PyTorch's default Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    kernel = self.param(
        'kernel',
        nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
        (self.kernel, self.kernel, in_features, self.features),
        self.param_dtype,
    )
    cols = in_features * self.kernel * self.kernel
    u = self.variable(
        SPECTRAL,
        'u',
        lambda: _unit_normal(self.make_rng('params'), self.features, self.param_dtype),
    )
    v = self.variable(
        SPECTRAL, 'v', lambda: _unit_normal(self.make_rng('params'), cols, self.param_dtype)
    )

    matrix = jnp.transpose(kernel, (3, 2, 0, 1)).reshape(
        self.features, cols
    )  # torch (out, in*kh*kw)
    u_vec, v_vec = u.value, v.value
    if update_stats:
      v_vec = _normalize(matrix.T @ u_vec)
      u_vec = _normalize(matrix @ v_vec)
      if not self.is_initializing():
        u.value, v.value = u_vec, v_vec
    u_vec, v_vec = jax.lax.stop_gradient(u_vec), jax.lax.stop_gradient(v_vec)
    sigma = jnp.dot(u_vec, matrix @ v_vec)
    pad = self.padding
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return conv_ops.conv2d(x, (kernel / sigma).astype(self.dtype), self.stride)


class Discriminator(nn.Module):
  """Maps (B, H, W, 3) images to (B, H', W', 1) patch scores (27x27 for 256x256); no sigmoid.

  `ndf` is the first layer's width (the reference's 64); the others are 2x, 4x and 8x it.
  """

  ndf: int = 64
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, update_stats: bool) -> jax.Array:
    h = images
    for i, (width, stride) in enumerate([(1, 2), (2, 2), (4, 2), (8, 1)]):
      h = SpectralNormConv(
          width * self.ndf, 5, stride, 1, self.dtype, self.param_dtype, name=f'conv{i + 1}'
      )(h, update_stats)
      h = layers.leaky_relu(h)
    h = layers.conv(
        1, 5, 1, 1, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype, name='classifier'
    )(h)
    return layers.upcast(h)
