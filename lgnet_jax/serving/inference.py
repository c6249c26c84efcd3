"""Inpainting with a trained or imported LGNet: `Inpainter.from_workdir(path)(images, masks)` on
model-size batches, `.fill(photo, mask)` on a photo of any size."""

import argparse
import functools
import os
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lgnet_jax.serving import photo
from lgnet_jax import workdir as workdir_lib
from lgnet_jax.models import build_generator
from lgnet_jax.models import first_stage as first_stage_lib


def add_allow_user_code(parser: argparse.ArgumentParser) -> None:
  """The commands' opt-in (`--allow-user-code`) to `from_workdir`'s `allow_user_code`."""
  parser.add_argument(
      '--allow-user-code',
      action='store_true',
      help="import the workdir's first stage when it is code it names (model.first_stage)",
  )


class Inpainter:
  """Runs every LGNet stage in evaluation mode (BN running statistics).

  Images are NHWC float32 in [-1, 1] with H and W multiples of 256; masks are (B, H, W, 1)
  with 1 for a hole pixel; behind precomputed first-stage results (an X_LG workdir), those
  results (B, H, W, 3) in [-1, 1] come with every call. The forward pass is jit-compiled once
  per input shape.
  """

  def __init__(self, config: ml_collections.ConfigDict, variables: dict, step: int | None = None):
    self.config = config
    self.step = step  # the checkpoint step the variables come from, when known
    self.generator = build_generator(config.model)
    self.variables = variables
    self.num_stages = len(self.generator.stages)
    self._forward = jax.jit(functools.partial(self.generator.apply, train=False))

  @classmethod
  def from_workdir(
      cls, path: str | os.PathLike, step: int | None = None, allow_user_code: bool = False
  ) -> 'Inpainter':
    """Loads the latest checkpoint (or `step`) of a training or import workdir. A workdir whose
    first stage is code it names (an X_LG workdir) is refused unless `allow_user_code`."""
    config = workdir_lib.load_config(path)
    first_stage_lib.check_allowed(config.model, allow_user_code, f'workdir {path}')
    step, restored = workdir_lib.restore(path, config, step, fields=('g_params', 'g_batch_stats'))
    variables = {'params': restored['g_params'], 'batch_stats': restored['g_batch_stats']}
    return cls(config, variables, step)

  def _check(self, images: jax.Array, masks: jax.Array) -> None:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be (B, H, W, 3), got {images.shape}')
    if masks.shape != images.shape[:3] + (1,):
      raise ValueError(
          f'masks must be (B, H, W, 1) matching images {images.shape}, got {masks.shape}'
      )
    if images.shape[1] % 256 or images.shape[2] % 256:
      raise ValueError(f'image height and width must be multiples of 256, got {images.shape[1:3]}')

  @property
  def needs_first_stage(self) -> bool:
    """Whether every call takes the first stage's results (a precomputed first stage)."""
    return self.generator.first_stage == first_stage_lib.PRECOMPUTED

  def stages(
      self,
      images: np.ndarray | jax.Array,
      masks: np.ndarray | jax.Array,
      first_stage: np.ndarray | jax.Array | None = None,
  ) -> dict[str, jax.Array]:
    """{'out1', 'merged1', ..., 'merged3'}: every stage's raw output and its composite."""
    images, masks = jnp.asarray(images, jnp.float32), jnp.asarray(masks, jnp.float32)
    self._check(images, masks)
    if self.needs_first_stage != (first_stage is not None):
      raise ValueError(
          'this workdir runs behind precomputed first-stage results: pass first_stage'
          if self.needs_first_stage
          else 'first_stage is only for a workdir whose first stage is precomputed'
      )
    if first_stage is not None:
      first_stage = jnp.asarray(first_stage, jnp.float32)
      if first_stage.shape != images.shape:
        raise ValueError(f'first_stage must be {images.shape} like images, got {first_stage.shape}')
    return self._forward(self.variables, images, masks, first_stage_out=first_stage)

  def __call__(
      self,
      images: np.ndarray | jax.Array,
      masks: np.ndarray | jax.Array,
      first_stage: np.ndarray | jax.Array | None = None,
  ) -> jax.Array:
    """The final composite (merged3 for LGNet): known pixels kept, holes filled."""
    return self.stages(images, masks, first_stage)[f'merged{self.num_stages}']

  def fill(
      self,
      image: np.ndarray,
      mask: np.ndarray,
      strategy: str = photo.DEFAULT_STRATEGY,
      crop_margin: int = photo.DEFAULT_CROP_MARGIN,
      batch_size: int = 8,
      stop: threading.Event | None = None,
      first_stage: np.ndarray | None = None,
      dilate_mask: int = 0,
      feather: int = 0,
  ) -> np.ndarray:
    """A photo of any size, (H, W, 3) uint8, with the holes of `mask` ((H, W), 1 = hole) filled.

    `strategy` 'resize' runs the network on the whole photo resized; 'crop' on a square around
    each group of holes at native resolution; 'auto' picks (see `lgnet_jax.serving.photo`). Known
    pixels are returned bit-identical. Once `stop` is set, photo.Stopped is raised before the
    next network batch. `first_stage` (H, W, 3) uint8: the precomputed first stage's result
    for this photo (only, and always, for such a workdir). `dilate_mask` grows every hole by a
    disk of that many pixels; `feather` fills a band of that many pixels around the holes too
    and blends it in (its pixels change; see `lgnet_jax.serving.mask_edits`).
    """
    return photo.fill(
        self,
        image,
        mask,
        strategy,
        crop_margin,
        size=self.config.model.image_size,
        batch_size=batch_size,
        stop=stop,
        first_stage=first_stage,
        dilate_mask=dilate_mask,
        feather=feather,
    )
