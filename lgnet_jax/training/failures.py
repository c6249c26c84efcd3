"""What stops a training run once it has started: `TrainingError` (exit status 1), raised by
the non-finite check below and by a failed checkpoint save (see checkpoints.py)."""

import math
from collections.abc import Mapping

import jax


class TrainingError(RuntimeError):
  """Training cannot go on (a non-finite loss, a failed save); the last good checkpoint is kept."""


def check_finite(step: int, terms: Mapping[str, jax.Array]) -> dict[str, float]:
  """Host values of the loss terms; a NaN or Inf stops training naming the step and term."""
  values = {k: float(v) for k, v in jax.device_get(dict(terms)).items()}
  bad = [f'{k}={v}' for k, v in sorted(values.items()) if not math.isfinite(v)]
  if bad:
    raise TrainingError(
        f'non-finite loss at step {step}: {", ".join(bad)}; training stopped, '
        'the last checkpoint is the last good state'
    )
  return values
