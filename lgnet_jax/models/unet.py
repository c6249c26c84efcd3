"""The U-Net of LGNet's coarse network (G1) and attention-based global refiner (G3).

Both are pix2pix's "U-Net 256": eight k4 s2 convolutions down to 1x1 and eight transposed
convolutions back, each up step reading [encoder feature, decoder feature]. G3 adds a
cosine-affinity attention module on the decoder output after the 16x16, 32x32 and 64x64 up
steps (for a 256x256 input).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgnet_jax.models import layers
from lgnet_jax.models.attention import CosineAttention

# Decoder steps after which G3 attends, with the module names (their 256-input resolutions).
ATTENTION_AFTER = {5: 'attention_16', 4: 'attention_32', 3: 'attention_64'}
NUM_LEVELS = 8


def encoder_widths(ngf: int) -> list[int]:
  """Output channels of e1..e8."""
  return [ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * 5


class UNet(nn.Module):
  """pix2pix U-Net 256 generator, optionally with G3's attention.

  Attributes:
    ngf: base width (64 in LGNet, 48 in LGNet_light).
    attention: whether the attention modules exist (G3) or not (G1, and G of Table VI).
    out_channels: channels of the tanh output.
    attention_query_chunk: optional query chunking of the attention (same result).
  """

  ngf: int = 64
  attention: bool = False
  out_channels: int = 3
  attention_query_chunk: int | None = None
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, use_attention: bool = True) -> jax.Array:
    """Maps a (B, H, W, 4) input to a (B, H, W, out_channels) image in [-1, 1].

    `use_attention=False` skips the attention of an attention U-Net while sharing every
    other weight (LGNet_share's first stage).
    """
    height, width = x.shape[1:3]
    if height % 2**NUM_LEVELS or width % 2**NUM_LEVELS:
      raise ValueError(
          f'U-Net input height and width must be multiples of 256, got {height}x{width}'
      )
    widths = encoder_widths(self.ngf)
    dtypes = {'dtype': self.dtype, 'param_dtype': self.param_dtype}
    x = x.astype(self.dtype)

    skips = []  # e1..e7, (B, H / 2^k, W / 2^k, widths[k-1])
    h = layers.conv(widths[0], 4, 2, 1, name='down1', **dtypes)(x)
    for level in range(2, NUM_LEVELS + 1):
      skips.append(h)
      h = layers.conv(widths[level - 1], 4, 2, 1, name=f'down{level}', **dtypes)(
          layers.leaky_relu(h)
      )
      if level < NUM_LEVELS:
        h = layers.BatchNorm(name=f'down{level}_bn', **dtypes)(h, train)

    # h is e8 (B, H/256, W/256, 8ngf); up step k outputs d_k at H / 2^(k-1).
    for level in range(NUM_LEVELS, 1, -1):
      if level < NUM_LEVELS:
        h = jnp.concatenate([skips[level - 1], h], axis=-1)  # [e_k, d_{k+1}]
      h = layers.conv_transpose(widths[level - 2], 4, 2, 1, name=f'up{level}', **dtypes)(nn.relu(h))
      h = layers.BatchNorm(name=f'up{level}_bn', **dtypes)(h, train)
      if self.attention and use_attention and level in ATTENTION_AFTER:
        h = CosineAttention(self.attention_query_chunk, name=ATTENTION_AFTER[level], **dtypes)(h)
    h = jnp.concatenate([skips[0], h], axis=-1)  # [e1, d2]
    h = layers.conv_transpose(self.out_channels, 4, 2, 1, use_bias=True, name='up1', **dtypes)(
        nn.relu(h)
    )
    return jnp.tanh(layers.upcast(h))
