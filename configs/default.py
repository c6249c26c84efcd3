"""Default LGNet hyper-parameters: the paper's and the reference implementation's.

Every other config starts from this one and overrides what differs. Run as:

  python -m lgnet_jax.main --config=configs/default.py --workdir=/tmp/lgnet

(the data fields must point at a dataset; see configs/places2.py and configs/celeba_hq.py).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Networks. `ngf` unset means the variant's width: 64, or 48 for lgnet_light.
  config.model = ml_collections.ConfigDict()
  config.model.variant = 'lgnet'  # lgnet | lgnet_share | lgnet_light | C | C+L | C+G_att | ...
  config.model.ngf = config_dict.placeholder(int)
  config.model.ngf_local = 64
  config.model.ndf = 64  # the discriminator's first width (then 2x, 4x, 8x)
  config.model.attention_query_chunk = config_dict.placeholder(int)  # bounds attention memory
  config.model.remat = False  # recompute each stage in the backward pass: less memory, more time
  config.model.dtype = 'float32'  # compute dtype; losses are computed in at least float32
  config.model.param_dtype = 'float32'  # float64 (with JAX_ENABLE_X64) for exact comparisons
  config.model.image_size = 256
  # The first stage (the paper's "X" of "X_LG", Table VIII; see lgnet_jax/models/first_stage.py):
  # '' the variant's coarse U-Net; 'package.module:Callable' your Flax module, built with the
  # keyword arguments first_stage_args; 'precomputed' another method's results read from
  # files (data.first_stage_dir, data.test_first_stage_dir). Serving, exporting and
  # inpainting a workdir whose first stage is your code needs --allow-user-code.
  config.model.first_stage = ''
  config.model.first_stage_args = ml_collections.ConfigDict()
  # False: the named first stage is frozen (BatchNorm in evaluation mode), loaded from
  # first_stage_weights (a .msgpack of {'params', 'batch_stats'} or an orbax checkpoint of
  # it); then, as with precomputed results, there is no discriminator and only LG learns.
  config.model.first_stage_trainable = True
  config.model.first_stage_weights = config_dict.placeholder(str)

  # Loss weights (paper Eq. 7 and the reference code).
  config.loss = ml_collections.ConfigDict()
  config.loss.lambda_valid = 1.0
  config.loss.lambda_hole = 6.0
  config.loss.lambda_tv = 0.1
  config.loss.lambda_perceptual = 0.05
  config.loss.lambda_style = 120.0
  config.loss.lambda_gan = 0.1
  # ImageNet VGG16 weights: torchvision's vgg16-397923af.pth or an .npz from
  # `python -m lgnet_jax.tools.convert_vgg16`.
  config.loss.vgg_weights = config_dict.placeholder(str)
  config.loss.vgg_random_init = False  # only for demos and smoke tests
  config.loss.vgg_imagenet_normalize = False  # the reference feeds [-1, 1] images as they are

  # Adam with the reference's schedule: constant for n_epochs, then linear decay per epoch.
  config.optim = ml_collections.ConfigDict()
  config.optim.optimizer = 'adam'  # sgd: only for exactness checks (see training/state.py)
  config.optim.learning_rate = 2e-4
  config.optim.b1 = 0.5
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.n_epochs = 100
  config.optim.n_epochs_decay = 100
  config.optim.decay_per_step = False  # True: decay linearly every step instead of per epoch

  # Data (see lgnet_jax/data/): places2 or celeba_hq (TFDS), folder (image folders
  # or file lists: Paris StreetView, your own data) or demo (scikit-image photos).
  config.data = ml_collections.ConfigDict()
  config.data.source = 'places2'
  config.data.tfds_data_dir = config_dict.placeholder(str)  # unset: TFDS's default folder
  config.data.train_dir = config_dict.placeholder(str)  # folder: images, searched recursively
  config.data.test_dir = config_dict.placeholder(str)
  config.data.train_files = config_dict.placeholder(str)  # folder: a text file of image paths
  config.data.test_files = config_dict.placeholder(str)
  # places2: class names (as in places365's label list) or ids; unset: every class.
  config.data.categories = config_dict.placeholder(tuple)
  config.data.train_per_category = 2000  # places2 training images per category
  config.data.subset_seed = 0  # draws those images
  config.data.cache_dir = config_dict.placeholder(str)  # label cache; unset: the dataset's folder
  config.data.celeba_test_size = 3000  # celeba_hq: test images out of 30,000
  config.data.split_seed = 0  # draws them
  config.data.random_crop = config_dict.placeholder(bool)  # unset: only for the demo photos
  # Masks, 1 = hole. Training: a random file of train_mask_dir, or procedural brush strokes.
  config.data.train_mask_dir = config_dict.placeholder(str)
  config.data.hole_ratio = (0.05, 0.6)  # procedural training masks
  config.data.test_mask_dir = config_dict.placeholder(str)  # bucketed by hole ratio
  config.data.test_masks_per_bucket = 1000  # procedural test masks when test_mask_dir is unset
  config.data.test_mask_seed = 0
  config.data.mask_invert = False  # mask files with white = known pixels
  config.data.mask_binarize = False  # the reference keeps bicubic-resized soft edges
  config.data.demo_num_images = 64
  # model.first_stage='precomputed': the first stage's results, one per training image (and
  # per evaluation pair), found by the image's file name (see lgnet_jax/data/first_stage_results.py).
  config.data.first_stage_dir = config_dict.placeholder(str)
  config.data.test_first_stage_dir = config_dict.placeholder(str)
  config.data.num_workers = 0  # grain worker processes (0: read in this process)
  config.data.worker_buffer_size = 2  # batches each worker prepares ahead
  config.data.read_threads = 4  # threads reading and decoding images
  config.data.prefetch = 16  # records read ahead

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 4  # global batch, split over all devices
  config.train.log_every_steps = 100
  config.train.sample_every_steps = 2000
  config.train.checkpoint_every_steps = 5000
  # Evaluation while training: l1/PSNR/SSIM (and FID/LPIPS where config.eval names their
  # weights) on the first eval_num_images test images of each hole-ratio bucket, to
  # TensorBoard. 0: never.
  config.train.eval_every_steps = 10000
  config.train.eval_num_images = 64
  config.train.keep_checkpoints = 3
  config.train.async_checkpointing = True
  # An unreadable newest checkpoint (a truncated or missing file): warn and use the newest
  # readable one (training moves the broken one to WORKDIR/unreadable_checkpoints/). False:
  # stop with an error instead. Evaluation and inference read it from the workdir's config.
  config.train.restore_fallback = True
  config.train.num_train_steps = config_dict.placeholder(int)  # unset: (n_epochs + decay) epochs

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 8  # global; the last batch is padded (see data/testset.py)
  config.eval.step = config_dict.placeholder(int)  # checkpoint to score; unset: the latest
  config.eval.num_samples = 4  # composites saved per bucket
  # FID: pytorch-fid's pt_inception-2015-12-05-6726825d.pth. LPIPS v0.1: torchvision's
  # alexnet-owt-7be5be79.pth (or vgg16-397923af.pth) and the lpips package's alex.pth (vgg.pth).
  # Unset: those columns are left out.
  config.eval.inception_weights = config_dict.placeholder(str)
  config.eval.lpips_backbone = 'alex'
  config.eval.lpips_backbone_weights = config_dict.placeholder(str)
  config.eval.lpips_head_weights = config_dict.placeholder(str)

  # Multi-process runs (see lgnet_jax/runtime/distributed.py and launch/README.md): when a process dies
  # or stops sending heartbeats for heartbeat_timeout_s, every other process exits with an
  # error; relaunching resumes from the last complete checkpoint.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.heartbeat_timeout_s = 100
  config.distributed.initialization_timeout_s = 300  # waiting for every process to join
  config.distributed.shutdown_timeout_s = 60  # waiting for the others at exit

  # A workdir (from training or `lgnet_jax.tools.import_official`) to start the networks from.
  config.init_from = config_dict.placeholder(str)
  return config
