"""LGNet on CelebA-HQ (TFDS `celeb_a_hq/256`, manual download).

The builder's single split of 30,000 images is divided with the fixed seed
`data.split_seed` into 27,000 training and `data.celeba_test_size` (3,000) test images.
Prepare it once: put data256x256.tar (made as progressive_growing_of_gans describes) in
DIR/downloads/manual and run

  tfds build celeb_a_hq/256 --data_dir=DIR --manual_dir=DIR/downloads/manual \
      --file_format=array_record

Run as:

  python -m lgnet_jax.main --config=configs/celeba_hq.py \
      --config.data.tfds_data_dir=DIR \
      --config.loss.vgg_weights=/path/to/vgg16-397923af.pth
"""

from lgnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'celeba_hq'
  config.data.celeba_test_size = 3000
  return config
