"""A small LGNet that trains in minutes on a CPU, on photographs shipped with scikit-image.

All three stages and the discriminator at reduced width, random 256x256 crops, procedural
free-form masks, and a randomly initialised VGG16 for the perceptual and style terms (no
download). Run as:

  python -m lgnet_jax.main --config=configs/demo.py
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.ngf = 8
  config.model.ngf_local = 8
  config.loss.vgg_random_init = True
  config.data.source = 'demo'
  config.data.demo_num_images = 32
  config.train.batch_size = 2
  config.train.num_train_steps = 100
  config.train.log_every_steps = 10
  config.train.sample_every_steps = 50
  config.train.checkpoint_every_steps = 50
  config.train.keep_checkpoints = 2
  config.optim.n_epochs = 8
  config.optim.n_epochs_decay = 8
  return config
