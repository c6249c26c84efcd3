"""LG behind a frozen first stage of your own: a pretrained network "X" that does not change.

The module (`model.first_stage`, as in configs/xlg_joint.py) runs in evaluation mode (its
BatchNorm statistics fixed), gets no gradient, and starts from `model.first_stage_weights`:
a .msgpack of its {'params', 'batch_stats'} (`flax.serialization.msgpack_serialize`) or an
orbax checkpoint of them. Only LG learns; there is no discriminator, as in the paper's
experiment where LG is appended to an existing method. Evaluation reports X (the frozen
module alone) and X_LG side by side. Run as:

  python -m lgnet_jax.main --config=configs/xlg_frozen.py --workdir=/tmp/xlg_frozen \
      --config.model.first_stage=my_nets:PenNet \
      --config.model.first_stage_weights=pen_net.msgpack
"""

from lgnet_jax.configs import xlg_joint


def get_config():
  config = xlg_joint.get_config()
  config.model.first_stage_trainable = False
  config.model.first_stage_weights = 'first_stage.msgpack'  # set yours
  return config
