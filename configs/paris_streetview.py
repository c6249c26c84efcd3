"""LGNet on Paris StreetView, read from image folders.

The dataset (from its authors, on request) comes as paris_train/ (14,900 images) and
paris_eval/ (100 images); any folder of jpg/png/webp images works, searched recursively,
as do text files listing one image path per line (--config.data.train_files=LIST,
--config.data.test_files=LIST; relative paths are against the list's folder). Images are
resized to 256x256 (bicubic). Run as:

  python -m lgnet_jax.main --config=configs/paris_streetview.py \
      --config.data.train_dir=/path/to/paris_train \
      --config.data.test_dir=/path/to/paris_eval \
      --config.loss.vgg_weights=/path/to/vgg16-397923af.pth
"""

from lgnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'folder'
  return config
