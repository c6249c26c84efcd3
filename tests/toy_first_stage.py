"""Toy first stages for the X_LG tests (named in configs as 'toy_first_stage:ToyStage', ...):
small Flax modules under the first-stage contract of lgnet_jax/models/first_stage.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class ToyStage(nn.Module):
  """A convolution, BatchNorm (so freezing has statistics to keep), and a 3-channel tanh."""

  features: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = nn.Conv(self.features, (3, 3))(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(h))
    return jnp.tanh(nn.Conv(3, (3, 3))(h))


class FourChannels(nn.Module):
  """Breaks the contract: returns 4 channels."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    return nn.Conv(4, (1, 1))(x)


def not_a_module(**kwargs) -> str:
  del kwargs
  return 'a string'
