"""The `.pth` reader's bounds: memory near the checkpoint's true size, whatever the file declares.

Each bomb is refused in one line before its data is inflated or allocated: the peak memory of
the load (tracemalloc, which sees numpy's buffers and zlib's output) stays far below what the
file declares. The caller's `select` sees every name and shape before any data is read.
"""

from __future__ import annotations

import contextlib
import pathlib
import shutil
import zipfile
from collections.abc import Iterator
import tracemalloc

import numpy as np
import pytest

from helpers import OFFICIAL_FIXTURE
from pth_writer import PickleWriter, write_legacy, write_state_dict, write_zip
from lgnet_jax import errors
from lgnet_jax.weights import pth, vgg

GIB = 1 << 30
MIB = 1 << 20
FLOATS = GIB // 4  # the elements of a 1 GiB FloatStorage
ZIP_G2 = OFFICIAL_FIXTURE / "latest_net_G2.pth"
LEGACY_G2 = OFFICIAL_FIXTURE / "latest_net_G2_legacy_format.pth"


@contextlib.contextmanager
def peak_memory() -> Iterator[list[int]]:
  """Yields a list that receives the peak bytes allocated inside the block (above its start)."""
  started = not tracemalloc.is_tracing()
  if started:
    tracemalloc.start()
  tracemalloc.reset_peak()
  base = tracemalloc.get_traced_memory()[0]
  peak: list[int] = []
  try:
    yield peak
  finally:
    peak.append(tracemalloc.get_traced_memory()[1] - base)
    if started:
      tracemalloc.stop()


def refused(path: pathlib.Path, *fragments: str) -> int:
  """Loading `path` raises one line naming it and every fragment; returns the load's peak."""
  with peak_memory() as peak, pytest.raises(pth.CheckpointFormatError) as info:
    pth.load_state_dict(path)
  message = str(info.value)
  assert message.startswith(f"{path}: ") and "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message
  return peak[0]


def one_tensor(numel: int, size: int) -> bytes:
  """data.pkl: one float tensor `w` of `size` elements in storage '0' of `numel`."""
  spec = dict(storage_type="FloatStorage", key="0", numel=numel, offset=0)
  return PickleWriter().state_dict([("w", dict(spec, size=(size,), stride=(1,)))])


@pytest.fixture(scope="module")
def inflating_record(tmp_path_factory) -> pathlib.Path:
  """A zip holding only `ckpt/data/0`: 1 GiB of zeros deflated to about 5 MB."""
  path = tmp_path_factory.mktemp("bomb") / "record.zip"
  chunk = bytes(16 * MIB)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
    with archive.open("ckpt/data/0", "w") as record:
      for _ in range(GIB // len(chunk)):
        record.write(chunk)
  return path


def bomb(record: pathlib.Path, tmp_path: pathlib.Path, numel: int, size: int) -> pathlib.Path:
  """The 1 GiB record with a data.pkl that declares its storage `numel` and the tensor `size`."""
  path = tmp_path / "bomb.pth"
  shutil.copy(record, path)
  with zipfile.ZipFile(path, "a") as archive:
    archive.writestr("ckpt/data.pkl", one_tensor(numel, size))
  assert path.stat().st_size < 8 * MIB
  return path


def test_a_storage_far_larger_than_its_tensor_is_refused_uninflated(inflating_record, tmp_path):
  path = bomb(inflating_record, tmp_path, numel=FLOATS, size=10)
  peak = refused(path, "storage '0' holds 1073741824 bytes but its tensors read only 40")
  assert peak < GIB / 64


def test_a_record_that_inflates_a_thousandfold_is_refused(inflating_record, tmp_path):
  path = bomb(inflating_record, tmp_path, numel=FLOATS, size=FLOATS)
  peak = refused(path, "zip record 'ckpt/data/0' inflates", "to 1073741824", "decompression bomb")
  assert peak < GIB / 64


def test_a_record_larger_than_its_storage_is_refused(inflating_record, tmp_path):
  path = bomb(inflating_record, tmp_path, numel=10, size=10)
  peak = refused(path, "storage record 'ckpt/data/0' holds 1073741824 bytes, expected 40")
  assert peak < GIB / 64


def test_an_inflating_pickle_is_refused(tmp_path):
  path = tmp_path / "pickle_bomb.pth"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("ckpt/data.pkl", bytes(64 * MIB))
  assert path.stat().st_size < MIB
  peak = refused(
      path, "zip record 'ckpt/data.pkl' declares 67108864 bytes; such a record holds at most"
  )
  assert peak < MIB


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_pickle_that_declares_gigabytes_is_refused_before_allocating(tmp_path, layout):
  """A BINBYTES8 opcode that declares 8 GiB: the unpickler would allocate it before reading."""
  payload = b"\x80\x04\x8e" + (8 * GIB).to_bytes(8, "little") + b"tiny"
  path = tmp_path / f"{layout}.pth"
  if layout == "zip":
    write_zip(path, payload, {})
  else:
    write_legacy(path, payload, {})
  peak = refused(path, "pickle")
  assert peak < MIB


def test_legacy_storages_are_bounded_by_the_file(tmp_path):
  path = tmp_path / "legacy.pth"
  write_legacy(path, one_tensor(FLOATS, FLOATS), {"0": (FLOATS, bytes(40))})
  peak = refused(path, "file is truncated: storage '0' needs 1073741824 bytes, 40 remain")
  assert peak < MIB


def test_a_legacy_storage_far_larger_than_its_tensor_is_refused(tmp_path):
  path = tmp_path / "legacy.pth"
  write_legacy(path, one_tensor(MIB // 4, 10), {"0": (MIB // 4, bytes(MIB))})
  refused(path, "storage '0' holds 1048576 bytes but its tensors read only 40")


def test_a_storage_a_little_larger_than_its_tensors_is_read(tmp_path):
  """torch saves a view's whole storage; a small excess is read, not refused."""
  values = np.arange(100, dtype=np.float32)
  path = tmp_path / "view.pth"
  write_zip(path, one_tensor(100, 10), {"0": values.tobytes()})
  np.testing.assert_array_equal(pth.load_state_dict(path)["w"], values[:10])


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_memory_is_about_the_checkpoints_size(tmp_path, layout):
  values = np.random.default_rng(0).standard_normal(8 * MIB).astype(np.float32)  # 32 MiB
  path = tmp_path / f"{layout}.pth"
  if layout == "zip":
    write_zip(path, one_tensor(values.size, values.size), {"0": values.tobytes()})
  else:
    write_legacy(path, one_tensor(values.size, values.size), {"0": (values.size, values.tobytes())})
  with peak_memory() as peak:
    state = pth.load_state_dict(path)
  np.testing.assert_array_equal(state["w"], values)
  assert state["w"].flags.writeable
  assert peak[0] < 1.1 * values.nbytes  # the array once, no second copy


class Refusal(errors.UserError):
  pass


@pytest.fixture
def storages_read(monkeypatch) -> list[str]:
  """The storages the reader reads, in order."""
  read, original = [], pth._read_storage  # pylint: disable=protected-access

  def counting(stream, dtype, numel, byteorder, what):
    read.append(what)
    return original(stream, dtype, numel, byteorder, what)

  monkeypatch.setattr(pth, "_read_storage", counting)
  return read


@pytest.mark.parametrize("path", [ZIP_G2, LEGACY_G2], ids=["zip", "legacy"])
def test_select_sees_every_name_and_shape_before_any_data(path, storages_read):
  full = pth.load_state_dict(path)
  storages_read.clear()
  seen = []

  def refuse(shapes):
    seen.append((dict(shapes), list(storages_read)))
    raise Refusal("not the network I load")

  with pytest.raises(Refusal, match="not the network I load"):
    pth.load_state_dict(path, select=refuse)
  assert seen == [({key: value.shape for key, value in full.items()}, [])]
  assert storages_read == []

  wanted = ["model.1.weight", "model.2.running_var"]
  state = pth.load_state_dict(path, select=lambda shapes: wanted)
  assert list(state) == wanted and len(storages_read) == 2
  for key in wanted:
    np.testing.assert_array_equal(state[key], full[key])


def vgg_like(path: pathlib.Path, **changes: np.ndarray) -> dict[str, np.ndarray]:
  """torchvision's layout: the fixture's features plus a conv4 layer and a classifier."""
  arrays = dict(pth.load_state_dict(OFFICIAL_FIXTURE / "vgg16_features.pth"))
  arrays["features.17.weight"] = np.zeros((512, 256, 3, 3), np.float32)
  arrays["classifier.0.weight"] = np.zeros((64, 1024), np.float32)
  arrays.update(changes)
  write_state_dict(path, arrays)
  return arrays


def test_vgg_reads_only_the_layers_the_losses_use(tmp_path, storages_read):
  path = tmp_path / "vgg16.pth"
  arrays = vgg_like(path)
  storages_read.clear()
  params = vgg.load_vgg16_params(path)
  assert len(storages_read) == 14  # 7 convolutions' weights and biases, of 16 tensors
  np.testing.assert_array_equal(
      params["conv3_3"]["kernel"], arrays["features.14.weight"].transpose(2, 3, 1, 0)
  )


def test_a_wrong_vgg_file_is_refused_before_any_data(tmp_path, storages_read):
  path = tmp_path / "vgg16.pth"
  vgg_like(path, **{"features.0.weight": np.zeros((32, 3, 3, 3), np.float32)})
  storages_read.clear()
  with pytest.raises(vgg.VGGWeightsError) as info:
    vgg.load_vgg16_params(path)
  assert str(info.value) == (
      f"{path} does not match torchvision VGG16: wrong shapes: features.0.weight: shape "
      "(32, 3, 3, 3), expected (64, 3, 3, 3)"
  )
  assert storages_read == []
