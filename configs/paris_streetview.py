"""LGNet on Paris StreetView, read from an image folder. Run as:

  python -m lgnet_jax.main --config=configs/paris_streetview.py \
      --config.data.train_dir=/path/to/paris_train \
      --config.loss.vgg_weights=/path/to/vgg16-397923af.pth
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'folder'
  return config
