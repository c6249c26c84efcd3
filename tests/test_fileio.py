"""fileio.atomic_folder replaces a folder's entries only where its caller allows, never a
user's file, and never follows a symbolic link out of the folder."""

import pathlib

import pytest

from lgnet_jax import fileio


def make(folder: pathlib.Path, *names: str) -> None:
  """Files (and folders, named with a trailing '/') under `folder`."""
  for name in names:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith('/'):
      path.mkdir(exist_ok=True)
    else:
      path.write_text(name)


def tree(folder: pathlib.Path) -> list[str]:
  return fileio.folder_entries(folder)


def test_entries_are_relative_names_and_links_are_not_followed(tmp_path):
  make(tmp_path / 'out', 'a.txt', 'sub/b.txt', 'sub/deeper/', 'empty/')
  make(tmp_path, 'elsewhere/secret.txt')
  (tmp_path / 'out' / 'link').symlink_to(tmp_path / 'elsewhere', target_is_directory=True)
  assert tree(tmp_path / 'out') == ['a.txt', 'empty/', 'link', 'sub/', 'sub/b.txt', 'sub/deeper/']
  assert fileio.foreign_entries(tmp_path / 'out', lambda name: name in ('a.txt', 'empty/')) == [
      'link',
      'sub/',
  ]


def test_only_replaceable_entries_are_replaced(tmp_path):
  out = tmp_path / 'out'
  make(out, 'model.bin', 'weights/', 'weights/w.bin')
  own = {'model.bin', 'weights/', 'weights/w.bin'}
  with fileio.atomic_folder(out, own.__contains__) as folder:
    make(folder, 'model.bin')
  assert tree(out) == ['model.bin'] and (out / 'model.bin').read_text() == 'model.bin'
  assert tree(tmp_path) == ['out/', 'out/model.bin']  # nothing moved aside is left


@pytest.mark.parametrize('foreign', ['NOTES.txt', 'weights/mine.txt', 'link'])
def test_a_foreign_entry_refuses_and_keeps_everything(tmp_path, foreign):
  out = tmp_path / 'out'
  make(out, 'model.bin', 'weights/', 'weights/w.bin')
  make(tmp_path, 'elsewhere/w.bin')
  if foreign == 'link':  # where an export's folder `weights/` would be
    (out / 'weights' / 'w.bin').unlink()
    (out / 'weights').rmdir()
    (out / 'weights').symlink_to(tmp_path / 'elsewhere', target_is_directory=True)
  else:
    make(out, foreign)
  before = tree(tmp_path)
  own = {'model.bin', 'weights/', 'weights/w.bin'}
  with pytest.raises(fileio.ForeignEntriesError) as info:
    with fileio.atomic_folder(out, own.__contains__) as folder:
      make(folder, 'model.bin')
  assert info.value.entries == ['weights' if foreign == 'link' else foreign]
  assert tree(tmp_path) == before  # no temporary folder, nothing deleted, the link's target kept


def test_by_default_only_an_empty_folder_is_replaced(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  with fileio.atomic_folder(out) as folder:
    make(folder, 'a')
  with pytest.raises(fileio.ForeignEntriesError, match='holds a'):
    with fileio.atomic_folder(out) as folder:
      make(folder, 'b')
  assert tree(tmp_path) == ['out/', 'out/a']
