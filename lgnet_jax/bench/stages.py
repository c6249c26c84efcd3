"""Per-component times: each network the training step runs, alone, forward and forward +
backward, at the config's sizes (`--what=stages`).

The generator stages are built by the model's own `models.lgnet.stage_module`, as `LGNet`
builds them; G3's attention read-outs, VGG16 (when the loss uses it) and D are timed too.
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lgnet_jax.bench import timing
from lgnet_jax.models import VGG16Features, build_generator
from lgnet_jax.models import attention as attention_lib
from lgnet_jax.models import lgnet as lgnet_lib
from lgnet_jax.models import unet as unet_lib
from lgnet_jax.models import vgg16
from lgnet_jax.models.discriminator import SPECTRAL
from lgnet_jax.training import losses
from lgnet_jax.training import state as train_state_lib


def components(config, batch_size: int | None, steps: int, warmup: int) -> list[dict]:
  """One record per component the step runs: G1, G2, G3, attention, VGG16 (when the perceptual
  or style term is on), D."""
  batch = batch_size or config.train.batch_size
  size = config.model.image_size
  generator = build_generator(config.model)
  dtypes = train_state_lib.model_dtypes(config.model)
  inputs = timing.random_inputs(batch, size)
  images, masks = jnp.asarray(inputs['image']), jnp.asarray(inputs['mask'])
  rng = jax.random.PRNGKey(config.seed)
  common = {
      'batch': batch,
      'backend': jax.default_backend(),
      'host': timing.host_name(),
      'dtype': str(dtypes['dtype']),
      'image_size': size,
      'ngf': generator.ngf,
      'ngf_local': generator.ngf_local,
  }
  run = {'steps': steps, 'warmup': warmup, **common}
  records = _stage_components(generator, images, masks, rng, run)
  if lgnet_lib.GLOBAL_ATTENTION in generator.stages:
    records.append(_attention_component(generator, batch, size, dtypes['dtype'], rng, run))
  if losses.uses_vgg(config.loss):  # the step runs VGG16 only for these terms
    records.append(_vgg_component(config, generator, batch, run))
  records.append(_d_component(config, images, rng, run))
  return records


def attention_shapes(batch: int, size: int, ngf: int) -> list[tuple[int, int, int, int]]:
  """Shapes of the decoder maps G3 attends over: after up steps 5, 4, 3 of the U-Net."""
  widths = unet_lib.encoder_widths(ngf)
  return [
      (batch, size // 2 ** (level - 1), size // 2 ** (level - 1), widths[level - 2])
      for level in sorted(unet_lib.ATTENTION_AFTER, reverse=True)
  ]


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
    compiled, compile_s, flops = timing.compile_ahead(jax.jit(fn), *args)
    seconds = timing.time_calls(lambda compiled=compiled: compiled(*args), warmup, steps)
    result[f'{key}_ms'] = round(float(np.median(seconds)) * 1e3, 3)
    result[f'{key}_min_ms'] = round(float(np.min(seconds)) * 1e3, 3)
    result[f'flops_{key}'] = None if flops is None else round(flops)
    logging.info('%s %s: compiled in %.1f s, %.3f ms', name, key, compile_s, result[f'{key}_ms'])
  return {**result, **info}


def _stage_components(
    generator: lgnet_lib.LGNet, images: jax.Array, masks: jax.Array, rng: jax.Array, run: dict
) -> list[dict]:
  """G1, G2, G3 each on a (B, H, W, 4) input (image and mask: the values do not change the
  time), in training mode (BatchNorm batch statistics), backward w.r.t. its params.

  Each stage is `stage_module` of its kind: LGNet_share's first stage, which runs G3's U-Net
  without the attention, computes as the coarse U-Net that builds.
  """
  stage_input = jnp.concatenate([images, masks], axis=-1)
  names = lgnet_lib.stage_names(len(generator.stages))
  records = []
  for name, kind in zip(names, generator.stages):
    module = lgnet_lib.stage_module(generator, kind)
    with timing.quick_init():
      variables = jax.jit(functools.partial(module.init, train=False))(rng, stage_input)
    records.append(
        _component(
            name,
            functools.partial(_stage_forward, module),
            functools.partial(_stage_forward_backward, module),
            (variables, stage_input),
            inputs=[list(stage_input.shape)],
            calls_per_step=1,
            **run,
        )
    )
  return records


def _stage_forward(module: nn.Module, variables: dict, x: jax.Array):
  return module.apply(variables, x, train=True, mutable=['batch_stats'])


def _stage_forward_backward(module: nn.Module, variables: dict, x: jax.Array):
  def loss(params):
    out, updates = module.apply(
        {**variables, 'params': params}, x, train=True, mutable=['batch_stats']
    )
    return _mean_of(out), updates

  return jax.value_and_grad(loss, has_aux=True)(variables['params'])


def _attention_component(
    generator: lgnet_lib.LGNet, batch: int, size: int, dtype, rng: jax.Array, run: dict
) -> dict:
  """The three attention read-outs of G3 on random decoder maps of their shapes, backward
  w.r.t. their input."""
  chunk = generator.attention_query_chunk
  with timing.quick_init():
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
      **run,
  )


def _vgg_component(config, generator: lgnet_lib.LGNet, batch: int, run: dict) -> dict:
  """VGG16 on the batch the perceptual and style terms give it, backward w.r.t. its input."""
  vgg = VGG16Features(**train_state_lib.model_dtypes(config.model))
  later_stages = len(generator.stages) - 1
  vgg_batch = batch * (1 + 2 * later_stages)  # ground truth, out_s and merged_s of stages >= 2
  vgg_input = jnp.asarray(timing.random_inputs(vgg_batch, config.model.image_size, 1)['image'])
  with timing.quick_init():
    vgg_params = vgg16.random_params(config.seed)
  return _component(
      'vgg16',
      lambda p, x: vgg.apply({'params': p}, x),
      lambda p, x: jax.value_and_grad(lambda x: _mean_of(vgg.apply({'params': p}, x)))(x),
      (vgg_params, vgg_input),
      inputs=[list(vgg_input.shape)],
      calls_per_step=1 if later_stages else 0,
      **{**run, 'batch': vgg_batch},
  )


def _d_component(config, images: jax.Array, rng: jax.Array, run: dict) -> dict:
  """The discriminator with its spectral-norm update, backward w.r.t. its params."""
  _, discriminator = train_state_lib.build_networks(config)
  with timing.quick_init():
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
      **run,
  )
