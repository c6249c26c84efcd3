"""LGNet networks in Flax linen, NHWC."""

from lgnet_jax.models.discriminator import Discriminator
from lgnet_jax.models.lgnet import LGNet, VARIANTS, build_generator
from lgnet_jax.models.local_refiner import LocalRefiner
from lgnet_jax.models.unet import UNet
from lgnet_jax.models.vgg16 import VGG16Features

__all__ = [
    'Discriminator',
    'LGNet',
    'LocalRefiner',
    'UNet',
    'VGG16Features',
    'VARIANTS',
    'build_generator',
]
