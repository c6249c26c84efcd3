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
import logging as python_logging
import os
import pathlib
import shutil
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from lgnet_jax.runtime import distributed
from lgnet_jax import configs, errors, fileio

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
STATE_ITEM = 'state'
DATA_ITEM = 'data'
UNREADABLE_DIR = 'unreadable_checkpoints'  # where training moves checkpoints it cannot read
# Model settings that change neither the networks' parameters nor their dtypes: a run may
# resume with other values.
# (first_stage_weights is read once, by a fresh start: the checkpoints hold the weights.)
RUNTIME_MODEL_FIELDS = ('remat', 'attention_query_chunk', 'dtype', 'first_stage_weights')
# The settings that shape the networks' parameters (what `init_from` must match).
SHAPE_MODEL_FIELDS = ('variant', 'ngf', 'ngf_local', 'ndf', 'first_stage', 'first_stage_args')
# The bundled default config (configs/ is the package lgnet_jax.configs).
DEFAULT_CONFIG_FILE = configs.DIRECTORY / 'default.py'
T = TypeVar('T')


class WorkdirError(errors.UserError):
  """A workdir that cannot be used (missing config or checkpoint, unreadable, not writable)."""


def as_path(path: str | os.PathLike) -> epath.Path:
  """A workdir path: local paths made absolute, URLs kept as they are."""
  return epath.Path(path) if fileio.is_remote(path) else epath.Path(pathlib.Path(path).resolve())


def check_writable(workdir: str | os.PathLike) -> None:
  """A WorkdirError unless `workdir` is a folder, or can be one, that accepts new files.

  Checked before anything is written or compiled; nothing is left behind. Cloud-storage
  URLs are not checked (their permissions show on the first write).
  """
  if fileio.is_remote(workdir):
    return
  path = pathlib.Path(workdir).resolve()
  existing = fileio.nearest_existing(path)
  if not existing.is_dir():
    where = 'is a file' if existing == path else f'cannot be created: {existing} is a file'
    raise WorkdirError(f'workdir {path} {where}; give a folder with --workdir')
  folders = [existing]
  if (path / CHECKPOINT_DIR).is_dir():
    folders.append(path / CHECKPOINT_DIR)
  for folder in folders:
    try:
      fileio.check_writable(folder)
    except OSError as e:
      raise WorkdirError(
          f'cannot write to workdir {path}: {e.strerror or e} ({folder}); '
          'choose another --workdir'
      ) from None


_UNITS = (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10))


def _unit(count: int) -> tuple[str, int]:
  """The largest unit `count` bytes fill at least once (bytes below 1 KiB)."""
  return next(((name, size) for name, size in _UNITS if count >= size), ('bytes', 1))


def _number(value: float, decimals: int) -> str:
  """`value` with at most `decimals` decimals, trailing zeros dropped."""
  text = f'{value:.{decimals}f}'
  return text.rstrip('0').rstrip('.') if '.' in text else text


def _three_digits(value: float) -> int:
  """The decimals that give `value` three significant digits (none at 100 and above)."""
  return 0 if value >= 100 else 1 if value >= 10 else 2


def _readable(count: int) -> str:
  """`count` bytes to three significant digits: 512 bytes, 52.3 KiB, 90 MiB, 1.25 GiB."""
  name, size = _unit(count)
  if size == 1:
    return f'{count} byte' + ('' if count == 1 else 's')
  return f'{_number(count / size, _three_digits(count / size))} {name}'


def _told_apart(smaller: int, larger: int) -> tuple[str, str]:
  """Both sizes in the larger's unit to three significant digits, or more where those look
  the same; in bytes when two more digits do not tell them apart."""
  name, size = _unit(larger)
  for extra in range(3 if size > 1 else 0):
    texts = tuple(
        f'{_number(count / size, _three_digits(count / size) + extra)} {name}'
        for count in (smaller, larger)
    )
    if texts[0] != texts[1]:
      return texts
  return f'{smaller} bytes', f'{larger} bytes'


def check_free_space(workdir: str | os.PathLike, needed_bytes: int) -> None:
  """A WorkdirError when the workdir's filesystem has less room than one checkpoint needs."""
  if fileio.is_remote(workdir):
    return
  path = pathlib.Path(workdir).resolve()
  free = shutil.disk_usage(fileio.nearest_existing(path)).free
  if free < needed_bytes:
    has, needs = _told_apart(free, needed_bytes)
    raise WorkdirError(
        f'workdir {path} has {has} free but a checkpoint needs about {needs} '
        f'({_readable(needed_bytes - free)} more); free some space or choose another --workdir'
    )


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename: never a half-written file.

  The file gets the user's umask permissions (see fileio.py). On cloud storage an object
  appears whole when its upload completes, so it is written directly.
  """
  if fileio.is_remote(path):
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).write_text(text)
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fileio.atomic_write_text(path, text)


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Loads a `get_config()` Python config file, as `--config=FILE` does.

  A bundled config (a file of configs/) is the module lgnet_jax.configs.NAME, so each file
  loads as one module under one name; any other file runs as a script of its own.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise WorkdirError(f'config file {path} does not exist')
  if path.resolve().parent == configs.DIRECTORY and path.suffix == '.py':
    return importlib.import_module(f'lgnet_jax.configs.{path.stem}').get_config()
  spec = importlib.util.spec_from_file_location(f'_lgnet_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def save_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Writes config.json (process 0 only): by a fresh start, which defines the networks."""
  if jax.process_index() == 0:
    atomic_write_text(as_path(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2) + '\n')


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a workdir was written with, on top of the current defaults.

  Defaults added to the project after the workdir was written are kept; every field the
  workdir records wins.
  """
  path = as_path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise WorkdirError(
        f'{workdir} is not an lgnet_jax workdir: {path} is missing '
        '(create one by training or with python -m lgnet_jax.tools.import_official)'
    )
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


def model_differences(
    there: ml_collections.ConfigDict,
    here: ml_collections.ConfigDict,
    fields: Sequence[str] | None = None,
) -> list[str]:
  """`model.KEY is X there but Y here` for each model setting of `fields` that differs.

  Without `fields`: every setting of the `model` section but RUNTIME_MODEL_FIELDS. An unset
  `ngf` is the variant's default width.
  """
  from lgnet_jax.models import lgnet  # pylint: disable=import-outside-toplevel

  def value(model: ml_collections.ConfigDict, key: str):
    if key == 'ngf':
      return model.get('ngf') or lgnet.DEFAULT_NGF.get(model.get('variant'), 64)
    found = model.get(key)
    # Sections (first_stage_args) compare by content: a ConfigDict made by absl's config flags
    # and one read back from config.json differ as objects.
    return found.to_dict() if isinstance(found, ml_collections.ConfigDict) else found

  keys = fields or [
      key for key in sorted(set(there.model) | set(here.model)) if key not in RUNTIME_MODEL_FIELDS
  ]
  return [
      f'model.{key} is {value(there.model, key)!r} there but {value(here.model, key)!r} here'
      for key in keys
      if value(there.model, key) != value(here.model, key)
  ]


def checkpoint_manager(
    workdir: str | os.PathLike,
    max_to_keep: int | None = None,
    async_save: bool = False,
    read_only: bool = False,
) -> ocp.CheckpointManager:
  """The orbax CheckpointManager of WORKDIR/checkpoints; `read_only` creates no folder."""
  directory = as_path(workdir) / CHECKPOINT_DIR
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, enable_async_checkpointing=async_save
  )
  return ocp.CheckpointManager(directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))


def resolve_step(manager: ocp.CheckpointManager, step: int | None = None) -> int:
  """`step`, or the latest step, checked to exist."""
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise WorkdirError(
        f'no checkpoint {"" if step is None else f"at step {step} "}in {manager.directory}'
    )
  return step


def has_data_state(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether checkpoint `step` holds this process's input position for the current process count.

  grain writes one file per process, named by process index and count; a checkpoint written
  by another number of processes has none for this layout.
  """
  name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
  return (epath.Path(manager.directory) / str(step) / DATA_ITEM / name).is_file()


def describe_error(error: BaseException, limit: int = 240) -> str:
  """The innermost cause of `error` as one short line (orbax wraps tensorstore's errors)."""
  while (error.__cause__ or error.__context__) is not None:
    error = error.__cause__ or error.__context__
  text = getattr(error, 'strerror', None) or str(error).strip() or type(error).__name__
  line = ' '.join(text.splitlines()[0].split())
  return line if len(line) <= limit else line[: limit - 3] + '...'


def _from_abandoned_read(unraisable) -> bool:
  """An error of orbax's reading coroutines or of asyncio's closed loop, raised where no one
  can catch it (after the read they belonged to has failed)."""
  code = getattr(unraisable.object, 'cr_code', None)
  files = [frame.filename for frame in traceback.extract_tb(unraisable.exc_traceback)]
  if code is not None:
    files.append(code.co_filename)
  return any(f'{os.sep}orbax{os.sep}' in f or f'{os.sep}asyncio{os.sep}' in f for f in files)


def _quiet_abandoned_reads() -> None:
  """Silences what a failed orbax read leaves behind (installed once per process).

  The reads of the failed checkpoint that were still running finish in tensorstore's
  threads and call back into orbax's closed event loop, and its abandoned coroutines are
  closed: a traceback each (tens of thousands of lines for a training state), plus
  asyncio's reports of the abandoned tasks. The failure itself is reported once, by
  `restore_readable`.
  """
  if getattr(sys.unraisablehook, 'lgnet_jax_quiet', False):
    return
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    if not _from_abandoned_read(unraisable):
      previous(unraisable)

  hook.lgnet_jax_quiet = True
  sys.unraisablehook = hook
  python_logging.getLogger('asyncio').addFilter(
      lambda record: not (
          'exception was never retrieved' in record.getMessage() and 'orbax' in record.getMessage()
      )
  )
  warnings.filterwarnings(
      'ignore',
      message="coroutine '.*' was never awaited",
      category=RuntimeWarning,
      module=r'orbax\.',
  )


def restore_readable(
    manager: ocp.CheckpointManager,
    restore: Callable[[int], T],
    step: int | None = None,
    fallback: bool = True,
) -> tuple[int, T]:
  """`(step, restore(step))`: `step`, or the newest checkpoint that can be read.

  A checkpoint that cannot be read (a truncated or missing file) is named in one warning
  line and the next older one is tried; with `fallback` False, or for an explicit `step`,
  it is a WorkdirError that says what to do. Training, evaluation and inference all
  restore through here.
  """
  directory = epath.Path(manager.directory)
  steps = (
      sorted(manager.all_steps(), reverse=True) if step is None else [resolve_step(manager, step)]
  )
  if not steps:
    raise WorkdirError(f'no checkpoint in {directory}')
  _quiet_abandoned_reads()  # before: a failing read's leftovers may come before its error
  for index, candidate in enumerate(steps):
    try:
      return candidate, restore(candidate)
    except Exception as e:  # pylint: disable=broad-except  # tensorstore raises plain Exception
      cause, older = describe_error(e), steps[index + 1 :]
      if index and not older:
        raise WorkdirError(
            f'no checkpoint in {directory} can be read: checkpoints '
            f'{", ".join(map(str, steps))}; the oldest: {cause}'
        ) from None
      if not older:
        raise WorkdirError(
            f'checkpoint {candidate} in {directory} cannot be read ({cause})'
        ) from None
      if not fallback:
        raise WorkdirError(
            f'checkpoint {candidate} in {directory} cannot be read ({cause}); move '
            f'{directory / str(candidate)} away to use checkpoint {older[0]}, or set '
            '--config.train.restore_fallback=True'
        ) from None
      logging.warning(
          'checkpoint %d in %s cannot be read (%s); trying checkpoint %d',
          candidate,
          directory,
          cause,
          older[0],
      )
  raise AssertionError('every step returned or raised')


def move_aside(directory: epath.Path, steps: Sequence[int]) -> None:
  """Moves the unreadable checkpoints `steps` of `directory` (WORKDIR/checkpoints) to
  WORKDIR/unreadable_checkpoints/ (process 0), so training can write those steps again; the
  folders are kept for inspection."""
  if not steps:
    return
  if jax.process_index() == 0:
    target_dir = directory.parent / UNREADABLE_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target, suffix = target_dir / str(step), 1
      while target.exists():
        target, suffix = target_dir / f'{step}.{suffix}', suffix + 1
      (directory / str(step)).rename(target)
      logging.warning('moved the unreadable checkpoint %d to %s', step, target)
  distributed.barrier('unreadable_checkpoints_moved', 300)


def state_restore_args(abstract) -> ocp.args.PyTreeRestore:
  """Restores the arrays of `abstract` (ShapeDtypeStructs with shardings) from a saved state.

  Entries of the checkpoint that `abstract` lacks are skipped: fields it was not asked for,
  and those of older states (their `rng` key).
  """
  return ocp.args.PyTreeRestore(
      item=abstract,
      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=True,
  )


def restore(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict | None = None,
    step: int | None = None,
    fields: tuple[str, ...] | None = None,
    sharding: jax.sharding.Sharding | None = None,
):
  """`(step, state)`: the TrainState of checkpoint `step` (default: the newest readable one),
  or a dict of only `fields`.

  Reading only some fields (e.g. the networks for inference) skips the rest, such as the
  optimizer states. Arrays are placed with `sharding` (default: this process's first
  device), whatever number of processes and devices wrote the checkpoint. `config`
  defaults to the workdir's own; its `train.restore_fallback` says whether an unreadable
  latest checkpoint falls back to an older one (see `restore_readable`).
  """
  from lgnet_jax.training import state as train_state_lib  # pylint: disable=import-outside-toplevel

  config = config or load_config(workdir)
  abstract_state = jax.eval_shape(
      lambda: train_state_lib.create_train_state(config, jax.random.PRNGKey(0))
  )
  names = fields or tuple(
      f.name for f in dataclasses.fields(abstract_state) if f.metadata.get('pytree_node', True)
  )
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
      {name: getattr(abstract_state, name) for name in names},
  )
  manager = checkpoint_manager(workdir, read_only=True)
  args = ocp.args.Composite(**{STATE_ITEM: state_restore_args(abstract)})
  step, restored = restore_readable(
      manager,
      lambda s: manager.restore(s, args=args)[STATE_ITEM],
      step,
      fallback=config.train.restore_fallback,
  )
  return step, dict(restored) if fields else abstract_state.replace(**restored)


def restore_state(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict | None = None,
    step: int | None = None,
    fields: tuple[str, ...] | None = None,
    sharding: jax.sharding.Sharding | None = None,
):
  """`restore(...)` without the step: the TrainState, or a dict of only `fields`."""
  return restore(workdir, config, step, fields, sharding)[1]
