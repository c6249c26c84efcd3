"""LGNet's local refinement network (G2): a shallow ResNet generator with a small receptive field.

pix2pix's ResNet generator with two downsamplings and four residual blocks; its receptive
field is 109x109, so it repairs local structure and texture that the coarse U-Net blurs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgnet_jax.models import layers


class ResidualBlock(nn.Module):
  """x + [pad, conv3, BN, ReLU, pad, conv3, BN](x), with reflection padding."""

  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    dtypes = {'dtype': self.dtype, 'param_dtype': self.param_dtype}
    h = layers.conv(features, 3, name='conv1', **dtypes)(layers.reflect_pad(x, 1))
    h = nn.relu(layers.BatchNorm(name='bn1', **dtypes)(h, train))
    h = layers.conv(features, 3, name='conv2', **dtypes)(layers.reflect_pad(h, 1))
    h = layers.BatchNorm(name='bn2', **dtypes)(h, train)
    return x + h


class LocalRefiner(nn.Module):
  """Maps a (B, H, W, 4) input to a (B, H, W, 3) image in [-1, 1]; H, W multiples of 4."""

  width: int = 64
  num_blocks: int = 4
  out_channels: int = 3
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dtypes = {'dtype': self.dtype, 'param_dtype': self.param_dtype}

    def conv_bn_relu(h: jax.Array, conv: nn.Module, name: str) -> jax.Array:
      return nn.relu(layers.BatchNorm(name=name, **dtypes)(conv(h), train))

    w = self.width
    h = x.astype(self.dtype)
    h = conv_bn_relu(layers.reflect_pad(h, 3), layers.conv(w, 7, name='stem', **dtypes), 'stem_bn')
    h = conv_bn_relu(
        h, layers.conv(2 * w, 3, 2, 1, name='down1', **dtypes), 'down1_bn'
    )  # (B, H/2, W/2, 2w)
    h = conv_bn_relu(
        h, layers.conv(4 * w, 3, 2, 1, name='down2', **dtypes), 'down2_bn'
    )  # (B, H/4, W/4, 4w)
    for i in range(self.num_blocks):
      h = ResidualBlock(name=f'block{i + 1}', **dtypes)(h, train)
    h = conv_bn_relu(h, layers.conv_transpose(2 * w, 3, 2, 1, 1, name='up1', **dtypes), 'up1_bn')
    h = conv_bn_relu(h, layers.conv_transpose(w, 3, 2, 1, 1, name='up2', **dtypes), 'up2_bn')
    h = layers.conv(self.out_channels, 7, use_bias=True, name='head', **dtypes)(
        layers.reflect_pad(h, 3)
    )
    return jnp.tanh(layers.upcast(h))  # (B, H, W, 3)
