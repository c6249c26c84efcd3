"""The pickles of PyTorch ``.pth`` checkpoints, read without running anything they name.

The unpicklers' ``find_class`` resolves only a small allow-list of torch rebuild helpers,
storage types and ``OrderedDict``, each to an inert stand-in; any other global is refused, so
reading a checkpoint never runs code named by the file. A tensor comes out as a
`PendingTensor`: its storage, offset, size and stride, checked, with no data read yet.

A pickle is at most `MAX_PICKLE_BYTES` and is walked once by `check_pickle` before it is
unpickled: the unpickler allocates a string's declared length before reading it, so an opcode
that declares gigabytes in a small file is refused there, before any allocation.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
from typing import Any, BinaryIO, Callable

import ml_dtypes
import numpy as np

# A state dict's pickle holds a key and a few numbers per tensor: about 180 bytes each (14 KB
# for the authors' 80-tensor G1); 16 MiB would describe about 90,000 tensors.
MAX_PICKLE_BYTES = 16 << 20

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


class Invalid(Exception):
  """Internal reason for rejecting a checkpoint; becomes a CheckpointFormatError."""


class _Frozen:
  """Base for objects handed to a pickle: the pickle may not BUILD (mutate) them."""

  __slots__ = ()

  def __setstate__(self, state: object) -> None:
    raise Invalid(f"pickle tries to set state on {self!r}, which a checkpoint never does")


class _StorageType(_Frozen):
  """Stand-in for a torch storage class such as ``torch.FloatStorage``."""

  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype: np.dtype) -> None:
    self.name = name
    self.dtype = dtype

  def __repr__(self) -> str:
    return f"torch.{self.name}"


class StorageRef(_Frozen):
  """A window of ``numel`` elements, starting at ``offset``, into the storage ``key``."""

  __slots__ = ("key", "dtype", "offset", "numel")

  def __init__(self, key: str, dtype: np.dtype, offset: int, numel: int) -> None:
    self.key = key
    self.dtype = dtype
    self.offset = offset
    self.numel = numel

  def __repr__(self) -> str:
    return f"storage {self.key!r}"


class PendingTensor(_Frozen):
  """A tensor described by the pickle, materialised once the storage bytes are read."""

  __slots__ = ("storage", "storage_offset", "size", "stride")

  def __init__(
      self, storage: StorageRef, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
  ) -> None:
    self.storage = storage
    self.storage_offset = storage_offset
    self.size = size
    self.stride = stride

  def __repr__(self) -> str:
    return f"tensor of {self.storage!r}"

  @property
  def numel(self) -> int:
    return math.prod(self.size)

  def end(self) -> int:
    """One past the last element of its storage window it reads; 0 for an empty tensor."""
    if self.numel == 0:
      return 0
    return (
        self.storage_offset + sum((dim - 1) * step for dim, step in zip(self.size, self.stride)) + 1
    )


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


def describe(obj: object) -> str:
  """Name an unpickled object's kind for an error message."""
  if isinstance(obj, PendingTensor):
    return "a tensor"
  if isinstance(obj, StorageRef):
    return "a storage"
  if isinstance(obj, (_Global, _StorageType)):
    return f"the global {obj!r}"
  return f"a {type(obj).__name__}"


def _check_int(value: object, what: str, minimum: int = 0) -> int:
  """Return ``value`` if it is a plain int >= ``minimum``; a pickle could hold anything."""
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise Invalid(f"{what} must be an integer >= {minimum}, got {value!r}")
  return value


def _check_shape(value: object, what: str) -> tuple[int, ...]:
  """Return ``value`` as a tuple of non-negative ints."""
  if not isinstance(value, (tuple, list)):
    raise Invalid(f"{what} must be a tuple, got {describe(value)}")
  return tuple(_check_int(v, what) for v in value)


def _rebuild_tensor(
    storage: object, storage_offset: object, size: object, stride: object, *_: object
) -> PendingTensor:
  """Handle ``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2``.

  The trailing arguments (requires_grad, backward hooks, metadata) do not affect the data.
  """
  if not isinstance(storage, StorageRef):
    raise Invalid(f"tensor rebuilt from {describe(storage)} instead of a storage")
  shape = _check_shape(size, "tensor size")
  strides = _check_shape(stride, "tensor stride")
  if len(shape) != len(strides):
    raise Invalid(f"tensor size {shape} and stride {strides} differ in length")
  return PendingTensor(storage, _check_int(storage_offset, "storage offset"), shape, strides)


def _rebuild_parameter(data: object, *_: object) -> PendingTensor:
  """Handle ``torch._utils._rebuild_parameter[_with_state]``: a Parameter is its data."""
  if not isinstance(data, PendingTensor):
    raise Invalid(f"parameter rebuilt from {describe(data)} instead of a tensor")
  return data


def _reject_persistent(pid: object) -> None:
  """Persistent ids are only meaningful in the main checkpoint pickle."""
  raise Invalid(f"unexpected persistent id {pid!r}")


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
      raise Invalid(f"pickle references the disallowed global {module}.{name}") from None

  def persistent_load(self, pid: object) -> object:
    """Refuse persistent ids unless a subclass knows the checkpoint layout."""
    _reject_persistent(pid)

  def _register(
      self, key: object, storage_type: object, numel: object
  ) -> tuple[str, np.dtype, int]:
    """Validate a storage reference and remember its dtype and element count."""
    if not isinstance(key, str):
      raise Invalid(f"storage key must be a string, got {key!r}")
    if not isinstance(storage_type, _StorageType):
      raise Invalid(f"storage {key!r} has unsupported type {describe(storage_type)}")
    numel = _check_int(numel, f"size of storage {key!r}")
    seen = self.storages.setdefault(key, (storage_type.dtype, numel))
    if seen != (storage_type.dtype, numel):
      raise Invalid(f"storage {key!r} is referenced with conflicting dtypes or sizes")
    return key, storage_type.dtype, numel


class ZipUnpickler(_RestrictedUnpickler):
  """Reads ``data.pkl`` of a zip checkpoint: ids are ('storage', type, key, location, numel)."""

  def __init__(self, file: BinaryIO) -> None:
    super().__init__(file, allow_tensors=True)

  def persistent_load(self, pid: object) -> object:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      _reject_persistent(pid)
    _, storage_type, key, _location, numel = pid
    key, dtype, numel = self._register(key, storage_type, numel)
    return StorageRef(key, dtype, 0, numel)


class LegacyUnpickler(_RestrictedUnpickler):
  """Reads the main pickle of a legacy checkpoint, whose storage ids may carry a view."""

  def __init__(self, file: BinaryIO) -> None:
    super().__init__(file, allow_tensors=True)

  def persistent_load(self, pid: object) -> object:
    if isinstance(pid, tuple) and pid and pid[0] == "module":
      raise Invalid("the file pickles a whole nn.Module, not a state dict")
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
      _reject_persistent(pid)
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    key, dtype, numel = self._register(key, storage_type, numel)
    if view is None:
      return StorageRef(key, dtype, 0, numel)
    if not (isinstance(view, tuple) and len(view) == 3):
      raise Invalid(f"malformed storage view {view!r}")
    offset = _check_int(view[1], "storage view offset")
    view_numel = _check_int(view[2], "storage view size")
    if offset + view_numel > numel:
      raise Invalid(f"storage view {view!r} exceeds storage {key!r} of {numel} elements")
    return StorageRef(key, dtype, offset, view_numel)


def load_plain(data: bytes) -> object:
  """Unpickle a checked record that holds only plain data (no globals, no storages)."""
  return _RestrictedUnpickler(io.BytesIO(data), allow_tensors=False).load()


def as_state_dict(obj: object) -> dict[str, PendingTensor]:
  """Check that the unpickled object is a dict of str -> tensor."""
  if not isinstance(obj, dict):
    raise Invalid(
        f"expected a state dict (dict of str -> tensor) at top level, found {describe(obj)}"
    )
  for key, value in obj.items():
    if not isinstance(key, str):
      raise Invalid(f"state dict key {key!r} is not a string")
    if not isinstance(value, PendingTensor):
      raise Invalid(f"state dict entry {key!r} is {describe(value)}, not a tensor")
  return obj


def check_pickle(source: bytes | BinaryIO) -> None:
  """Walks a pickle's opcodes without building anything; refuses a truncated or corrupt one."""
  try:
    for _ in pickletools.genops(source):
      pass
  except ValueError as exc:  # also a string or bytes longer than what remains
    raise Invalid(f"truncated or corrupt pickle ({exc})") from exc


class _Bounded:
  """The next `MAX_PICKLE_BYTES` of a file, as pickletools reads it: a longer read is refused."""

  def __init__(self, file: BinaryIO) -> None:
    self.file = file
    self.left = MAX_PICKLE_BYTES

  def _take(self, data: bytes) -> bytes:
    if len(data) > self.left:
      raise Invalid(f"a pickle in the file is over {MAX_PICKLE_BYTES} bytes")
    self.left -= len(data)
    return data

  def read(self, count: int = -1) -> bytes:
    if count < 0 or count > self.left:
      raise Invalid(f"a pickle in the file declares over {MAX_PICKLE_BYTES} bytes")
    return self._take(self.file.read(count))

  def readline(self) -> bytes:
    return self._take(self.file.readline(self.left + 1))


def read_pickle(file: BinaryIO) -> bytes:
  """The checked pickle that starts at `file`'s position; `file` is left just past it."""
  start = file.tell()
  bounded = _Bounded(file)
  check_pickle(bounded)
  file.seek(start)
  return file.read(MAX_PICKLE_BYTES - bounded.left)
