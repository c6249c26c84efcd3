"""The configured dataset (`config.data.source`): its training images and its test images.

places2    TFDS `places365_small`, or the paper's category subset (`tfds_sources`).
celeba_hq  TFDS `celeb_a_hq/256` (manual download), split by a fixed seed (`tfds_sources`).
folder     Image folders (`data.train_dir`, `data.test_dir`; jpg/jpeg/png/webp/bmp,
           searched recursively) or file lists (`data.train_files`, `data.test_files`:
           one path per line, relative paths resolved against the list's folder).
           Paris StreetView and any user data.
demo       Photographs bundled with scikit-image.
"""

import grain.python as grain
import ml_collections

from lgnet_jax.data import sources, tfds_sources


def folder_or_list(folder: str | None, list_file: str | None, what: str) -> list[str]:
  """The image paths of `data.{what}_dir` (recursively, sorted) or `data.{what}_files`."""
  if folder and list_file:
    raise sources.DataError(
        f'set one of data.{what}_dir ({folder}) and data.{what}_files ({list_file}), not both'
    )
  if list_file:
    return sources.read_file_list(list_file)
  if folder:
    return sources.list_images(folder)
  raise sources.DataError(
      f'data.source=folder needs --config.data.{what}_dir=PATH or '
      f'--config.data.{what}_files=LIST: {sources.FOLDER_HELP}'
  )


def _unknown_source(name: str) -> sources.DataError:
  return sources.DataError(
      f'unknown data.source {name!r}; choose demo, folder, places2 or celeba_hq'
  )


def train_source(data: ml_collections.ConfigDict) -> tuple[grain.RandomAccessDataSource, bool]:
  """The training images and whether they are randomly cropped (default: demo photos only)."""
  crop = data.random_crop
  crop = data.source == 'demo' if crop is None else bool(crop)
  if data.source == 'demo':
    return sources.DemoPhotoSource(data.demo_num_images), crop
  if data.source == 'folder':
    return sources.FileSource(folder_or_list(data.train_dir, data.train_files, 'train')), crop
  if data.source == 'places2':
    return tfds_sources.places2_source(data, train=True), crop
  if data.source == 'celeba_hq':
    return tfds_sources.celeba_hq_source(data, train=True), crop
  raise _unknown_source(data.source)


def test_image_source(
    data: ml_collections.ConfigDict,
) -> sources.ImageSource | sources.DemoPhotoSource:
  """The test images, in a fixed order (`len()` is the size of the test set)."""
  if data.source == 'demo':
    return sources.DemoPhotoSource(len(sources.DEMO_PHOTOS))
  if data.source == 'folder':
    return sources.FileSource(folder_or_list(data.test_dir, data.test_files, 'test'))
  if data.source == 'places2':
    return tfds_sources.places2_source(data, train=False)
  if data.source == 'celeba_hq':
    return tfds_sources.celeba_hq_source(data, train=False)
  raise _unknown_source(data.source)
