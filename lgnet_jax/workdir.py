"""The layout of a workdir, shared by training, the importer, evaluation and inference.

  WORKDIR/config.json       the full ml_collections config the networks were built from
  WORKDIR/checkpoints/N/    orbax checkpoints: item 'state' (TrainState), item 'data'
                            (the input iterator's position, when training wrote it)

A workdir is a local path or a cloud-storage URL (gs://bucket/run, as multi-host runs on
Cloud TPU need: every host must see it).
"""

import dataclasses
import importlib.util
import json
import os
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from lgnet_jax import fileio

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
STATE_ITEM = 'state'
DATA_ITEM = 'data'
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_FILE = REPO_ROOT / 'configs' / 'default.py'


class WorkdirError(ValueError):
  """A workdir that cannot be used (missing config or checkpoint)."""


def is_remote(path: str | os.PathLike) -> bool:
  """A cloud-storage URL such as gs://bucket/run."""
  return '://' in str(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """A workdir path: local paths made absolute, URLs kept as they are."""
  return epath.Path(path) if is_remote(path) else epath.Path(pathlib.Path(path).resolve())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename: never a half-written file.

  The file gets the user's umask permissions (see fileio.py). On cloud storage an object
  appears whole when its upload completes, so it is written directly.
  """
  if is_remote(path):
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_text(text)
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write_text(path, text)


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Loads a `get_config()` Python config file, as `--config=FILE` does."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise WorkdirError(f'config file {path} does not exist')
  spec = importlib.util.spec_from_file_location(f'_lgnet_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def save_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Writes config.json (process 0 only)."""
  if jax.process_index() == 0:
    atomic_write_text(as_path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2) + '\n')


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a workdir was written with, on top of the current defaults.

  Defaults added to the project after the workdir was written are kept; every field the
  workdir records wins.
  """
  path = as_path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise WorkdirError(f'{workdir} is not an lgnet_jax workdir: {path} is missing '
                       '(create one by training or with python -m lgnet_jax.tools.import_official)')
  try:
    saved = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise WorkdirError(f'cannot read {path}: {e}') from None
  config = load_config_file(DEFAULT_CONFIG_FILE)
  _merge_into(config, saved)
  return config


def _merge_into(config: ml_collections.ConfigDict, values: dict) -> None:
  with config.unlocked():
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
        _merge_into(config[key], value)
      else:
        config[key] = value


def checkpoint_manager(workdir: str | os.PathLike, max_to_keep: int | None = None,
                       async_save: bool = False, read_only: bool = False) -> ocp.CheckpointManager:
  """The orbax CheckpointManager of WORKDIR/checkpoints; `read_only` creates no folder."""
  directory = as_path(workdir) / CHECKPOINT_DIR
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))


def resolve_step(manager: ocp.CheckpointManager, step: int | None = None) -> int:
  """`step`, or the latest step, checked to exist."""
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise WorkdirError(f'no checkpoint {"" if step is None else f"at step {step} "}in {manager.directory}')
  return step


def has_data_state(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether checkpoint `step` holds this process's input position for the current process count.

  grain writes one file per process, named by process index and count; a checkpoint written
  by another number of processes has none for this layout.
  """
  name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
  return (epath.Path(manager.directory) / str(step) / DATA_ITEM / name).is_file()


def restore_state(workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None,
                  step: int | None = None, fields: tuple[str, ...] | None = None,
                  sharding: jax.sharding.Sharding | None = None):
  """The TrainState of checkpoint `step` (default: the latest), or a dict of only `fields`.

  Reading only some fields (e.g. the networks for inference) skips the rest, such as the
  optimizer states. Arrays are placed with `sharding` (default: this process's first
  device), whatever number of processes and devices wrote the checkpoint. `config`
  defaults to the workdir's own.
  """
  from lgnet_jax import train_state as train_state_lib  # pylint: disable=import-outside-toplevel
  config = config or load_config(workdir)
  abstract_state = jax.eval_shape(
      lambda: train_state_lib.create_train_state(config, jax.random.PRNGKey(0)))
  names = fields or tuple(f.name for f in dataclasses.fields(abstract_state)
                          if f.metadata.get('pytree_node', True))
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          {name: getattr(abstract_state, name) for name in names})
  manager = checkpoint_manager(workdir, read_only=True)
  restored = manager.restore(resolve_step(manager, step), args=ocp.args.Composite(**{
      STATE_ITEM: ocp.args.PyTreeRestore(
          item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True)}))[STATE_ITEM]
  return dict(restored) if fields else abstract_state.replace(**restored)
