"""Benchmarks of the input pipeline, the training step, inference and each network component.

  python -m lgnet_jax.bench --config=configs/places2.py --what=data|train|infer|stages|profile [--json]

--what=data    Input-pipeline throughput (images/s) of the training iterator with the config's
               preprocessing (bicubic resize, flips, mask-folder augmentation or brush strokes)
               on generated data: a temporary folder of random smooth JPEGs, half 256x256 (as
               places365_small) and half 683x512 (Places2's high-resolution size), and, unless
               the config names one, a folder of 512x512 free-form mask PNGs (as the NVIDIA
               irregular masks). Times --batches batches after --warmup batches (default 5)
               and prints one line (a JSON object with --json).
--what=train   The real data-parallel training step (`train_step.compile_train_step`) over
               every device, on random weights and random inputs (images in [-1, 1], binary
               masks with rectangular holes) of the config's image size and model widths; the
               global batch (--batch-size, default train.batch_size) is split over the 'data'
               axis. A randomly initialised VGG16 stands in for the ImageNet one (no file is
               read; none is used when the perceptual and style weights are both 0).
--what=infer   The evaluation-mode forward pass of every stage, jitted as `inference.Inpainter`
               runs it, on one device; --batch-size defaults to 1.
--what=stages  Per-component times at the config's size and --batch-size (default
               train.batch_size): each generator stage alone in training mode (BatchNorm batch
               statistics), forward and forward + backward w.r.t. its params; G3's three
               cosine-affinity attention read-outs alone, on the decoder maps they see (H/16,
               H/8 and H/4 with 8, 4 and 2 ngf channels), backward w.r.t. their input; VGG16 on
               the batch the losses give it (ground truth plus out and merged of every later
               stage), backward w.r.t. its input, when the perceptual or style weight is not 0
               (the step runs it only then); D, backward w.r.t. its params. One JSON line
               per component: component, forward_ms, forward_backward_ms (medians),
               flops_forward, flops_forward_backward, batch, input shapes and calls_per_step
               (how often the training step runs it).

--what=profile The training step as --what=train, traced with `jax.profiler` (--steps, default 1,
               after --warmup) into --profile_dir (default workdirs/profile: open it with
               `tensorboard --logdir` or load the .trace.json.gz in Perfetto); prints the time
               per network and pass, per class of work and the slowest XLA operations. On CPU
               it turns on XLA's per-operation trace events for this run.

train and infer compile ahead of time (`.lower(...).compile()`, timed as compile_s: tracing,
lowering and XLA compilation) and read XLA's cost analysis; then --steps calls after --warmup
calls (default 2) are timed one by one, each waiting for its result. flops_per_image is the
per-device program's flops times the devices over the global batch (replicated work such
as the optimizer update is counted once per device). peak_bytes is the first local device's
peak memory use where the backend reports it (GPU, TPU), else null; host names the machine
(CPU model and vector ISA, or the accelerator), since CPU figures differ between hosts.

With --json the one result line is the only output on stdout; logs go to stderr.

  --num_workers (or --num-workers) N  grain worker processes (--what=data; default: the config's).
  --batch_size (or --batch-size) N    global batch (train, infer, stages).
"""

import functools
import json
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from lgnet_jax import cli
from lgnet_jax import errors
from lgnet_jax.runtime import host_memory
from lgnet_jax.training import losses
from lgnet_jax import profiling
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.runtime import sharding
from lgnet_jax.training import step as train_step_lib
from lgnet_jax.models import VGG16Features, build_generator
from lgnet_jax.models import attention as attention_lib
from lgnet_jax.models import lgnet as lgnet_lib
from lgnet_jax.models import unet as unet_lib
from lgnet_jax.models import vgg16
from lgnet_jax.models.discriminator import SPECTRAL

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Configuration file (model, sizes, preprocessing).')
flags.DEFINE_enum(
    'what', 'data', ['data', 'train', 'infer', 'stages', 'profile'], 'What to measure.'
)
flags.DEFINE_string('profile_dir', 'workdirs/profile', 'Where --what=profile writes its trace.')
flags.DEFINE_integer(
    'num_workers', None, 'grain worker processes (default: config.data.num_workers).'
)
flags.DEFINE_integer('batches', 50, 'Batches timed (--what=data).', lower_bound=1)
flags.DEFINE_integer(
    'warmup', None, 'Untimed batches (data; default 5) or calls (default 2) first.', lower_bound=0
)
flags.DEFINE_integer(
    'steps',
    None,
    'Calls timed (train, infer, stages: default 10; profile: default 1).',
    lower_bound=1,
)
flags.DEFINE_integer(
    'batch_size', None, 'Global batch (default: train.batch_size; infer: 1).', lower_bound=1
)
flags.DEFINE_integer('images', 64, 'Generated images (--what=data).', lower_bound=1)
flags.DEFINE_enum(
    'masks',
    'folder',
    ['folder', 'procedural'],
    'Training masks when the config names no mask folder: generated mask files '
    '(augmented by masks.MaskFolder) or the brush-stroke generator.',
)
flags.DEFINE_bool('json', False, 'Print the result as one JSON object.')
flags.mark_flags_as_required(['config'])

IMAGE_SIZES = ((256, 256), (683, 512))  # (width, height)
MASK_SIZE = 512
DATA_WARMUP, DEVICE_WARMUP, DEVICE_STEPS = 5, 2, 10
DASHED_FLAGS = ('num-workers', 'batch-size')


class BenchError(errors.UserError):
  """A benchmark that cannot run as asked (batch size, devices): exit status 2."""


# --- input pipeline ---------------------------------------------------------------------------


def write_images(folder: pathlib.Path, count: int, seed: int = 0) -> list[tuple[int, int]]:
  """`count` JPEGs of smooth random content (photo-like file sizes); returns their sizes."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  sizes = []
  for i in range(count):
    width, height = IMAGE_SIZES[i % len(IMAGE_SIZES)]
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.int16)
    grain_noise = rng.integers(-12, 13, (height, width, 3))
    pixels = np.clip(smooth + grain_noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / f'{i:05d}.jpg', quality=90)
    sizes.append((width, height))
  return sizes


def write_masks(folder: pathlib.Path, count: int = 32, seed: int = 0) -> None:
  """`count` free-form 512x512 mask PNGs (white = hole)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from lgnet_jax.data import masks  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  for i in range(count):
    mask = masks.brush_stroke_mask(rng, MASK_SIZE, (0.05, 0.6))
    Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f'{i:05d}.png')


def bench_data(
    config, num_workers: int | None, batches: int, warmup: int, images: int, mask_mode: str
) -> dict:
  """Training-iterator throughput on generated data, as a dict."""
  # The data stack (grain, TFDS) is imported here only: the device benchmarks run without it.
  from lgnet_jax.data import batching  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory(prefix='lgnet_bench_') as tmp:
    root = pathlib.Path(tmp)
    (root / 'images').mkdir()
    write_images(root / 'images', images)
    with config.unlocked():
      config.data.source = 'folder'
      config.data.train_dir = str(root / 'images')
      config.data.train_files = None
      if num_workers is not None:
        config.data.num_workers = num_workers
      if not config.data.train_mask_dir and mask_mode == 'folder':
        (root / 'masks').mkdir()
        write_masks(root / 'masks')
        config.data.train_mask_dir = str(root / 'masks')
    iterator, _ = batching.create_train_iterator(config)
    for _ in range(warmup):
      batch = next(iterator)
    batch_size = len(next(iterator)['image'])
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(iterator)
    seconds = time.perf_counter() - start
    del batch, iterator
  return {
      'what': 'data',
      'batch_size': batch_size,
      'num_workers': config.data.num_workers,
      'images_per_s': round(batches * batch_size / seconds, 1),
      'batches': batches,
      'seconds': round(seconds, 3),
      'image_size': config.model.image_size,
      'source_sizes': [f'{w}x{h}' for w, h in IMAGE_SIZES],
      'masks': 'folder' if config.data.train_mask_dir else 'procedural',
      'read_threads': config.data.read_threads,
  }


# --- shared helpers of the device benchmarks ---------------------------------------------------


def random_inputs(batch: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Images uniform in [-1, 1] (B, S, S, 3) and binary masks (B, S, S, 1), one rectangular
  hole of 1/4 to 1/2 of the side per image (1 = hole)."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1.0, 1.0, (batch, size, size, 3)).astype(np.float32)
  masks = np.zeros((batch, size, size, 1), np.float32)
  for mask in masks:
    height, width = rng.integers(size // 4, size // 2 + 1, 2)
    top, left = rng.integers(0, size - height + 1), rng.integers(0, size - width + 1)
    mask[top : top + height, left : left + width] = 1.0
  return {'image': images, 'mask': masks}


def time_calls(call: Callable[[], object], warmup: int, steps: int) -> list[float]:
  """Seconds of each of `steps` calls after `warmup` calls, each waiting for its result."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(call())
    seconds.append(time.perf_counter() - start)
  return seconds


def compile_ahead(fn: Callable, *args) -> tuple[Callable, float, float | None]:
  """(executable, seconds to trace, lower and compile, XLA's flops of the per-device program)."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  return compiled, compile_s, compiled_flops(compiled)


def compiled_flops(compiled) -> float | None:
  """XLA's cost-analysis flops of a compiled executable, or None if the backend has none."""
  try:
    analysis = compiled.cost_analysis()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('no cost analysis: %s', e)
    return None
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops is not None and flops > 0 else None


def peak_bytes() -> int | None:
  """Peak memory in use on the first local device, if the backend reports it (not on CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  value = (stats or {}).get('peak_bytes_in_use')
  return None if value is None else int(value)


def config_name(flag_name: str = 'config') -> str | None:
  try:
    filename = config_flags.get_config_filename(FLAGS[flag_name])
  except Exception:  # pylint: disable=broad-except
    return None
  return pathlib.Path(filename.split(':')[0]).stem if filename else None


def describe(config) -> dict:
  """The model fields every device result carries."""
  generator, discriminator = train_state_lib.build_networks(config)
  return {
      'dtype': str(jnp.dtype(config.model.dtype)),
      'param_dtype': str(jnp.dtype(config.model.param_dtype)),
      'config': config_name(),
      'variant': config.model.variant,
      'image_size': config.model.image_size,
      'ngf': generator.ngf,
      'ngf_local': generator.ngf_local,
      'ndf': discriminator.ndf,
  }


def timing_result(
    what: str,
    batch: int,
    devices: int,
    compile_s: float,
    seconds: Sequence[float],
    flops: float | None,
    config,
) -> dict:
  median = float(np.median(seconds))
  flops_per_image = None if flops is None else flops * devices / batch
  return {
      'what': what,
      'batch_size': batch,
      'devices': devices,
      'backend': jax.default_backend(),
      'compile_s': round(compile_s, 3),
      'step_s_median': round(median, 6),
      'step_s_min': round(float(np.min(seconds)), 6),
      'images_per_s': float(f'{batch / median:.4g}'),
      'flops_per_image': None if flops_per_image is None else round(flops_per_image),
      'peak_bytes': peak_bytes(),
      'steps': len(seconds),
      'host': profiling.host_name(),
      'freed_memory_kept': host_memory.is_kept(),
      **describe(config),
  }


def quick_init():
  """Context for drawing random weights: JAX's non-partitionable threefry, whose init programs
  compile several times faster on CPU (13.6 s -> 2.9 s for an ngf-4 U-Net). Only the random
  values differ; the benchmarked programs draw no random numbers."""
  return jax.threefry_partitionable(False)


def random_vgg_params(config):
  """A randomly initialised VGG16 (as `train.load_vgg_params` builds for demos), or None when
  the perceptual and style weights are both 0 and the step skips VGG."""
  if not losses.uses_vgg(config.loss):
    return None
  return vgg16.random_params(config.seed + 1)


# --- training step, inference ----------------------------------------------------------------


def _train_setup(
    config, batch_size: int | None
) -> tuple[Callable[[], tuple], object, float, float | None, int]:
  """The compiled training step on random state and inputs, ready to call repeatedly.

  Returns (call, compiled, compile seconds, flops, global batch); each `call()` runs one step
  on the state the previous call returned (the state is donated) and returns (state, terms).
  """
  batch_size = batch_size or config.train.batch_size
  devices = jax.device_count()
  if batch_size % devices:
    raise BenchError(f'batch size {batch_size} is not divisible by {devices} devices')
  mesh = sharding.create_mesh()
  replicated = sharding.replicated(mesh)
  data_sharding = sharding.batch_split(mesh)

  create = functools.partial(train_state_lib.create_train_state, config)
  with quick_init():
    state = jax.jit(create, out_shardings=replicated)(jax.random.PRNGKey(config.seed))
    vgg_params = jax.device_put(random_vgg_params(config), replicated)
  local = batch_size // jax.process_count()
  batch = sharding.make_global_batch(
      random_inputs(local, config.model.image_size, seed=jax.process_index()), data_sharding
  )

  step_fn = train_step_lib.compile_train_step(config, mesh)
  compiled, compile_s, flops = compile_ahead(step_fn, state, batch, vgg_params)
  logging.info('train step compiled in %.1f s', compile_s)

  def call():
    nonlocal state
    state, terms = compiled(state, batch, vgg_params)  # the state is donated: thread it through
    return state, terms

  return call, compiled, compile_s, flops, batch_size


def bench_train(config, batch_size: int | None, steps: int, warmup: int) -> dict:
  """The data-parallel training step on every device: compile time, step times, flops."""
  call, _, compile_s, flops, batch_size = _train_setup(config, batch_size)
  results = []
  seconds = time_calls(lambda: results.append(call()) or results[-1], warmup, steps)
  terms = jax.device_get(results[-1][1])
  logging.info('last step: %s', {k: round(float(v), 5) for k, v in terms.items()})
  return timing_result('train', batch_size, jax.device_count(), compile_s, seconds, flops, config)


def bench_profile(
    config, batch_size: int | None, steps: int, warmup: int, profile_dir: str
) -> dict:
  """Traces `steps` training steps into `profile_dir` and summarises where the time went."""
  call, compiled, compile_s, flops, batch_size = _train_setup(config, batch_size)
  for _ in range(warmup):
    jax.block_until_ready(call())
  start = time.perf_counter()
  with jax.profiler.trace(profile_dir):
    for _ in range(steps):
      jax.block_until_ready(call())
  step_s = (time.perf_counter() - start) / steps
  summary = profiling.summarize(profile_dir, compiled.as_text(), steps)
  return {
      'what': 'profile',
      'batch_size': batch_size,
      'devices': jax.device_count(),
      'backend': jax.default_backend(),
      'host': profiling.host_name(),
      'compile_s': round(compile_s, 3),
      'step_s_traced': round(step_s, 3),
      'flops_per_image': None if flops is None else round(flops * jax.device_count() / batch_size),
      'profile_dir': str(profile_dir),
      **summary,
      **describe(config),
  }


def bench_infer(config, batch_size: int | None, steps: int, warmup: int) -> dict:
  """Every stage in evaluation mode on one device, jitted as `inference.Inpainter` runs it."""
  batch_size = batch_size or 1
  generator = build_generator(config.model)
  inputs = jax.device_put(random_inputs(batch_size, config.model.image_size))
  images, masks = inputs['image'], inputs['mask']
  with quick_init():
    variables = jax.jit(functools.partial(generator.init, train=False))(
        jax.random.PRNGKey(config.seed), images, masks
    )
  forward = jax.jit(functools.partial(generator.apply, train=False))
  compiled, compile_s, flops = compile_ahead(forward, variables, images, masks)
  logging.info('forward pass compiled in %.1f s', compile_s)
  seconds = time_calls(lambda: compiled(variables, images, masks), warmup, steps)
  return timing_result('infer', batch_size, 1, compile_s, seconds, flops, config)


# --- per-component breakdown -------------------------------------------------------------------


def _mean_of(tree) -> jax.Array:
  """A scalar depending on every leaf: the sum of their float32 means."""
  return sum(jnp.mean(leaf.astype(jnp.float32)) for leaf in jax.tree.leaves(tree))


def _component(
    name: str,
    forward: Callable,
    forward_backward: Callable,
    args: tuple,
    steps: int,
    warmup: int,
    **info,
) -> dict:
  """Times the jitted `forward(*args)` and `forward_backward(*args)` (median ms) with flops."""
  result = {'component': name}
  for key, fn in (('forward', forward), ('forward_backward', forward_backward)):
    compiled, compile_s, flops = compile_ahead(jax.jit(fn), *args)
    seconds = time_calls(lambda compiled=compiled: compiled(*args), warmup, steps)
    result[f'{key}_ms'] = round(float(np.median(seconds)) * 1e3, 3)
    result[f'{key}_min_ms'] = round(float(np.min(seconds)) * 1e3, 3)
    result[f'flops_{key}'] = None if flops is None else round(flops)
    logging.info('%s %s: compiled in %.1f s, %.3f ms', name, key, compile_s, result[f'{key}_ms'])
  return {**result, **info}


def _stage_modules(config) -> list[tuple[str, object]]:
  """(name, module) of each generator stage of the variant, as `LGNet` builds them."""
  generator = build_generator(config.model)
  # LGNet_share's first stage is the last U-Net without attention: the same computation.
  return [
      (
          f'G{index + 1}',
          lgnet_lib.stage_module(
              generator, kind, attention=not (generator.share_first_stage and index == 0)
          ),
      )
      for index, kind in enumerate(generator.stages)
  ]


def attention_shapes(batch: int, size: int, ngf: int) -> list[tuple[int, int, int, int]]:
  """Shapes of the decoder maps G3 attends over: after up steps 5, 4, 3 of the U-Net."""
  widths = unet_lib.encoder_widths(ngf)
  return [
      (batch, size // 2 ** (level - 1), size // 2 ** (level - 1), widths[level - 2])
      for level in sorted(unet_lib.ATTENTION_AFTER, reverse=True)
  ]


def _vgg_component(config, generator, batch: int, steps: int, warmup: int, common: dict) -> dict:
  """VGG16 on the batch the perceptual and style terms give it, backward w.r.t. its input."""
  vgg = VGG16Features(**train_state_lib.model_dtypes(config.model))
  later_stages = len(generator.stages) - 1
  vgg_batch = batch * (1 + 2 * later_stages)  # ground truth, out_s and merged_s of stages >= 2
  vgg_input = jnp.asarray(random_inputs(vgg_batch, config.model.image_size, seed=1)['image'])
  with quick_init():
    vgg_params = vgg16.random_params(config.seed)
  return _component(
      'vgg16',
      lambda p, x: vgg.apply({'params': p}, x),
      lambda p, x: jax.value_and_grad(lambda x: _mean_of(vgg.apply({'params': p}, x)))(x),
      (vgg_params, vgg_input),
      steps,
      warmup,
      inputs=[list(vgg_input.shape)],
      calls_per_step=1 if later_stages else 0,
      **{**common, 'batch': vgg_batch},
  )


def bench_stages(config, batch_size: int | None, steps: int, warmup: int) -> list[dict]:
  """One record per component the step runs: G1, G2, G3, attention, VGG16 (when the perceptual
  or style term is on), D."""
  batch = batch_size or config.train.batch_size
  size = config.model.image_size
  generator = build_generator(config.model)
  dtypes = train_state_lib.model_dtypes(config.model)
  inputs = random_inputs(batch, size)
  images, masks = jnp.asarray(inputs['image']), jnp.asarray(inputs['mask'])
  rng = jax.random.PRNGKey(config.seed)
  common = {
      'batch': batch,
      'backend': jax.default_backend(),
      'host': profiling.host_name(),
      'dtype': str(dtypes['dtype']),
      'image_size': size,
      'ngf': generator.ngf,
      'ngf_local': generator.ngf_local,
  }
  timing = {'steps': steps, 'warmup': warmup, **common}
  records = _stage_components(config, images, masks, rng, timing)
  if lgnet_lib.GLOBAL_ATTENTION in generator.stages:
    records.append(_attention_component(generator, batch, size, dtypes['dtype'], rng, timing))
  if losses.uses_vgg(config.loss):  # the step runs VGG16 only for these terms
    records.append(_vgg_component(config, generator, batch, steps, warmup, common))
  records.append(_d_component(config, images, rng, timing))
  return records


def _stage_components(
    config, images: jax.Array, masks: jax.Array, rng: jax.Array, timing: dict
) -> list[dict]:
  """G1, G2, G3 each on the first stage's (B, H, W, 4) input, in training mode."""
  stage_input = jnp.concatenate([images * (1 - masks) + masks, masks], axis=-1)  # (B, H, W, 4)
  records = []
  for name, module in _stage_modules(config):
    with quick_init():
      variables = jax.jit(functools.partial(module.init, train=False))(rng, stage_input)

    def forward(variables, x, module=module):
      return module.apply(variables, x, train=True, mutable=['batch_stats'])

    def forward_backward(variables, x, module=module):
      def loss(params):
        out, updates = module.apply(
            {**variables, 'params': params}, x, train=True, mutable=['batch_stats']
        )
        return _mean_of(out), updates

      return jax.value_and_grad(loss, has_aux=True)(variables['params'])

    records.append(
        _component(
            name,
            forward,
            forward_backward,
            (variables, stage_input),
            inputs=[list(stage_input.shape)],
            calls_per_step=1,
            **timing,
        )
    )
  return records


def _attention_component(
    generator, batch: int, size: int, dtype, rng: jax.Array, timing: dict
) -> dict:
  """The three attention read-outs of G3 on random decoder maps of their shapes."""
  chunk = generator.attention_query_chunk
  with quick_init():
    features = tuple(
        jax.random.normal(jax.random.fold_in(rng, i), shape, dtype)
        for i, shape in enumerate(attention_shapes(batch, size, generator.ngf))
    )

  def attend(features):
    return tuple(attention_lib.cosine_affinity_attention(f, chunk) for f in features)

  return _component(
      'attention',
      attend,
      lambda f: jax.value_and_grad(lambda f: _mean_of(attend(f)))(f),
      (features,),
      inputs=[list(f.shape) for f in features],
      query_chunk=chunk,
      calls_per_step=1,
      **timing,
  )


def _d_component(config, images: jax.Array, rng: jax.Array, timing: dict) -> dict:
  """The discriminator with its spectral-norm update, as each of its three calls a step."""
  _, discriminator = train_state_lib.build_networks(config)
  with quick_init():
    d_variables = jax.jit(functools.partial(discriminator.init, update_stats=False))(rng, images)

  def d_forward(variables, x):
    return discriminator.apply(variables, x, update_stats=True, mutable=[SPECTRAL])

  def d_forward_backward(variables, x):
    def loss(params):
      scores, updates = discriminator.apply(
          {**variables, 'params': params}, x, update_stats=True, mutable=[SPECTRAL]
      )
      return _mean_of(scores), updates

    return jax.value_and_grad(loss, has_aux=True)(variables['params'])

  # The step runs D three times: on merged1 and the real images (D update), on merged1 (G update).
  return _component(
      'D',
      d_forward,
      d_forward_backward,
      (d_variables, images),
      inputs=[list(images.shape)],
      calls_per_step=3,
      **timing,
  )


def profile_report(record: dict) -> str:
  """The profile summary as a few readable lines."""
  lines = [
      f'train step, batch {record["batch_size"]} on {record["devices"]} {record["backend"]} '
      f'device(s) ({record["host"]}): {record["step_s_traced"]:.2f} s per traced step, '
      f'{record["ops_ms_per_step"] / 1e3:.2f} s in XLA operations; trace in '
      f'{record["profile_dir"]} (TensorBoard --logdir, or Perfetto)'
  ]
  for title, key in (('by network and pass', 'by_network_ms'), ('by class of work', 'by_class_ms')):
    lines.append(f'{title} (ms per step):')
    lines += [f'  {ms:10.1f}  {name}' for name, ms in record[key].items()]
  lines.append('slowest operations (ms per step):')
  lines += [
      f'  {op["ms"]:10.1f}  {op["op"]} {op["shape"]}  {op["where"]}' for op in record['top_ops']
  ]
  return '\n'.join(lines)


# --- command line ------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _fail(what: str, error: BaseException | str) -> None:
  """One error line on stderr (the traceback is logged at --verbosity=1); exit status 2 for bad
  input (a UserError), 1 for a benchmark that failed (no backend, out of memory)."""
  message = error if isinstance(error, str) else _one_line(error)
  print(f'bench --what={what}: error: {message}', file=sys.stderr)
  sys.exit(errors.USAGE_ERROR_EXIT if isinstance(error, errors.UserError) else errors.FAILURE_EXIT)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  config, what = FLAGS.config, FLAGS.what
  if what == 'data':
    warmup = DATA_WARMUP if FLAGS.warmup is None else FLAGS.warmup
    result = bench_data(config, FLAGS.num_workers, FLAGS.batches, warmup, FLAGS.images, FLAGS.masks)
    logging.info('%s', result)
    if FLAGS.json:
      print(json.dumps(result))
    else:
      print(
          f'{result["what"]}: {result["images_per_s"]} images/s (batch {result["batch_size"]}, '
          f'{result["num_workers"]} workers, {result["masks"]} masks)'
      )
    return

  warmup = DEVICE_WARMUP if FLAGS.warmup is None else FLAGS.warmup
  if what == 'profile':
    profiling.enable_cpu_op_events()  # before the backend starts
  try:
    jax.devices()
  except Exception as e:  # pylint: disable=broad-except
    logging.debug('no backend', exc_info=True)
    _fail(
        what,
        f'no usable JAX backend (JAX_PLATFORMS={os.environ.get("JAX_PLATFORMS", "")!r}): '
        f'{_one_line(e)}',
    )
  try:
    if what == 'stages':
      records = bench_stages(config, FLAGS.batch_size, FLAGS.steps or DEVICE_STEPS, warmup)
    elif what == 'profile':
      record = bench_profile(config, FLAGS.batch_size, FLAGS.steps or 1, warmup, FLAGS.profile_dir)
      print(json.dumps(record) if FLAGS.json else profile_report(record))
      return
    else:
      bench = bench_train if what == 'train' else bench_infer
      records = [bench(config, FLAGS.batch_size, FLAGS.steps or DEVICE_STEPS, warmup)]
  except (RuntimeError, ValueError, MemoryError) as e:  # devices, memory, batch size, config
    logging.debug('benchmark failed', exc_info=True)
    _fail(what, e)

  for record in records:
    logging.info('%s', record)
    if FLAGS.json or what == 'stages':
      print(json.dumps(record))
    else:
      flops = record['flops_per_image']
      print(
          f'{what}: {record["images_per_s"]} images/s, {record["step_s_median"] * 1e3:.1f} ms '
          f'median ({record["step_s_min"] * 1e3:.1f} min) per batch of {record["batch_size"]} '
          f'on {record["devices"]} {record["backend"]} device(s), compile {record["compile_s"]:.1f} s'
          + ('' if flops is None else f', {flops / 1e9:.1f} GFLOP/image')
      )


def _dashes_to_underscores(argv: list[str]) -> list[str]:
  """Accepts --num-workers and --batch-size for --num_workers and --batch_size."""
  out = []
  for arg in argv:
    for name in DASHED_FLAGS:
      if arg == f'--{name}' or arg.startswith(f'--{name}='):
        arg = '--' + name.replace('-', '_') + arg[len(name) + 2 :]
    out.append(arg)
  return out


def run() -> None:
  """The console-script entry point (`lgnet-bench`), also what `python -m` runs."""
  host_memory.keep_freed_memory()  # before JAX starts its backend
  argv = _dashes_to_underscores(sys.argv)
  cli.run_cli(lambda: app.run(main, argv=cli.with_bundled_config(argv)))


if __name__ == '__main__':
  run()
