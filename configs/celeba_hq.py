"""LGNet on CelebA-HQ (TFDS `celeb_a_hq/256`, manual download). Run as:

  python -m lgnet_jax.main --config=configs/celeba_hq.py \
      --config.data.tfds_data_dir=/path/to/tensorflow_datasets \
      --config.loss.vgg_weights=/path/to/vgg16-397923af.pth
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'celeba_hq'
  return config
