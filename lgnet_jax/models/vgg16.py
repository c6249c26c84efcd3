"""VGG16 feature extractor up to pool3 (torchvision's `features[0:17]`), for the losses."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgnet_jax.models import layers

# (block, convs in block, width); conv names follow the VGG paper: conv{block}_{i}.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256))
# torchvision indices of those convs inside `features`, in order.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14)


def conv_names() -> list[str]:
  return [f'conv{block}_{i + 1}' for block, count, _ in VGG16_BLOCKS for i in range(count)]


class VGG16Features(nn.Module):
  """Returns {'pool1', 'pool2', 'pool3'} feature maps of a (B, H, W, 3) input."""
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    h = x.astype(self.dtype)
    features = {}
    for block, count, width in VGG16_BLOCKS:
      for i in range(count):
        h = nn.relu(layers.conv(width, 3, 1, 1, use_bias=True, dtype=self.dtype,
                                param_dtype=self.param_dtype,
                                kernel_init=nn.initializers.kaiming_normal(),
                                name=f'conv{block}_{i + 1}')(h))
      h = nn.max_pool(h, (2, 2), strides=(2, 2))
      features[f'pool{block}'] = h
    return features


def random_params(seed: int) -> dict:
  """Randomly initialised VGG16 parameters (demos and benchmarks; real training loads ImageNet's)."""
  return VGG16Features().init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)))['params']
