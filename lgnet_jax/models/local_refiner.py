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

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    h = layers.conv(features, 3, dtype=self.dtype, name='conv1')(layers.reflect_pad(x, 1))
    h = nn.relu(layers.BatchNorm(dtype=self.dtype, name='bn1')(h, train))
    h = layers.conv(features, 3, dtype=self.dtype, name='conv2')(layers.reflect_pad(h, 1))
    h = layers.BatchNorm(dtype=self.dtype, name='bn2')(h, train)
    return x + h


class LocalRefiner(nn.Module):
  """Maps a (B, H, W, 4) input to a (B, H, W, 3) image in [-1, 1]; H, W multiples of 4."""
  width: int = 64
  num_blocks: int = 4
  out_channels: int = 3
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def conv_bn_relu(h: jax.Array, conv: nn.Module, name: str) -> jax.Array:
      return nn.relu(layers.BatchNorm(dtype=self.dtype, name=name)(conv(h), train))

    w, dtype = self.width, self.dtype
    h = x.astype(dtype)
    h = conv_bn_relu(layers.reflect_pad(h, 3), layers.conv(w, 7, dtype=dtype, name='stem'), 'stem_bn')
    h = conv_bn_relu(h, layers.conv(2 * w, 3, 2, 1, dtype=dtype, name='down1'), 'down1_bn')  # (B, H/2, W/2, 2w)
    h = conv_bn_relu(h, layers.conv(4 * w, 3, 2, 1, dtype=dtype, name='down2'), 'down2_bn')  # (B, H/4, W/4, 4w)
    for i in range(self.num_blocks):
      h = ResidualBlock(dtype, name=f'block{i + 1}')(h, train)
    h = conv_bn_relu(h, layers.conv_transpose(2 * w, 3, 2, 1, 1, dtype=dtype, name='up1'), 'up1_bn')
    h = conv_bn_relu(h, layers.conv_transpose(w, 3, 2, 1, 1, dtype=dtype, name='up2'), 'up2_bn')
    h = layers.conv(self.out_channels, 7, use_bias=True, dtype=dtype, name='head')(layers.reflect_pad(h, 3))
    return jnp.tanh(h.astype(jnp.float32))  # (B, H, W, 3)
