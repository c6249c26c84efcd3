"""The data-parallel LGNet training step, jitted over the one device mesh.

One `jax.jit` step over a one-axis mesh ('data'): the batch is split over every device of
every process, the state is replicated, BatchNorm statistics are over the global batch. The
step follows the reference: forward all generators, update D on the detached first-stage
composite, then update the generators against the updated D. When the first stage does not
learn (frozen, or precomputed results in the batch's 'first_stage'), there is no D: the step
updates LG alone. Pure JAX (no input pipeline, no summaries), so benchmarks and other trainers
can use it alone.
"""

import functools
import json
from collections.abc import Callable, Mapping

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from lgnet_jax.training import losses
from lgnet_jax.runtime import sharding
from lgnet_jax.training import state as train_state_lib
from lgnet_jax.models import Discriminator, LGNet, VGG16Features
from lgnet_jax.models import first_stage as first_stage_lib
from lgnet_jax.models.discriminator import SPECTRAL
from lgnet_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]


def compile_train_step(
    config: ml_collections.ConfigDict, mesh: Mesh, steps_per_epoch: int = 1
) -> Callable:
  """`step(state, global_batch, vgg_params) -> (state, terms)`, jitted over `mesh`, state donated.

  The state is replicated, the batch split over the 'data' axis. The optimizer's learning-rate
  schedule counts `steps_per_epoch`. Equal settings give the same jitted function, so a second
  run in one process (a notebook, a sweep, a resumed run) reuses its trace and compilation.
  """
  sections = tuple(config[name].to_json(sort_keys=True) for name in ('model', 'loss', 'optim'))
  return _jitted_train_step(sections, mesh, steps_per_epoch)


@functools.lru_cache(maxsize=4)
def _jitted_train_step(
    sections: tuple[str, str, str], mesh: Mesh, steps_per_epoch: int
) -> Callable:
  model, loss, optim = (ml_collections.ConfigDict(json.loads(text)) for text in sections)
  config = ml_collections.ConfigDict({'model': model})
  generator, discriminator = train_state_lib.build_networks(config)
  replicated = sharding.replicated(mesh)
  return jax.jit(
      functools.partial(
          train_step,
          generator=generator,
          discriminator=discriminator,
          vgg=VGG16Features(**train_state_lib.model_dtypes(model)),
          tx=train_state_lib.make_optimizer(
              optim, steps_per_epoch, train_state_lib.frozen_stages(model)
          ),
          loss_config=loss,
      ),
      in_shardings=(replicated, sharding.batch_split(mesh), replicated),
      out_shardings=replicated,
      donate_argnums=(0,),
  )


def train_step(
    state: TrainState,
    batch: Batch,
    vgg_params,
    *,
    generator: LGNet,
    discriminator: Discriminator | None,
    vgg: VGG16Features,
    tx: optax.GradientTransformation,
    loss_config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One reference training step: the new state, every loss term and per-network l2 norms of
  gradients, parameters and updates (`grad_norm_G1`, ..., `update_norm_D`)."""
  images, masks = batch['image'], batch['mask']  # (B, H, W, 3), (B, H, W, 1)

  def generate(g_params):
    outputs, updates = generator.apply(
        {'params': g_params, 'batch_stats': state.g_batch_stats},
        images,
        masks,
        train=True,
        first_stage_out=batch.get('first_stage'),
        mutable=['batch_stats'],
    )
    return outputs, updates['batch_stats']

  # 1. The generators run once; their vector-Jacobian product serves the G update below.
  outputs, generator_vjp, g_batch_stats = jax.vjp(generate, state.g_params, has_aux=True)

  # 2. Discriminator step on the detached first-stage composite and the real images.
  if discriminator is None:
    d_state, d_terms, d_grads, d_updates = {}, {}, None, None
  else:
    d_state, d_terms, d_grads, d_updates = _discriminator_step(
        discriminator, tx, state, jax.lax.stop_gradient(outputs['merged1']), images
    )
  # 3. Generator step against the updated discriminator, through the generators' VJP.
  vgg_fn = None if vgg_params is None else functools.partial(_vgg_features, vgg, vgg_params)
  g_loss_fn = functools.partial(
      _generator_loss, discriminator, d_state, images, masks, vgg_fn, loss_config
  )
  (_, (g_terms, d_spectral)), output_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(outputs)
  (g_grads,) = generator_vjp(output_grads)
  g_updates, g_opt_state = tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)

  new_state = state.replace(
      step=state.step + 1,
      g_params=g_params,
      g_batch_stats=g_batch_stats,
      g_opt_state=g_opt_state,
      **({} if discriminator is None else {**d_state, 'd_spectral': d_spectral}),
  )
  frozen = first_stage_lib.frozen(generator.first_stage, generator.first_stage_trainable)
  learning = [name for name in g_params if name not in frozen]
  grads = {name: g_grads[name] for name in learning}
  params = {name: g_params[name] for name in learning}
  updates = {name: g_updates[name] for name in learning}
  if discriminator is not None:
    grads['D'], params['D'], updates['D'] = d_grads, d_state['d_params'], d_updates
  norms = _norms(grad=grads, param=params, update=updates)
  return new_state, {**g_terms, **d_terms, **norms}


def _discriminator_step(
    discriminator: Discriminator,
    tx: optax.GradientTransformation,
    state: TrainState,
    fake: jax.Array,
    images: jax.Array,
) -> tuple[dict, dict, object, object]:
  """D's update: `({d_params, d_spectral, d_opt_state}, loss terms, gradients, updates)`."""
  loss_fn = functools.partial(_discriminator_loss, discriminator, state.d_spectral, fake, images)
  (_, (terms, spectral)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
  updates, opt_state = tx.update(grads, state.d_opt_state, state.d_params)
  params = optax.apply_updates(state.d_params, updates)
  return (
      {'d_params': params, 'd_spectral': spectral, 'd_opt_state': opt_state},
      terms,
      grads,
      updates,
  )


def _discriminator_loss(
    discriminator: Discriminator, d_spectral, fake: jax.Array, images: jax.Array, d_params
) -> tuple[jax.Array, tuple[dict, object]]:
  """D's hinge loss on fake then real images: `(gan_d, (terms, new spectral-norm state))`."""
  d_fake, updates = discriminator.apply(
      {'params': d_params, SPECTRAL: d_spectral}, fake, update_stats=True, mutable=[SPECTRAL]
  )
  d_real, updates = discriminator.apply(
      {'params': d_params, SPECTRAL: updates[SPECTRAL]},
      images,
      update_stats=True,
      mutable=[SPECTRAL],
  )
  terms = losses.discriminator_loss_terms(d_fake, d_real)
  return terms['gan_d'], (terms, updates[SPECTRAL])


def _vgg_features(vgg: VGG16Features, vgg_params, x: jax.Array) -> dict[str, jax.Array]:
  return vgg.apply({'params': vgg_params}, x)


def _generator_loss(
    discriminator: Discriminator | None,
    d_state: dict,
    images: jax.Array,
    masks: jax.Array,
    vgg_fn: Callable | None,
    loss_config: ml_collections.ConfigDict,
    stage_outputs: dict,
) -> tuple[jax.Array, tuple[dict, object]]:
  """The generators' total loss as a function of their outputs, against D's `d_state` (updated
  params and spectral-norm state, which advances). Without D the first stage does not learn:
  the terms start at stage 2."""
  d_fake, spectral, first_stage = None, None, 2
  if discriminator is not None:
    first_stage = 1
    d_fake, updates = discriminator.apply(
        {'params': d_state['d_params'], SPECTRAL: d_state['d_spectral']},
        stage_outputs['merged1'],
        update_stats=True,
        mutable=[SPECTRAL],
    )
    spectral = updates[SPECTRAL]
  terms = losses.generator_loss_terms(
      stage_outputs, images, masks, vgg_fn, d_fake, loss_config, first_stage=first_stage
  )
  return terms['total_g'], (terms, spectral)


def _norms(**trees_by_kind: Mapping[str, object]) -> dict[str, jax.Array]:
  """`KIND_norm_NET`: the l2 norm over all of each network's leaves (G1, G2, G3, D)."""
  return {
      f'{kind}_norm_{name}': optax.global_norm(tree)
      for kind, trees in trees_by_kind.items()
      for name, tree in trees.items()
  }
