"""Read PyTorch ``.pth`` state-dict checkpoints into numpy arrays without torch.

Both layouts ``torch.save`` has produced are supported:

* the zip archive written by PyTorch >= 1.6 (``<prefix>/data.pkl`` plus one
  ``<prefix>/data/<key>`` record of raw bytes per storage), and
* the legacy stream written by PyTorch <= 1.5 or with
  ``_use_new_zipfile_serialization=False`` (magic number, protocol version,
  sys_info, the main pickle, the list of storage keys, then each storage as an
  int64 element count followed by its raw bytes).

The pickles are read with unpicklers whose ``find_class`` only resolves a small
allow-list of torch rebuild helpers, storage types and ``OrderedDict``; any other
global is refused, so loading a checkpoint never runs code named by the file.
Every failure surfaces as :class:`CheckpointFormatError` with a one-line message
that names the file, and nothing is returned unless every tensor was read.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import zipfile
from typing import Any, BinaryIO, Callable

import ml_dtypes
import numpy as np

from lgnet_jax import errors

__all__ = ["CheckpointFormatError", "load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}


class CheckpointFormatError(errors.UserError):
  """Raised when a file is not a readable PyTorch state-dict checkpoint."""


class _Invalid(Exception):
  """Internal reason for rejecting a checkpoint; becomes a CheckpointFormatError."""


class _Frozen:
  """Base for objects handed to a pickle: the pickle may not BUILD (mutate) them."""

  __slots__ = ()

  def __setstate__(self, state: object) -> None:
    raise _Invalid(f"pickle tries to set state on {self!r}, which a checkpoint never does")


class _StorageType(_Frozen):
  """Stand-in for a torch storage class such as ``torch.FloatStorage``."""

  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype: np.dtype) -> None:
    self.name = name
    self.dtype = dtype

  def __repr__(self) -> str:
    return f"torch.{self.name}"


class _StorageRef(_Frozen):
  """A window of ``numel`` elements, starting at ``offset``, into the storage ``key``."""

  __slots__ = ("key", "dtype", "offset", "numel")

  def __init__(self, key: str, dtype: np.dtype, offset: int, numel: int) -> None:
    self.key = key
    self.dtype = dtype
    self.offset = offset
    self.numel = numel

  def __repr__(self) -> str:
    return f"storage {self.key!r}"


class _PendingTensor(_Frozen):
  """A tensor described by the pickle, materialised once the storage bytes are read."""

  __slots__ = ("storage", "storage_offset", "size", "stride")

  def __init__(
      self,
      storage: _StorageRef,
      storage_offset: int,
      size: tuple[int, ...],
      stride: tuple[int, ...],
  ) -> None:
    self.storage = storage
    self.storage_offset = storage_offset
    self.size = size
    self.stride = stride

  def __repr__(self) -> str:
    return f"tensor of {self.storage!r}"


class _Global(_Frozen):
  """An allow-listed callable global; a pickle can call it but not alter it."""

  __slots__ = ("name", "fn")

  def __init__(self, name: str, fn: Callable[..., Any]) -> None:
    self.name = name
    self.fn = fn

  def __call__(self, *args: Any) -> Any:
    return self.fn(*args)

  def __repr__(self) -> str:
    return self.name


def _describe(obj: object) -> str:
  """Name an unpickled object's kind for an error message."""
  if isinstance(obj, _PendingTensor):
    return "a tensor"
  if isinstance(obj, _StorageRef):
    return "a storage"
  if isinstance(obj, (_Global, _StorageType)):
    return f"the global {obj!r}"
  return f"a {type(obj).__name__}"


def _check_int(value: object, what: str, minimum: int = 0) -> int:
  """Return ``value`` if it is a plain int >= ``minimum``; a pickle could hold anything."""
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise _Invalid(f"{what} must be an integer >= {minimum}, got {value!r}")
  return value


def _check_shape(value: object, what: str) -> tuple[int, ...]:
  """Return ``value`` as a tuple of non-negative ints."""
  if not isinstance(value, (tuple, list)):
    raise _Invalid(f"{what} must be a tuple, got {_describe(value)}")
  return tuple(_check_int(v, what) for v in value)


def _rebuild_tensor(
    storage: object, storage_offset: object, size: object, stride: object, *_: object
) -> _PendingTensor:
  """Handle ``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2``.

  The trailing arguments (requires_grad, backward hooks, metadata) do not affect the data.
  """
  if not isinstance(storage, _StorageRef):
    raise _Invalid(f"tensor rebuilt from {_describe(storage)} instead of a storage")
  shape = _check_shape(size, "tensor size")
  strides = _check_shape(stride, "tensor stride")
  if len(shape) != len(strides):
    raise _Invalid(f"tensor size {shape} and stride {strides} differ in length")
  return _PendingTensor(storage, _check_int(storage_offset, "storage offset"), shape, strides)


def _rebuild_parameter(data: object, *_: object) -> _PendingTensor:
  """Handle ``torch._utils._rebuild_parameter[_with_state]``: a Parameter is its data."""
  if not isinstance(data, _PendingTensor):
    raise _Invalid(f"parameter rebuilt from {_describe(data)} instead of a tensor")
  return data


def _reject_persistent(pid: object) -> None:
  """Persistent ids are only meaningful in the main checkpoint pickle."""
  raise _Invalid(f"unexpected persistent id {pid!r}")


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals and records referenced storages."""

  def __init__(self, file: BinaryIO, allow_tensors: bool) -> None:
    super().__init__(file, encoding="utf-8")
    self.storages: dict[str, tuple[np.dtype, int]] = {}
    self._allowed: dict[tuple[str, str], object] = {}
    if allow_tensors:
      self._allowed[("collections", "OrderedDict")] = collections.OrderedDict
      for name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
        self._allowed[("torch._utils", name)] = _Global(f"torch._utils.{name}", _rebuild_tensor)
      for name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        self._allowed[("torch._utils", name)] = _Global(f"torch._utils.{name}", _rebuild_parameter)
      for module in ("torch", "torch.cuda"):
        for name, dtype in _STORAGE_DTYPES.items():
          self._allowed[(module, name)] = _StorageType(name, dtype)

  def find_class(self, module: str, name: str) -> object:
    """Return the stand-in for an allow-listed global; refuse everything else."""
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise _Invalid(f"pickle references the disallowed global {module}.{name}") from None

  def persistent_load(self, pid: object) -> object:
    """Refuse persistent ids unless a subclass knows the checkpoint layout."""
    _reject_persistent(pid)

  def _register(
      self, key: object, storage_type: object, numel: object
  ) -> tuple[str, np.dtype, int]:
    """Validate a storage reference and remember its dtype and element count."""
    if not isinstance(key, str):
      raise _Invalid(f"storage key must be a string, got {key!r}")
    if not isinstance(storage_type, _StorageType):
      raise _Invalid(f"storage {key!r} has unsupported type {_describe(storage_type)}")
    numel = _check_int(numel, f"size of storage {key!r}")
    seen = self.storages.setdefault(key, (storage_type.dtype, numel))
    if seen != (storage_type.dtype, numel):
      raise _Invalid(f"storage {key!r} is referenced with conflicting dtypes or sizes")
    return key, storage_type.dtype, numel


class _ZipUnpickler(_RestrictedUnpickler):
  """Reads ``data.pkl`` of a zip checkpoint: ids are ('storage', type, key, location, numel)."""

  def __init__(self, file: BinaryIO) -> None:
    super().__init__(file, allow_tensors=True)

  def persistent_load(self, pid: object) -> object:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      _reject_persistent(pid)
    _, storage_type, key, _location, numel = pid
    key, dtype, numel = self._register(key, storage_type, numel)
    return _StorageRef(key, dtype, 0, numel)


class _LegacyUnpickler(_RestrictedUnpickler):
  """Reads the main pickle of a legacy checkpoint, whose storage ids may carry a view."""

  def __init__(self, file: BinaryIO) -> None:
    super().__init__(file, allow_tensors=True)

  def persistent_load(self, pid: object) -> object:
    if isinstance(pid, tuple) and pid and pid[0] == "module":
      raise _Invalid("the file pickles a whole nn.Module, not a state dict")
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      _reject_persistent(pid)
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    key, dtype, numel = self._register(key, storage_type, numel)
    if view is None:
      return _StorageRef(key, dtype, 0, numel)
    if not (isinstance(view, tuple) and len(view) == 3):
      raise _Invalid(f"malformed storage view {view!r}")
    offset = _check_int(view[1], "storage view offset")
    view_numel = _check_int(view[2], "storage view size")
    if offset + view_numel > numel:
      raise _Invalid(f"storage view {view!r} exceeds storage {key!r} of {numel} elements")
    return _StorageRef(key, dtype, offset, view_numel)


def _load_plain(file: BinaryIO) -> object:
  """Unpickle a record that holds only plain data (no globals, no storages)."""
  return _RestrictedUnpickler(file, allow_tensors=False).load()


def _as_state_dict(obj: object) -> dict[str, _PendingTensor]:
  """Check that the unpickled object is a dict of str -> tensor."""
  if not isinstance(obj, dict):
    raise _Invalid(
        f"expected a state dict (dict of str -> tensor) at top level, found {_describe(obj)}"
    )
  for key, value in obj.items():
    if not isinstance(key, str):
      raise _Invalid(f"state dict key {key!r} is not a string")
    if not isinstance(value, _PendingTensor):
      raise _Invalid(f"state dict entry {key!r} is {_describe(value)}, not a tensor")
  return obj


def _array_from_bytes(raw: bytes, dtype: np.dtype, byteorder: str) -> np.ndarray:
  """View raw storage bytes as a 1-D array in native byte order."""
  array = np.frombuffer(raw, dtype=dtype)
  if byteorder != sys.byteorder and dtype.itemsize > 1:
    array = array.byteswap()
  return array


def _materialise(pending: _PendingTensor, storages: dict[str, np.ndarray]) -> np.ndarray:
  """Copy a tensor out of its storage into a contiguous array, checking every bound."""
  ref = pending.storage
  flat = storages[ref.key][ref.offset : ref.offset + ref.numel]
  shape, strides = pending.size, pending.stride
  numel = 1
  for dim in shape:
    numel *= dim
  if numel == 0:
    return np.zeros(shape, dtype=flat.dtype)
  last = pending.storage_offset + sum((dim - 1) * step for dim, step in zip(shape, strides))
  if last >= flat.size:
    raise _Invalid(
        f"tensor of shape {shape} (offset {pending.storage_offset}, stride {strides}) "
        f"reads past the end of {ref!r} ({flat.size} elements)"
    )
  base = flat[pending.storage_offset :]
  byte_strides = tuple(step * flat.itemsize for step in strides)
  view = np.lib.stride_tricks.as_strided(base, shape=shape, strides=byte_strides, writeable=False)
  return np.array(view, dtype=flat.dtype, order="C", copy=True)


def _materialise_all(
    state: dict[str, _PendingTensor], storages: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
  """Turn every pending tensor into an array."""
  return {key: _materialise(value, storages) for key, value in state.items()}


def _load_zip(file: BinaryIO) -> dict[str, np.ndarray]:
  """Load the zip-archive format of PyTorch >= 1.6."""
  try:
    archive = zipfile.ZipFile(file)
  except zipfile.BadZipFile as exc:
    raise _Invalid(f"truncated or corrupt zip archive ({exc})") from exc
  with archive:
    names = set(archive.namelist())
    records = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    if len(records) != 1:
      found = "no" if not records else f"{len(records)}"
      raise _Invalid(f"zip archive is not a PyTorch checkpoint ({found} '<name>/data.pkl' records)")
    prefix = records[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
      if byteorder not in ("little", "big"):
        raise _Invalid(f"unknown byteorder {byteorder!r}")
    unpickler = _ZipUnpickler(io.BytesIO(archive.read(records[0])))
    state = _as_state_dict(unpickler.load())
    storages: dict[str, np.ndarray] = {}
    for key, (dtype, numel) in unpickler.storages.items():
      name = f"{prefix}data/{key}"
      if name not in names:
        raise _Invalid(f"storage record {name!r} is missing")
      expected = numel * dtype.itemsize
      size = archive.getinfo(name).file_size
      if size != expected:
        raise _Invalid(f"storage record {name!r} holds {size} bytes, expected {expected}")
      storages[key] = _array_from_bytes(archive.read(name), dtype, byteorder)
    return _materialise_all(state, storages)


def _load_legacy(file: BinaryIO, file_size: int) -> dict[str, np.ndarray]:
  """Load the legacy (pre-1.6) stream format."""
  try:
    magic = _load_plain(file)
  except _Invalid:
    raise
  except Exception as exc:
    raise _Invalid(
        "not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save stream)"
    ) from exc
  if magic != _LEGACY_MAGIC:
    raise _Invalid(
        "not a PyTorch checkpoint (neither a zip archive nor a legacy torch.save stream)"
    )
  version = _load_plain(file)
  if version != _LEGACY_PROTOCOL_VERSION:
    raise _Invalid(f"unsupported legacy protocol version {version!r}")
  sys_info = _load_plain(file)
  if not isinstance(sys_info, dict):
    raise _Invalid(f"legacy sys_info is {_describe(sys_info)}, not a dict")
  byteorder = "little" if sys_info.get("little_endian", True) else "big"
  unpickler = _LegacyUnpickler(file)
  state = _as_state_dict(unpickler.load())
  keys = _load_plain(file)
  if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
    raise _Invalid(f"legacy storage key list is {_describe(keys)}, not a list of strings")
  if sorted(keys) != sorted(unpickler.storages):
    raise _Invalid("legacy storage key list does not match the storages the pickle references")
  storages: dict[str, np.ndarray] = {}
  for key in keys:
    dtype, numel = unpickler.storages[key]
    header = file.read(8)
    if len(header) != 8:
      raise _Invalid(f"file is truncated: storage {key!r} header is missing")
    count = int.from_bytes(header, byteorder, signed=True)
    if count != numel:
      raise _Invalid(f"storage {key!r} holds {count} elements, the pickle says {numel}")
    nbytes = numel * dtype.itemsize
    remaining = file_size - file.tell()
    if nbytes > remaining:
      raise _Invalid(f"file is truncated: storage {key!r} needs {nbytes} bytes, {remaining} remain")
    raw = file.read(nbytes)
    if len(raw) != nbytes:
      raise _Invalid(f"file is truncated: storage {key!r} needs {nbytes} bytes, read {len(raw)}")
    storages[key] = _array_from_bytes(raw, dtype, byteorder)
  return _materialise_all(state, storages)


def _load(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Open ``path`` and dispatch on its format."""
  try:
    file = open(path, "rb")
  except FileNotFoundError as exc:
    raise _Invalid("file not found") from exc
  except OSError as exc:
    raise _Invalid(f"cannot open file ({exc.strerror or exc})") from exc
  with file:
    file_size = os.fstat(file.fileno()).st_size
    if file_size == 0:
      raise _Invalid("file is empty")
    head = file.read(len(_ZIP_MAGIC))
    file.seek(0)
    if head == _ZIP_MAGIC:
      return _load_zip(file)
    return _load_legacy(file, file_size)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Read a PyTorch state-dict checkpoint (zip or legacy format) as ``{name: array}``.

  Arrays are contiguous, writable and keep the tensor dtype (bfloat16 as
  ``ml_dtypes.bfloat16``); 0-dim tensors become 0-d arrays. Raises
  :class:`CheckpointFormatError` naming ``path`` if the file is missing,
  truncated, corrupt, not a torch checkpoint, not a state dict, or its pickle
  references anything outside the allow-list.
  """
  shown = os.fsdecode(os.fspath(path))
  try:
    return _load(path)
  except _Invalid as exc:
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
