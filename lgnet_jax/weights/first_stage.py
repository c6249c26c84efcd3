"""The weights of a frozen first stage (`model.first_stage_weights`), put into a fresh state.

Two formats, both holding {'params': ..., 'batch_stats': ...} ('batch_stats' only where the
module has BatchNorm), laid out as the module's own `init` returns them:
  FILE.msgpack  `flax.serialization.msgpack_serialize` of that dict;
  a directory   an orbax checkpoint of it (`orbax.checkpoint.StandardCheckpointer().save`).
They are read once, by a fresh start: the run's checkpoints hold them as generator stage 'G1'.
"""

import os
import pathlib

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp

from lgnet_jax import errors

STAGE = 'G1'


class FirstStageWeightsError(errors.UserError):
  """Weights that are missing, unreadable or not those of the configured first stage."""


def load(path: str | os.PathLike) -> dict:
  """{'params', 'batch_stats'} of a .msgpack file or an orbax checkpoint directory."""
  path = pathlib.Path(path)
  try:
    if path.is_dir():
      tree = ocp.StandardCheckpointer().restore(path.resolve())
    elif path.is_file():
      tree = flax.serialization.msgpack_restore(path.read_bytes())
    else:
      raise FirstStageWeightsError(f'first-stage weights {path} do not exist')
  except FirstStageWeightsError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise FirstStageWeightsError(
        f'cannot read first-stage weights {path} (a .msgpack file or an orbax checkpoint '
        f'directory): {errors.clip(errors.one_line(e), 300)}'
    ) from None
  if not isinstance(tree, dict) or 'params' not in tree:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise FirstStageWeightsError(
        f"first-stage weights {path} hold {keys}, not {{'params', 'batch_stats'}} as the "
        "module's init returns them"
    )
  return {'params': tree['params'], 'batch_stats': tree.get('batch_stats', {})}


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {
      jax.tree_util.keystr(path): tuple(np.shape(leaf))
      for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _check_layout(path: str, name: str, given, expected) -> None:
  given_shapes, expected_shapes = _shapes(given), _shapes(expected)
  missing = sorted(set(expected_shapes) - set(given_shapes))
  extra = sorted(set(given_shapes) - set(expected_shapes))
  if missing or extra:
    raise FirstStageWeightsError(
        f'first-stage weights {path} do not fit the configured module: {name} '
        + '; '.join(
            part
            for part in (
                f'missing {errors.short_list(missing)}' if missing else '',
                f'unexpected {errors.short_list(extra)}' if extra else '',
            )
            if part
        )
    )
  for key, shape in expected_shapes.items():
    if given_shapes[key] != shape:
      raise FirstStageWeightsError(
          f'first-stage weights {path}: {name}{key} has shape {given_shapes[key]}, the '
          f'configured module expects {shape}'
      )


def into_generator(g_params: dict, g_batch_stats: dict, path: str) -> tuple[dict, dict]:
  """Generator params and BatchNorm statistics with stage 'G1' replaced by the weights at
  `path`, each value with the dtype and sharding of the one it replaces."""
  weights = load(path)
  stats = g_batch_stats.get(STAGE, {})
  _check_layout(path, 'params', weights['params'], g_params[STAGE])
  _check_layout(path, 'batch_stats', weights['batch_stats'], stats)

  def like(old, new):
    return jax.device_put(np.asarray(new, old.dtype), old.sharding)

  g_params = {**g_params, STAGE: jax.tree.map(like, g_params[STAGE], weights['params'])}
  if stats:
    g_batch_stats = {**g_batch_stats, STAGE: jax.tree.map(like, stats, weights['batch_stats'])}
  return g_params, g_batch_stats
