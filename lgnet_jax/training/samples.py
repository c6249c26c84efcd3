"""Sample grids while training: the generators on a fixed batch, to TensorBoard and as
WORKDIR/samples.png (the latest one)."""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.sharding import NamedSharding

from lgnet_jax.data import image_io
from lgnet_jax.models import LGNet

SAMPLES_FILE = 'samples.png'  # the latest sample grid, next to the TensorBoard files
Batch = Mapping[str, jax.Array]


def sample_fn(generator: LGNet, replicated: NamedSharding) -> Callable:
  """`fn(generator_variables, batch) -> (outputs, batch)`, jitted and gathered on every
  process (replicated), so process 0 can write them."""
  return jax.jit(
      lambda variables, batch: (
          generator.apply(
              variables,
              batch['image'],
              batch['mask'],
              train=False,
              first_stage_out=batch.get('first_stage'),
          ),
          batch,
      ),
      out_shardings=replicated,
  )


def sample_grid(outputs: Mapping[str, jax.Array], batch: Batch, max_samples: int = 4) -> np.ndarray:
  """Rows of [masked input, merged1..mergedS, ground truth] as one (1, H', W', 3) image in [0, 1]."""
  images, masks = np.asarray(batch['image'])[:max_samples], np.asarray(batch['mask'])[:max_samples]
  stages = sorted(k for k in outputs if k.startswith('merged'))
  columns = [images * (1 - masks) + masks] + [np.asarray(outputs[k])[:max_samples] for k in stages]
  columns.append(images)
  rows = np.concatenate(columns, axis=2)  # (N, H, S*W, 3)
  grid = np.concatenate(list(rows), axis=0)[None]  # (1, N*H, S*W, 3)
  return np.clip((grid + 1.0) / 2.0, 0.0, 1.0)


def write_samples(writer: Any, workdir: epath.Path, step: int, grid: np.ndarray) -> None:
  """The sample grid to TensorBoard (`writer`, a clu MetricWriter) and, as the latest one, to
  WORKDIR/samples.png (process 0)."""
  writer.write_images(step, {'samples': grid})
  if jax.process_index() == 0:
    image_io.save_image_atomic(workdir / SAMPLES_FILE, np.round(grid[0] * 255).astype(np.uint8))
