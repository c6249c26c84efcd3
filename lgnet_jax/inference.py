"""`from lgnet_jax.inference import Inpainter`: the documented path of
lgnet_jax.serving.inference."""

from lgnet_jax.serving.inference import Inpainter

__all__ = ['Inpainter']
