"""LG behind another method's results, computed anywhere (LaMa, MAT, a PyTorch PEN-Net, ...).

LG trains on fixed (image, mask, result) triples: the images of `data.train_dir` (or
`data.train_files`), the masks they were made with in `data.train_mask_dir` and the method's
results in `data.first_stage_dir`, paired by file name (see
lgnet_jax/data/first_stage_results.py); the three are flipped together, and there are no
random masks. Mind that a method's results on its own training images are easier than on
unseen ones: results on images the method never trained on make a fairer training set.

Evaluation scores LG on the evaluation pairs: write them with
  lgnet eval-pairs --config=configs/xlg_precomputed.py --output-dir=PAIRS
run the method on every PAIRS/<bucket>/images/<n>.png with its mask, save its result as
RESULTS/<bucket>/<n>.png, then
  python -m lgnet_jax.main --config=configs/xlg_precomputed.py --mode=eval --workdir=W \
      --config.data.test_first_stage_dir=RESULTS
which reports the method ("X") and X_LG side by side (Table VIII). Only LG learns; there is
no discriminator. The workdir cannot be served or exported as one network (the first stage
is files); `lgnet inpaint --first-stage-dir=RESULTS` runs it on photos. Widths and schedule
are the demo's; for a real run set them as configs/places2.py does.
"""

from lgnet_jax.configs import demo


def get_config():
  config = demo.get_config()
  config.model.first_stage = 'precomputed'
  config.data.source = 'folder'
  config.data.train_dir = 'train/images'  # set yours: the images,
  config.data.train_mask_dir = 'train/masks'  # the masks the method filled,
  config.data.first_stage_dir = 'train/results'  # and its results, named as the images
  config.data.test_dir = 'test/images'  # the test images eval-pairs pairs with masks
  return config
