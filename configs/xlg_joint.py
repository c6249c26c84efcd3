"""LG behind a first stage of your own, trained jointly with it (the paper's "X_LG", Table VIII).

The first stage is any Flax linen module named as `package.module:Callable` (see
lgnet_jax/models/first_stage.py for the contract: `stage(x, train)`, x = (B, H, W, 4) known
pixels with holes at 1.0 and the mask, returning (B, H, W, 3) in [-1, 1]). It takes stage
G1's place: the discriminator judges its composite, its L1 terms count, and LG (the local
refiner and the attention U-Net) follows with the usual merges. Here it is the project's own
U-Net built from its class (at the demo's width), as an example of the naming; put yours in
its place (the README's "LG after your own network" has a complete example):

  python -m lgnet_jax.main --config=configs/xlg_joint.py --workdir=/tmp/xlg_joint \
      --config.model.first_stage=my_nets:PenNet

Keyword arguments for your callable go in `model.first_stage_args`, in a config file of
yours that starts from this one (flags can only override the fields that exist).

Serving, exporting or inpainting the resulting workdir imports that code, so those commands
need --allow-user-code. Widths, data and schedule are the demo's (photos bundled with scikit-image,
minutes on a CPU); for a real run set them as configs/places2.py does (and the VGG16 weights
of the perceptual and style terms).
"""

from lgnet_jax.configs import demo


def get_config():
  config = demo.get_config()
  config.model.first_stage = 'lgnet_jax.models.unet:UNet'
  return config
