"""A small LGNet that visibly learns in minutes on a CPU, on photographs shipped with scikit-image.

All three stages and the discriminator at reduced width, random 256x256 crops, procedural
free-form masks. The perceptual and style terms are off: they need ImageNet VGG16 weights
(a randomly initialised VGG16 gives them no signal), so the demo's time goes to more steps
of the pixel, total-variation and adversarial terms. Run as:

  python -m lgnet_jax.main --config=configs/demo.py

With ImageNet VGG16 weights (see the README) the paper's perceptual and style terms come
back with
  --config.loss.lambda_perceptual=0.05 --config.loss.lambda_style=120
  --config.loss.vgg_weights=vgg16-397923af.pth
"""

from lgnet_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.ngf = 8
  config.model.ngf_local = 8
  config.model.ndf = 16
  config.loss.lambda_perceptual = 0.0
  config.loss.lambda_style = 0.0
  config.loss.vgg_random_init = True  # only used if the two terms above are turned on
  config.data.source = 'demo'
  config.data.demo_num_images = 32
  config.train.batch_size = 2
  config.train.log_every_steps = 10
  config.train.sample_every_steps = 50
  config.train.checkpoint_every_steps = 50
  config.train.keep_checkpoints = 2
  # 16 steps per epoch: 10 epochs at a constant rate, then 10 of linear decay (320 steps).
  config.optim.learning_rate = 1e-3
  config.optim.n_epochs = 10
  config.optim.n_epochs_decay = 10
  return config
