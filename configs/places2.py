"""LGNet on Places2 as in the paper: 20 scene categories, 2,000 training images each.

Places2 is read through TFDS `places365_small` (256x256). The paper does not name its 20
categories; `data.categories` holds this project's documented choice (see
lgnet_jax/input_pipeline.py) and can be overridden. Run as:

  python -m lgnet_jax.main --config=configs/places2.py \
      --config.data.tfds_data_dir=/path/to/tensorflow_datasets \
      --config.loss.vgg_weights=/path/to/vgg16-397923af.pth
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'places2'
  return config
