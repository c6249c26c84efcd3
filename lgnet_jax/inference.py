"""Inpainting with a trained or imported LGNet: `Inpainter.from_workdir(path)(images, masks)`."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lgnet_jax import train_state as train_state_lib
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.models import build_generator


def restore_state_fields(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                         fields: tuple[str, ...], step: int | None = None,
                         sharding: jax.sharding.Sharding | None = None) -> dict:
  """Reads only some TrainState fields (e.g. the networks, not the optimizers) of a checkpoint."""
  abstract_state = jax.eval_shape(
      lambda: train_state_lib.create_train_state(config, jax.random.PRNGKey(0)))
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          {field: getattr(abstract_state, field) for field in fields})
  manager = workdir_lib.checkpoint_manager(workdir, read_only=True)
  restored = manager.restore(workdir_lib.resolve_step(manager, step), args=ocp.args.Composite(**{
      workdir_lib.STATE_ITEM: ocp.args.PyTreeRestore(
          item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True)}))
  return restored[workdir_lib.STATE_ITEM]


class Inpainter:
  """Runs every LGNet stage in evaluation mode (BN running statistics).

  Images are NHWC float32 in [-1, 1] with H and W multiples of 256; masks are (B, H, W, 1)
  with 1 for a hole pixel. The forward pass is jit-compiled once per input shape.
  """

  def __init__(self, config: ml_collections.ConfigDict, variables: dict):
    self.config = config
    self.generator = build_generator(config.model)
    self.variables = variables
    self.num_stages = len(self.generator.stages)
    self._forward = jax.jit(functools.partial(self.generator.apply, train=False))

  @classmethod
  def from_workdir(cls, path: str | os.PathLike, step: int | None = None) -> 'Inpainter':
    """Loads the latest checkpoint (or `step`) of a training or import workdir."""
    config = workdir_lib.load_config(path)
    restored = restore_state_fields(path, config, ('g_params', 'g_batch_stats'), step)
    return cls(config, {'params': restored['g_params'], 'batch_stats': restored['g_batch_stats']})

  def _check(self, images: jax.Array, masks: jax.Array) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be (B, H, W, 3), got {images.shape}')
    if masks.shape != images.shape[:3] + (1,):
      raise ValueError(f'masks must be (B, H, W, 1) matching images {images.shape}, got {masks.shape}')
    if images.shape[1] % 256 or images.shape[2] % 256:
      raise ValueError(f'image height and width must be multiples of 256, got {images.shape[1:3]}')

  def stages(self, images: np.ndarray | jax.Array, masks: np.ndarray | jax.Array) -> dict[str, jax.Array]:
    """{'out1', 'merged1', ..., 'merged3'}: every stage's raw output and its composite."""
    images, masks = jnp.asarray(images, jnp.float32), jnp.asarray(masks, jnp.float32)
    self._check(images, masks)
    return self._forward(self.variables, images, masks)

  def __call__(self, images: np.ndarray | jax.Array, masks: np.ndarray | jax.Array) -> jax.Array:
    """The final composite (merged3 for LGNet): known pixels kept, holes filled."""
    return self.stages(images, masks)[f'merged{self.num_stages}']
