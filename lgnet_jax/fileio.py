"""Local files written whole: a temporary file in the same folder, then a rename.

Every file the project writes itself (config.json, evaluation tables, images, converted
weights, label caches) goes through `atomic_write`, so an interrupted run never leaves a
half-written file, and the file gets the permissions any program's `open()` would give it
(0666 less the user's umask), not `tempfile.mkstemp`'s private 0600. A folder of files (an
export) is written the same way by `atomic_folder`: a temporary folder, then a rename; the
folder it replaces loses only the entries its caller names as replaceable, never a user's file.
"""

import contextlib
import errno
import os
import pathlib
import secrets
import shutil
from collections.abc import Callable, Iterator
from typing import BinaryIO

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0)


def _hidden_name(path: pathlib.Path, suffix: str = 'tmp') -> pathlib.Path:
  """A random hidden name next to `path`: `.NAME.RANDOM.SUFFIX`."""
  return path.with_name(f'.{path.name}.{secrets.token_hex(6)}.{suffix}')


def _create_temporary(path: pathlib.Path) -> tuple[int, pathlib.Path]:
  """A new hidden file next to `path`, created with mode 0666 (the kernel applies the umask)."""
  while True:
    temporary = _hidden_name(path)
    try:
      return os.open(temporary, _OPEN_FLAGS, 0o666), temporary
    except FileExistsError:
      continue


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
  """Calls `write(f)` on a temporary file, flushes it to disk and renames it to `path`.

  The folder must exist. On any error (or interrupt) the temporary file is removed, the
  error propagates, and `path` is left as it was.
  """
  path = pathlib.Path(path)
  fd, temporary = _create_temporary(path)
  try:
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    temporary.unlink(missing_ok=True)
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def is_remote(path: str | os.PathLike) -> bool:
  """A cloud-storage URL such as gs://bucket/run (read and written through etils.epath)."""
  return '://' in str(path)


def nearest_existing(path: str | os.PathLike) -> pathlib.Path:
  """`path` (made absolute) or its nearest ancestor that exists: where a write would start."""
  path = pathlib.Path(path).resolve()
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def check_creatable(folder: str | os.PathLike) -> pathlib.Path:
  """The nearest existing folder of `folder`, once it is known to accept new files there.

  Raises NotADirectoryError (its strerror `PATH is a file`) when the nearest existing path is a
  file, and OSError (read-only, no permission) when the folder refuses new files.
  """
  existing = nearest_existing(folder)
  if not existing.is_dir():
    raise NotADirectoryError(errno.ENOTDIR, f'{existing} is a file', str(existing))
  check_writable(existing)
  return existing


def check_writable(folder: str | os.PathLike) -> None:
  """Raises OSError (e.g. read-only, no permission) unless a file can be created in `folder`.

  Creates and removes one empty hidden file, as `atomic_write` would: a check that also holds
  where permission bits do not tell (root, read-only mounts).
  """
  fd, temporary = _create_temporary(pathlib.Path(folder) / 'write-check')
  os.close(fd)
  temporary.unlink()


def _hidden_sibling(path: pathlib.Path, suffix: str) -> pathlib.Path:
  """A name next to `path` that does not exist yet: `.NAME.RANDOM.SUFFIX`."""
  while True:
    sibling = _hidden_name(path, suffix)
    if not os.path.lexists(sibling):
      return sibling


def _sync_tree(folder: pathlib.Path) -> None:
  """Flushes every file under `folder` to disk, as `atomic_write` does for one file."""
  for path in folder.rglob('*'):
    if path.is_file() and not path.is_symlink():
      fd = os.open(path, os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)


class ForeignEntriesError(FileExistsError):
  """A folder to be replaced holds entries its replacement may not delete."""

  def __init__(self, folder: pathlib.Path, entries: list[str]) -> None:
    super().__init__(errno.EEXIST, f'{folder} holds {", ".join(entries)}', str(folder))
    self.entries = entries

  def __str__(self) -> str:
    return self.strerror


def folder_entries(
    folder: str | os.PathLike, descend: Callable[[str], bool] = lambda name: True
) -> list[str]:
  """Every file and folder under `folder`, sorted, as '/'-joined relative names (a folder's
  ending in '/'); a folder is entered when `descend(name)`; symbolic links are never followed."""
  found = []

  def walk(path: str | os.PathLike, prefix: str) -> None:
    with os.scandir(path) as scan:
      items = sorted(scan, key=lambda item: item.name)
    for item in items:
      is_folder = item.is_dir(follow_symlinks=False)
      name = prefix + item.name + ('/' if is_folder else '')
      found.append(name)
      if is_folder and descend(name):
        walk(item.path, name)

  walk(folder, '')
  return found


def foreign_entries(folder: str | os.PathLike, replaceable: Callable[[str], bool]) -> list[str]:
  """The entries under `folder` that `replaceable` refuses (a refused folder once, not its
  contents)."""
  return [name for name in folder_entries(folder, replaceable) if not replaceable(name)]


def _replace_folder(
    new: pathlib.Path, path: pathlib.Path, replaceable: Callable[[str], bool]
) -> None:
  """Renames folder `new` to `path`. An existing non-empty `path` is first moved aside (nothing
  new can then appear in it by its name) and checked: a foreign entry puts it back and raises
  ForeignEntriesError; else the new folder takes its place and its entries are deleted one by
  one (an entry that appeared meanwhile is left, never deleted)."""
  try:
    os.rename(new, path)  # also replaces an empty folder
    return
  except OSError as e:
    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
      raise
  old = _hidden_sibling(path, 'old')
  os.rename(path, old)
  entries = folder_entries(old, replaceable)
  foreign = [name for name in entries if not replaceable(name)]
  if foreign:
    os.rename(old, path)
    raise ForeignEntriesError(path, foreign)
  try:
    os.rename(new, path)
  except BaseException:
    os.rename(old, path)
    raise
  for name in reversed(entries):  # a folder's contents before the folder
    with contextlib.suppress(OSError):
      (os.rmdir if name.endswith('/') else os.unlink)(old / name)
  with contextlib.suppress(OSError):
    os.rmdir(old)


def replace_nothing(name: str) -> bool:  # pylint: disable=unused-argument
  """`atomic_folder`'s default: no entry of an existing folder may be replaced."""
  return False


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike, replaceable: Callable[[str], bool] = replace_nothing
) -> Iterator[pathlib.Path]:
  """Yields a new hidden folder next to `path` to fill; renamed to `path` when the block ends.

  Missing parent folders are created. An existing folder `path` is replaced only when
  `replaceable` accepts every entry in it (see `folder_entries` for the names; by default
  only an empty folder is replaced); else ForeignEntriesError names the others. On any error
  (or interrupt) the temporary folder and the parents made for it are removed, the error
  propagates, and `path` is left as it was. The folder gets the user's umask permissions,
  like `atomic_write`'s files.
  """
  path = pathlib.Path(path).absolute()
  missing = [parent for parent in path.parents if not parent.exists()]
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = _hidden_sibling(path, 'tmp')
  try:
    temporary.mkdir(0o777)
    yield temporary
    _sync_tree(temporary)
    _replace_folder(temporary, path, replaceable)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    for parent in missing:  # deepest first
      with contextlib.suppress(OSError):
        parent.rmdir()
    raise
