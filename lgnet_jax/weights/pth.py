"""Read PyTorch ``.pth`` state-dict checkpoints into numpy arrays without torch.

Both layouts ``torch.save`` has produced are supported:

* the zip archive written by PyTorch >= 1.6 (``<prefix>/data.pkl`` plus one
  ``<prefix>/data/<key>`` record of raw bytes per storage), and
* the legacy stream written by PyTorch <= 1.5 or with
  ``_use_new_zipfile_serialization=False`` (magic number, protocol version,
  sys_info, the main pickle, the list of storage keys, then each storage as an
  int64 element count followed by its raw bytes).

The pickles are read by `pth_pickle`, which never runs code named by the file. Memory stays
near the checkpoint's true size whatever the file declares: before any tensor data is read,
every tensor must lie inside its storage and every storage must be about what its tensors
read; each zip record must declare exactly its storage's size and expand at most
`_MAX_COMPRESSION` times (``torch.save`` stores records uncompressed; a record that inflates
from kilobytes to gigabytes is a decompression bomb). The caller's ``select`` then sees every
tensor's name and shape, refuses the file or names the tensors it needs, and only their
storages are read. Every failure surfaces as :class:`CheckpointFormatError` with a one-line
message that names the file, and nothing is returned unless every tensor was read.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Collection, Mapping
from typing import BinaryIO

import numpy as np

from lgnet_jax import errors
from lgnet_jax.weights import pth_pickle
from lgnet_jax.weights.pth_pickle import Invalid, PendingTensor

__all__ = ["CheckpointFormatError", "Select", "load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"
# A storage may hold up to twice what its tensors read, plus this: torch saves a view's whole
# storage, and a small one costs little; a larger excess is refused unread.
_SLACK_BYTES = 64 << 10
# Deflate shrinks float weights by about 7% (1.08:1 on the G2 fixture); only near-constant
# data reaches 100:1 (zeros: 1000:1).
_MAX_COMPRESSION = 100
_MAX_SMALL_RECORD = 64  # the zip's `byteorder` record: "little" or "big"
_CHUNK_BYTES = 1 << 20  # read at a time: the copy a zip read makes stays small

Shapes = dict[str, tuple[int, ...]]
# The caller's look at the tensors before their data is read: {name: shape} in file order ->
# the names to read (or raise the caller's own UserError).
Select = Callable[[Shapes], Collection[str]]


class CheckpointFormatError(errors.UserError):
  """Raised when a file is not a readable PyTorch state-dict checkpoint."""


def _check_storages(
    state: Mapping[str, PendingTensor], storages: Mapping[str, tuple[np.dtype, int]]
) -> None:
  """Every tensor inside its storage; no storage far larger than what its tensors read."""
  needed = dict.fromkeys(storages, 0)
  for name, tensor in state.items():
    ref, end = tensor.storage, tensor.end()
    if end > ref.numel:
      raise Invalid(
          f"tensor {name!r} of shape {tensor.size} (offset {tensor.storage_offset}, stride "
          f"{tensor.stride}) reads past the end of {ref!r} ({ref.numel} elements)"
      )
    if end:
      needed[ref.key] = max(needed[ref.key], ref.offset + end)
  for key, (dtype, numel) in storages.items():
    held, used = numel * dtype.itemsize, needed[key] * dtype.itemsize
    if held > 2 * used + _SLACK_BYTES:
      raise Invalid(
          f"storage {key!r} holds {held} bytes but its tensors read only {used}; refused "
          "unread (save each tensor's .clone(), not a view of a larger one)"
      )


def _selected(state: dict[str, PendingTensor], select: Select | None) -> dict[str, PendingTensor]:
  """The tensors the caller wants, once it has seen every name and shape."""
  if select is None:
    return state
  wanted = set(select({name: tensor.size for name, tensor in state.items()}))
  return {name: tensor for name, tensor in state.items() if name in wanted}


def _read_storage(
    stream: BinaryIO, dtype: np.dtype, numel: int, byteorder: str, what: str
) -> np.ndarray:
  """`numel` elements read from `stream` into a new array in native byte order."""
  array = np.empty(numel, dtype)
  raw = array.view(np.uint8)
  done = 0
  while done < raw.size:
    count = stream.readinto(memoryview(raw[done : done + _CHUNK_BYTES]))
    if not count:
      raise Invalid(f"file is truncated: {what} needs {raw.size} bytes, read {done}")
    done += count
  if byteorder != sys.byteorder and dtype.itemsize > 1:
    array.byteswap(inplace=True)
  return array


def _is_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
  """Row-major strides (a dimension of size 1 may have any)."""
  expected = 1
  for dim, step in zip(reversed(size), reversed(stride)):
    if dim != 1 and step != expected:
      return False
    expected *= dim
  return True


def _materialise(tensor: PendingTensor, storage: np.ndarray, sole: bool) -> np.ndarray:
  """The tensor as a contiguous array: its storage itself when it is the storage's only,
  whole, row-major tensor (no copy), else a copy of its elements."""
  ref = tensor.storage
  if tensor.numel == 0:
    return np.zeros(tensor.size, dtype=ref.dtype)
  whole = ref.offset == 0 and tensor.storage_offset == 0 and tensor.numel == storage.size
  if sole and whole and _is_contiguous(tensor.size, tensor.stride):
    return storage.reshape(tensor.size)
  base = storage[ref.offset + tensor.storage_offset :]
  byte_strides = tuple(step * storage.itemsize for step in tensor.stride)
  view = np.lib.stride_tricks.as_strided(
      base, shape=tensor.size, strides=byte_strides, writeable=False
  )
  return np.array(view, dtype=storage.dtype, order="C", copy=True)


def _storage_keys(state: Mapping[str, PendingTensor]) -> collections.Counter:
  """How many non-empty tensors read each storage."""
  return collections.Counter(t.storage.key for t in state.values() if t.numel)


def _materialise_all(
    state: Mapping[str, PendingTensor], storages: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
  """Turn every pending tensor into an array."""
  users = _storage_keys(state)
  return {
      name: _materialise(t, storages.get(t.storage.key), users[t.storage.key] == 1)
      for name, t in state.items()
  }


def _check_record(info: zipfile.ZipInfo, size: int | None = None, limit: int | None = None) -> None:
  """Refuses a zip record, before inflating it, whose declared size is not `size`, is over
  `limit`, or is far more than its compressed size."""
  name, declared = info.filename, info.file_size
  if size is not None and declared != size:
    raise Invalid(f"storage record {name!r} holds {declared} bytes, expected {size}")
  if limit is not None and declared > limit:
    raise Invalid(
        f"zip record {name!r} declares {declared} bytes; such a record holds at most {limit}"
    )
  if declared > _MAX_COMPRESSION * info.compress_size + _SLACK_BYTES:
    raise Invalid(
        f"zip record {name!r} inflates {info.compress_size} bytes to {declared} (over "
        f"{_MAX_COMPRESSION}:1): a decompression bomb, not a torch.save file"
    )


def _load_zip(file: BinaryIO, select: Select | None) -> dict[str, np.ndarray]:
  """Load the zip-archive format of PyTorch >= 1.6."""
  try:
    archive = zipfile.ZipFile(file)
  except zipfile.BadZipFile as exc:
    raise Invalid(f"truncated or corrupt zip archive ({exc})") from exc
  with archive:
    names = set(archive.namelist())
    records = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    if len(records) != 1:
      found = "no" if not records else f"{len(records)}"
      raise Invalid(f"zip archive is not a PyTorch checkpoint ({found} '<name>/data.pkl' records)")
    prefix = records[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      _check_record(archive.getinfo(prefix + "byteorder"), limit=_MAX_SMALL_RECORD)
      byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
      if byteorder not in ("little", "big"):
        raise Invalid(f"unknown byteorder {byteorder!r}")
    _check_record(archive.getinfo(records[0]), limit=pth_pickle.MAX_PICKLE_BYTES)
    data = archive.read(records[0])
    pth_pickle.check_pickle(data)
    unpickler = pth_pickle.ZipUnpickler(io.BytesIO(data))
    state = pth_pickle.as_state_dict(unpickler.load())
    _check_storages(state, unpickler.storages)
    for key, (dtype, numel) in unpickler.storages.items():
      name = f"{prefix}data/{key}"
      if name not in names:
        raise Invalid(f"storage record {name!r} is missing")
      _check_record(archive.getinfo(name), size=numel * dtype.itemsize)
    state = _selected(state, select)
    storages = {}
    for key in _storage_keys(state):
      dtype, numel = unpickler.storages[key]
      with archive.open(f"{prefix}data/{key}") as stream:
        storages[key] = _read_storage(stream, dtype, numel, byteorder, f"storage {key!r}")
    return _materialise_all(state, storages)


def _load_legacy(file: BinaryIO, file_size: int, select: Select | None) -> dict[str, np.ndarray]:
  """Load the legacy (pre-1.6) stream format."""
  not_torch = "not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save stream)"
  try:
    magic = pth_pickle.load_plain(pth_pickle.read_pickle(file))
  except Exception as exc:
    raise Invalid(not_torch) from exc
  if magic != _LEGACY_MAGIC:
    raise Invalid(not_torch)
  version = pth_pickle.load_plain(pth_pickle.read_pickle(file))
  if version != _LEGACY_PROTOCOL_VERSION:
    raise Invalid(f"unsupported legacy protocol version {version!r}")
  sys_info = pth_pickle.load_plain(pth_pickle.read_pickle(file))
  if not isinstance(sys_info, dict):
    raise Invalid(f"legacy sys_info is {pth_pickle.describe(sys_info)}, not a dict")
  byteorder = "little" if sys_info.get("little_endian", True) else "big"
  unpickler = pth_pickle.LegacyUnpickler(io.BytesIO(pth_pickle.read_pickle(file)))
  state = pth_pickle.as_state_dict(unpickler.load())
  keys = pth_pickle.load_plain(pth_pickle.read_pickle(file))
  if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
    raise Invalid(f"legacy storage key list is {pth_pickle.describe(keys)}, not a list of strings")
  if sorted(keys) != sorted(unpickler.storages):
    raise Invalid("legacy storage key list does not match the storages the pickle references")
  _check_storages(state, unpickler.storages)
  state = _selected(state, select)
  wanted = _storage_keys(state)
  storages: dict[str, np.ndarray] = {}
  for key in keys:
    dtype, numel = unpickler.storages[key]
    header = file.read(8)
    if len(header) != 8:
      raise Invalid(f"file is truncated: storage {key!r} header is missing")
    count = int.from_bytes(header, byteorder, signed=True)
    if count != numel:
      raise Invalid(f"storage {key!r} holds {count} elements, the pickle says {numel}")
    nbytes = numel * dtype.itemsize
    remaining = file_size - file.tell()
    if nbytes > remaining:
      raise Invalid(f"file is truncated: storage {key!r} needs {nbytes} bytes, {remaining} remain")
    if key in wanted:
      storages[key] = _read_storage(file, dtype, numel, byteorder, f"storage {key!r}")
    else:
      file.seek(nbytes, os.SEEK_CUR)
  return _materialise_all(state, storages)


def _load(path: str | os.PathLike, select: Select | None) -> dict[str, np.ndarray]:
  """Open ``path`` and dispatch on its format."""
  try:
    file = open(path, "rb")
  except FileNotFoundError as exc:
    raise Invalid("file not found") from exc
  except OSError as exc:
    raise Invalid(f"cannot open file ({exc.strerror or exc})") from exc
  with file:
    file_size = os.fstat(file.fileno()).st_size
    if file_size == 0:
      raise Invalid("file is empty")
    head = file.read(len(_ZIP_MAGIC))
    file.seek(0)
    if head == _ZIP_MAGIC:
      return _load_zip(file, select)
    return _load_legacy(file, file_size, select)


def load_state_dict(path: str | os.PathLike, select: Select | None = None) -> dict[str, np.ndarray]:
  """Read a PyTorch state-dict checkpoint (zip or legacy format) as ``{name: array}``.

  Arrays are contiguous, writable and keep the tensor dtype (bfloat16 as
  ``ml_dtypes.bfloat16``); 0-dim tensors become 0-d arrays. ``select``, when given, is called
  with every tensor's name and shape before any data is read; it returns the names to read
  (the result holds only those) or raises the caller's UserError, which propagates as is.

  Raises :class:`CheckpointFormatError` naming ``path`` if the file is missing, truncated,
  corrupt, not a torch checkpoint, not a state dict, declares more data than its tensors
  need, or its pickle references anything outside the allow-list.
  """
  shown = os.fsdecode(os.fspath(path))
  try:
    return _load(path, select)
  except errors.UserError:
    raise
  except Invalid as exc:
    reason = str(exc)
    cause: BaseException = exc
  except (pickle.UnpicklingError, EOFError) as exc:
    reason = f"truncated or corrupt pickle ({type(exc).__name__}: {exc})"
    cause = exc
  except MemoryError as exc:
    reason = "a tensor is too large to allocate"
    cause = exc
  except Exception as exc:
    reason = f"corrupt checkpoint ({type(exc).__name__}: {exc})"
    cause = exc
  message = f"{shown}: {errors.one_line(reason)}"
  raise CheckpointFormatError(message) from cause
