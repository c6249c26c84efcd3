"""Hand-written `.pth` checkpoints for the reader's tests: torch is not available to write them.

`PickleWriter` emits the protocol-2 pickle opcodes `torch.save` produces; `write_zip` and
`write_legacy` wrap a pickle and raw storages in the two layouts `lgnet_jax.weights.pth` reads.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class PickleWriter:
  """Emits protocol-2 pickle opcodes for the shapes torch.save produces."""

  def __init__(self) -> None:
    self.out = bytearray(b"\x80\x02")

  def glob(self, module: str, name: str) -> None:
    self.out += b"c" + f"{module}\n{name}\n".encode()

  def string(self, text: str) -> None:
    data = text.encode()
    self.out += b"X" + len(data).to_bytes(4, "little") + data

  def integer(self, value: int) -> None:
    self.out += b"J" + value.to_bytes(4, "little", signed=True)

  def int_tuple(self, values: tuple[int, ...]) -> None:
    self.out += b"("
    for value in values:
      self.integer(value)
    self.out += b"t"

  def empty_ordered_dict(self) -> None:
    self.glob("collections", "OrderedDict")
    self.out += b")R"

  def tensor(
      self,
      storage_type: str,
      key: str,
      numel: int,
      offset: int,
      size: tuple[int, ...],
      stride: tuple[int, ...],
      legacy_view: tuple[str, int, int] | None | bool = False,
  ) -> None:
    """A ``_rebuild_tensor_v2`` call; ``legacy_view`` False omits the 6th pid field."""
    self.glob("torch._utils", "_rebuild_tensor_v2")
    self.out += b"("
    self.out += b"("
    self.string("storage")
    self.glob("torch", storage_type)
    self.string(key)
    self.string("cpu")
    self.integer(numel)
    if legacy_view is None:
      self.out += b"N"
    elif legacy_view is not False:
      view_key, view_offset, view_size = legacy_view
      self.out += b"("
      self.string(view_key)
      self.integer(view_offset)
      self.integer(view_size)
      self.out += b"t"
    self.out += b"tQ"
    self.integer(offset)
    self.int_tuple(size)
    self.int_tuple(stride)
    self.out += b"\x89"
    self.empty_ordered_dict()
    self.out += b"tR"

  def state_dict(self, entries: list[tuple[str, dict]], metadata: bool = True) -> bytes:
    """An OrderedDict of tensors, with a ``_metadata`` attribute like torch's."""
    self.empty_ordered_dict()
    self.out += b"("
    for name, spec in entries:
      self.string(name)
      self.tensor(**spec)
    self.out += b"u"
    if metadata:
      self.out += b"}"
      self.string("_metadata")
      self.empty_ordered_dict()
      self.out += b"("
      self.string("")
      self.out += b"}"
      self.string("version")
      self.integer(1)
      self.out += b"s"
      self.out += b"u"
      self.out += b"sb"
    self.out += b"."
    return bytes(self.out)


def write_zip(
    path: pathlib.Path,
    data_pkl: bytes,
    storages: dict[str, bytes],
    byteorder: str | None = "little",
) -> None:
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("ckpt/data.pkl", data_pkl)
    if byteorder is not None:
      archive.writestr("ckpt/byteorder", byteorder)
    archive.writestr("ckpt/version", "3\n")
    for key, raw in storages.items():
      archive.writestr(f"ckpt/data/{key}", raw)


def write_legacy(
    path: pathlib.Path, main_pickle: bytes, storages: dict[str, tuple[int, bytes]]
) -> None:
  """Legacy stream: magic, version, sys_info, main pickle, key list, (count, bytes) per storage."""
  sys_info = {
      "protocol_version": 1001,
      "little_endian": True,
      "type_sizes": {"short": 2, "int": 4, "long": 8},
  }
  out = io.BytesIO()
  for obj in (LEGACY_MAGIC, 1001, sys_info):
    pickle.dump(obj, out, protocol=2)
  out.write(main_pickle)
  pickle.dump(list(storages), out, protocol=2)
  for numel, raw in storages.values():
    out.write(numel.to_bytes(8, "little", signed=True))
    out.write(raw)
  path.write_bytes(out.getvalue())


def write_state_dict(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """A zip checkpoint of float32 arrays, one storage each, as `torch.save(state_dict)` writes."""
  entries, storages = [], {}
  for index, (name, array) in enumerate(arrays.items()):
    array = np.ascontiguousarray(array, np.float32)
    strides = tuple(step // array.itemsize for step in array.strides)
    spec = dict(storage_type="FloatStorage", key=str(index), numel=array.size, offset=0)
    entries.append((name, dict(spec, size=array.shape, stride=strides)))
    storages[str(index)] = array.tobytes()
  write_zip(path, PickleWriter().state_dict(entries), storages)
