"""Tests for lgnet_jax.weights.pth: reading torch checkpoints without torch."""

from __future__ import annotations

import builtins
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from helpers import OFFICIAL_FIXTURE, OFFICIAL_KEYS, REPO_ROOT, subprocess_env
from pth_writer import PickleWriter, write_legacy, write_zip
from lgnet_jax.weights.pth import CheckpointFormatError, load_state_dict

FIXTURES = OFFICIAL_FIXTURE

ZIP_G2 = FIXTURES / "latest_net_G2.pth"
LEGACY_G2 = FIXTURES / "latest_net_G2_legacy_format.pth"


def official_keys(net: str) -> list[str]:
  """Key names of the official full-width model, in state-dict order."""
  lines = (OFFICIAL_KEYS / f"net_{net}.txt").read_text().splitlines()
  return [line.split("\t")[0] for line in lines if line.strip()]


def assert_rejected(path: pathlib.Path, *fragments: str) -> str:
  """Loading ``path`` must raise a one-line CheckpointFormatError naming it."""
  with pytest.raises(CheckpointFormatError) as info:
    load_state_dict(path)
  message = str(info.value)
  assert str(path) in message
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message
  return message


ALL_DTYPES = {
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
}


def sample_values(dtype: np.dtype, n: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if dtype == np.bool_:
    return rng.integers(0, 2, n).astype(np.bool_)
  if dtype.kind in "iu":
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), n, endpoint=True).astype(
        dtype
    )
  return rng.standard_normal(n).astype(dtype)


def test_g2_zip_and_legacy_formats_are_identical() -> None:
  zipped = load_state_dict(ZIP_G2)
  legacy = load_state_dict(LEGACY_G2)
  assert list(zipped) == list(legacy)
  for key in zipped:
    assert zipped[key].dtype == legacy[key].dtype, key
    assert zipped[key].shape == legacy[key].shape, key
    np.testing.assert_array_equal(zipped[key], legacy[key], err_msg=key)


@pytest.mark.parametrize("path", [ZIP_G2, LEGACY_G2], ids=["zip", "legacy"])
def test_g2_keys_dtypes_and_values(path: pathlib.Path) -> None:
  state = load_state_dict(path)
  assert type(state) is dict
  assert list(state) == official_keys("G2")
  assert all(isinstance(v, np.ndarray) for v in state.values())

  weight = state["model.1.weight"]
  assert weight.dtype == np.float32
  assert weight.shape == (16, 4, 7, 7)
  assert weight.flags.c_contiguous and weight.flags.writeable
  assert np.isfinite(weight).all() and weight.std() > 0

  tracked = state["model.2.num_batches_tracked"]
  assert tracked.dtype == np.int64
  assert tracked.shape == () and tracked.ndim == 0
  assert int(tracked) == 1000

  # The fixture README: BN scale U(0.8, 1.2), running var U(0.5, 1.5).
  assert ((state["model.2.weight"] >= 0.8) & (state["model.2.weight"] <= 1.2)).all()
  assert ((state["model.2.running_var"] >= 0.5) & (state["model.2.running_var"] <= 1.5)).all()
  for key, value in state.items():
    expected = np.int64 if key.endswith("num_batches_tracked") else np.float32
    assert value.dtype == expected, key


@pytest.mark.parametrize("net", ["G1", "G3", "D"])
def test_other_networks_match_official_key_lists(net: str) -> None:
  state = load_state_dict(FIXTURES / f"latest_net_{net}.pth")
  assert set(state) == set(official_keys(net))
  assert list(state) == official_keys(net)
  for key, value in state.items():
    assert value.dtype in (np.float32, np.int64), key
    assert np.isfinite(value).all(), key


def test_discriminator_spectral_norm_tensors() -> None:
  state = load_state_dict(FIXTURES / "latest_net_D.pth")
  weight = state["encoder.0.weight_orig"]
  u = state["encoder.0.weight_u"]
  v = state["encoder.0.weight_v"]
  assert weight.shape == (64, 3, 5, 5)
  assert u.shape == (64,) and v.shape == (75,)
  assert all(a.dtype == np.float32 for a in (weight, u, v))
  # A power-iterated state: u and v are unit vectors.
  np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-4)


def test_vgg16_features() -> None:
  state = load_state_dict(FIXTURES / "vgg16_features.pth")
  convs = [0, 2, 5, 7, 10, 12, 14]
  assert list(state) == [f"features.{i}.{p}" for i in convs for p in ("weight", "bias")]
  assert state["features.0.weight"].shape == (64, 3, 3, 3)
  assert state["features.14.weight"].shape == (256, 256, 3, 3)
  assert all(v.dtype == np.float32 for v in state.values())


def test_loads_in_a_process_where_torch_cannot_be_imported() -> None:
  code = (
      "import sys\n"
      "sys.modules['torch'] = None\n"
      "try:\n"
      "    import torch\n"
      "except ImportError:\n"
      "    pass\n"
      "else:\n"
      "    raise SystemExit('torch import was not blocked')\n"
      "import numpy as np\n"
      "from lgnet_jax.weights.pth import load_state_dict\n"
      "for path in sys.argv[1:]:\n"
      "    state = load_state_dict(path)\n"
      "    print(len(state), repr(sum(float(v.astype(np.float64).sum()) for v in state.values())))\n"
  )
  paths = (ZIP_G2, LEGACY_G2)
  result = subprocess.run(
      [sys.executable, "-c", code, *map(str, paths)],
      cwd=REPO_ROOT,
      env=subprocess_env(),
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 0, result.stderr
  expected = []
  for path in paths:
    state = load_state_dict(path)
    expected.append(
        f"{len(state)} {sum(float(v.astype(np.float64).sum()) for v in state.values())!r}"
    )
  assert result.stdout.strip().splitlines() == expected


def test_every_dtype_and_layout_zip(tmp_path: pathlib.Path) -> None:
  entries: list[tuple[str, dict]] = []
  storages: dict[str, bytes] = {}
  expected: dict[str, np.ndarray] = {}
  for index, (storage_type, dtype) in enumerate(ALL_DTYPES.items()):
    values = sample_values(dtype, 12, index)
    key = str(index)
    storages[key] = values.tobytes()
    spec = dict(storage_type=storage_type, key=key, numel=12)
    entries.append((f"{storage_type}.plain", dict(spec, offset=0, size=(3, 4), stride=(4, 1))))
    expected[f"{storage_type}.plain"] = values.reshape(3, 4)
    entries.append((f"{storage_type}.transposed", dict(spec, offset=0, size=(4, 3), stride=(1, 4))))
    expected[f"{storage_type}.transposed"] = values.reshape(3, 4).T
    entries.append((f"{storage_type}.offset", dict(spec, offset=5, size=(2, 3), stride=(3, 1))))
    expected[f"{storage_type}.offset"] = values[5:11].reshape(2, 3)
    entries.append((f"{storage_type}.scalar", dict(spec, offset=7, size=(), stride=())))
    expected[f"{storage_type}.scalar"] = values[7].reshape(())
    entries.append((f"{storage_type}.empty", dict(spec, offset=0, size=(0, 4), stride=(4, 1))))
    expected[f"{storage_type}.empty"] = values[:0].reshape(0, 4)
  path = tmp_path / "all.pth"
  write_zip(path, PickleWriter().state_dict(entries), storages)

  state = load_state_dict(path)
  assert list(state) == list(expected)
  for key, want in expected.items():
    got = state[key]
    assert got.dtype == want.dtype, key
    assert got.shape == want.shape, key
    assert got.flags.c_contiguous and got.flags.writeable, key
    assert got.tobytes() == np.ascontiguousarray(want).tobytes(), key
  assert state["BFloat16Storage.plain"].dtype == ml_dtypes.bfloat16
  # Tensors sharing a storage must not share memory in the result.
  state["FloatStorage.plain"][0, 0] = 123.0
  assert state["FloatStorage.transposed"][0, 0] != 123.0


def test_big_endian_zip(tmp_path: pathlib.Path) -> None:
  floats = np.arange(6, dtype=np.float32) * 1.5
  longs = np.array([1, -2, 2**40], dtype=np.int64)
  entries = [
      (
          "f",
          dict(storage_type="FloatStorage", key="0", numel=6, offset=0, size=(2, 3), stride=(3, 1)),
      ),
      ("l", dict(storage_type="LongStorage", key="1", numel=3, offset=0, size=(3,), stride=(1,))),
  ]
  path = tmp_path / "big.pth"
  storages = {"0": floats.astype(">f4").tobytes(), "1": longs.astype(">i8").tobytes()}
  write_zip(path, PickleWriter().state_dict(entries), storages, byteorder="big")
  state = load_state_dict(path)
  np.testing.assert_array_equal(state["f"], floats.reshape(2, 3))
  np.testing.assert_array_equal(state["l"], longs)
  assert state["f"].dtype == np.float32 and state["l"].dtype == np.int64


def test_legacy_storage_views(tmp_path: pathlib.Path) -> None:
  root = np.arange(12, dtype=np.float32)
  counts = np.array([5, 6], dtype=np.int64)
  entries = [
      (
          "whole",
          dict(
              storage_type="FloatStorage",
              key="r",
              numel=12,
              offset=0,
              size=(12,),
              stride=(1,),
              legacy_view=None,
          ),
      ),
      (
          "view",
          dict(
              storage_type="FloatStorage",
              key="r",
              numel=12,
              offset=1,
              size=(2, 2),
              stride=(1, 2),
              legacy_view=("v", 4, 6),
          ),
      ),
      (
          "count",
          dict(
              storage_type="LongStorage",
              key="c",
              numel=2,
              offset=1,
              size=(),
              stride=(),
              legacy_view=None,
          ),
      ),
  ]
  path = tmp_path / "legacy.pth"
  write_legacy(
      path,
      PickleWriter().state_dict(entries),
      {"r": (12, root.tobytes()), "c": (2, counts.tobytes())},
  )
  state = load_state_dict(path)
  np.testing.assert_array_equal(state["whole"], root)
  np.testing.assert_array_equal(state["view"], np.array([[5, 7], [6, 8]], dtype=np.float32))
  assert (
      state["count"].shape == () and state["count"].dtype == np.int64 and int(state["count"]) == 6
  )


@pytest.mark.parametrize("source", [ZIP_G2, LEGACY_G2], ids=["zip", "legacy"])
@pytest.mark.parametrize("fraction", [0.5, 0.001, 0.05, 0.9, -1])
def test_truncated_files(tmp_path: pathlib.Path, source: pathlib.Path, fraction: float) -> None:
  data = source.read_bytes()
  cut = len(data) - 1 if fraction == -1 else int(len(data) * fraction)
  path = tmp_path / f"truncated_{source.name}"
  path.write_bytes(data[:cut])
  assert_rejected(path)


def test_truncated_zip_says_so(tmp_path: pathlib.Path) -> None:
  path = tmp_path / "half.pth"
  path.write_bytes(ZIP_G2.read_bytes()[: ZIP_G2.stat().st_size // 2])
  assert_rejected(path, "zip")


def test_truncated_legacy_says_so(tmp_path: pathlib.Path) -> None:
  path = tmp_path / "half.pth"
  path.write_bytes(LEGACY_G2.read_bytes()[: LEGACY_G2.stat().st_size // 2])
  assert_rejected(path, "truncated")


def test_zero_byte_file(tmp_path: pathlib.Path) -> None:
  path = tmp_path / "empty.pth"
  path.write_bytes(b"")
  assert_rejected(path, "empty")


def test_random_bytes(tmp_path: pathlib.Path) -> None:
  for seed in range(5):
    path = tmp_path / f"random{seed}.pth"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    assert_rejected(path)
  path = tmp_path / "random_pickle_header.pth"
  path.write_bytes(b"\x80\x02" + np.random.default_rng(9).bytes(4096))
  assert_rejected(path)


def test_text_file(tmp_path: pathlib.Path) -> None:
  path = tmp_path / "notes.pth"
  path.write_text("this is a text file, not a checkpoint\n" * 20)
  assert_rejected(path, "not a PyTorch checkpoint")


def test_zip_that_is_not_a_checkpoint(tmp_path: pathlib.Path) -> None:
  path = tmp_path / "other.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("readme.txt", "hello")
    archive.writestr("folder/data.bin", b"\x00" * 16)
  assert_rejected(path, "not a PyTorch checkpoint")


def test_missing_path(tmp_path: pathlib.Path) -> None:
  assert_rejected(tmp_path / "does_not_exist.pth", "not found")
  assert_rejected(pathlib.Path(str(tmp_path / "does_not_exist.pth")))


def test_directory_path(tmp_path: pathlib.Path) -> None:
  assert_rejected(tmp_path)


def test_string_path_is_accepted_and_named(tmp_path: pathlib.Path) -> None:
  assert len(load_state_dict(str(ZIP_G2))) == len(official_keys("G2"))
  with pytest.raises(CheckpointFormatError, match="nothing_here"):
    load_state_dict(str(tmp_path / "nothing_here.pth"))


class _Exploit:
  """Pickles as a call of ``func(arg)``, the classic pickle code-execution payload."""

  def __init__(self, func: object, arg: str) -> None:
    self.func = func
    self.arg = arg

  def __reduce__(self) -> tuple:
    return (self.func, (self.arg,))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("func", [os.system, builtins.exec], ids=["os.system", "exec"])
def test_disallowed_global_is_rejected_and_not_run(
    tmp_path: pathlib.Path, layout: str, func: object
) -> None:
  marker = tmp_path / "pwned"
  command = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
  payload = pickle.dumps({"model.1.weight": _Exploit(func, command)}, protocol=2)
  assert b"system" in payload or b"exec" in payload
  path = tmp_path / f"evil_{layout}.pth"
  if layout == "zip":
    write_zip(path, payload, {})
  else:
    write_legacy(path, payload, {})
  assert_rejected(path, "disallowed global")
  assert not marker.exists()


def test_pickle_cannot_mutate_allowed_globals(tmp_path: pathlib.Path) -> None:
  writer = PickleWriter()
  writer.glob("torch._utils", "_rebuild_tensor_v2")
  writer.out += b"}"
  writer.string("fn")
  writer.glob("collections", "OrderedDict")
  writer.out += b"sb."
  path = tmp_path / "build.pth"
  write_zip(path, bytes(writer.out), {})
  assert_rejected(path, "set state")
  assert len(load_state_dict(ZIP_G2)) == len(official_keys("G2"))


def test_top_level_must_be_a_state_dict(tmp_path: pathlib.Path) -> None:
  writer = PickleWriter()
  writer.tensor("FloatStorage", "0", 4, 0, (4,), (1,))
  writer.out += b"."
  path = tmp_path / "tensor.pth"
  write_zip(path, bytes(writer.out), {"0": np.zeros(4, np.float32).tobytes()})
  assert_rejected(path, "found a tensor")

  path = tmp_path / "list.pth"
  write_zip(path, pickle.dumps([1, 2, 3], protocol=2), {})
  assert_rejected(path, "found a list")

  path = tmp_path / "nested.pth"
  write_zip(path, pickle.dumps({"epoch": 3}, protocol=2), {})
  assert_rejected(path, "'epoch'")


def test_tensor_past_end_of_storage(tmp_path: pathlib.Path) -> None:
  entries = [
      (
          "w",
          dict(storage_type="FloatStorage", key="0", numel=4, offset=2, size=(2, 2), stride=(2, 1)),
      )
  ]
  path = tmp_path / "overrun.pth"
  write_zip(path, PickleWriter().state_dict(entries), {"0": np.zeros(4, np.float32).tobytes()})
  assert_rejected(path, "past the end")


def test_storage_record_missing_or_short(tmp_path: pathlib.Path) -> None:
  entries = [
      ("w", dict(storage_type="FloatStorage", key="0", numel=4, offset=0, size=(4,), stride=(1,)))
  ]
  path = tmp_path / "missing.pth"
  write_zip(path, PickleWriter().state_dict(entries), {})
  assert_rejected(path, "missing")
  path = tmp_path / "short.pth"
  write_zip(path, PickleWriter().state_dict(entries), {"0": b"\x00" * 12})
  assert_rejected(path, "expected 16")


def test_legacy_wrong_magic(tmp_path: pathlib.Path) -> None:
  path = tmp_path / "magic.pth"
  path.write_bytes(pickle.dumps(12345, protocol=2) + LEGACY_G2.read_bytes())
  assert_rejected(path, "not a PyTorch checkpoint")
