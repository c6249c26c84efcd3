"""LGNet on Places2 as in the paper: 20 scene categories, 2,000 training images each.

Places2 is read through TFDS `places365_small` (256x256), prepared once with

  tfds build places365_small --data_dir=DIR --file_format=array_record

Training images: `data.train_per_category` (2,000) per category, drawn from the train split
with the fixed seed `data.subset_seed`; test images: every validation image of the same
categories (100 each). The labels of a split are read once and cached as JSON beside the
dataset (or in `data.cache_dir`).

The paper does not name its 20 categories. `data.categories` holds this project's choice,
spread over natural, man-made outdoor and indoor scenes (names exactly as in Places365's
label list, which TFDS uses; integer class ids work too), and can be overridden, e.g.
--config.data.categories="('beach', 'kitchen')". Run as:

  python -m lgnet_jax.main --config=configs/places2.py \
      --config.data.tfds_data_dir=DIR \
      --config.loss.vgg_weights=/path/to/vgg16-397923af.pth
"""

from lgnet_jax.configs import default

CATEGORIES = (
    # natural
    'beach',
    'canyon',
    'desert/sand',
    'field/wild',
    'forest_path',
    'lake/natural',
    'mountain_snowy',
    'waterfall',
    # man-made, outdoor
    'bridge',
    'building_facade',
    'harbor',
    'highway',
    'residential_neighborhood',
    'street',
    # indoor
    'bedroom',
    'church/indoor',
    'kitchen',
    'library/indoor',
    'living_room',
    'office',
)


def get_config():
  config = default.get_config()
  config.data.source = 'places2'
  config.data.categories = CATEGORIES
  config.data.train_per_category = 2000
  return config
