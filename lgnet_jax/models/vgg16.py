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


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 (odd trailing rows and columns dropped).  # (B, H/2, W/2, C)

  Written as a maximum over a reshape rather than `nn.max_pool`: the gradient of a
  `reduce_window` maximum is a select-and-scatter that XLA's CPU backend runs several times
  slower than the elementwise gradient of this form. The gradients differ only where inputs
  tie for the maximum (this form splits it between them): after a ReLU those are zeros, whose
  gradient the ReLU sets to 0 either way.
  """
  batch, height, width, channels = x.shape
  x = x[:, : height // 2 * 2, : width // 2 * 2]
  return jnp.max(x.reshape(batch, height // 2, 2, width // 2, 2, channels), axis=(2, 4))


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
        h = nn.relu(
            layers.conv(
                width,
                3,
                1,
                1,
                use_bias=True,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.initializers.kaiming_normal(),
                name=f'conv{block}_{i + 1}',
            )(h)
        )
      h = max_pool_2x2(h)
      features[f'pool{block}'] = h
    return features


def random_params(seed: int) -> dict:
  """Randomly initialised VGG16 parameters (demos and benchmarks; real training loads ImageNet's)."""
  # Jitted: eagerly, each operation of the initialisers compiles apart (11.9 s instead of 2.7 s
  # on a 2-core EPYC host); the values are the same.
  init = jax.jit(VGG16Features().init)
  return init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)))['params']
