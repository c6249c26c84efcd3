"""The multi-stage LGNet generator: coarse U-Net, local refiner, attention U-Net, with merges.

Each stage sees the previous stage's result composited into the known pixels:
  masked  = image * (1 - mask) + mask            (holes white)
  out_s   = G_s(concat[input_s, mask])
  merged_s = image * (1 - mask) + out_s * mask   (input of stage s + 1)
Gradients flow through every merge. Masks are 1 for a hole pixel and 0 for a known one.
The first stage can be another network (the paper's "X_LG", see first_stage.py).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lgnet_jax.models import first_stage as first_stage_lib
from lgnet_jax.models import layers
from lgnet_jax.models.local_refiner import LocalRefiner
from lgnet_jax.models.unet import UNet

COARSE, LOCAL, GLOBAL, GLOBAL_ATTENTION = 'unet', 'local', 'unet', 'unet_att'

# Stage kinds of every published variant and of the Table VI ablations.
VARIANT_STAGES: dict[str, tuple[str, ...]] = {
    'lgnet': (COARSE, LOCAL, GLOBAL_ATTENTION),
    'lgnet_share': (COARSE, LOCAL, GLOBAL_ATTENTION),
    'lgnet_light': (COARSE, LOCAL, GLOBAL_ATTENTION),
    'C': (COARSE,),
    'C+L': (COARSE, LOCAL),
    'C+G_att': (COARSE, GLOBAL_ATTENTION),
    'C+G+G_att': (COARSE, GLOBAL, GLOBAL_ATTENTION),
    'C+L+G': (COARSE, LOCAL, GLOBAL),
    'C+L+G_att': (COARSE, LOCAL, GLOBAL_ATTENTION),
}
VARIANTS = tuple(VARIANT_STAGES)
DEFAULT_NGF = {'lgnet_light': 48}  # every other variant: 64


def stage_names(num_stages: int) -> list[str]:
  return [f'G{i + 1}' for i in range(num_stages)]


class LGNet(nn.Module):
  """The generator stages of one variant.

  Attributes:
    stages: stage kinds, each 'unet', 'local' or 'unet_att'; stage s is the submodule 'G{s}'.
    share_first_stage: the first stage runs the last stage's U-Net without its attention
      and owns no weights (LGNet_share); there is then no 'G1' submodule.
    ngf: U-Net base width; ngf_local: local refiner width.
    remat: recompute each stage's activations in the backward pass (memory for large
      batches, at the cost of one more forward pass).
    first_stage: what replaces the first stage (see first_stage.py): '' keeps it, a
      'module:attr' name builds that module as 'G1', 'precomputed' takes its output as input.
    first_stage_args: keyword arguments of a named first stage, as (name, value) pairs.
    first_stage_trainable: False freezes the first stage: BatchNorm in evaluation mode and no
      gradient through its output.
  """

  stages: Sequence[str] = VARIANT_STAGES['lgnet']
  share_first_stage: bool = False
  ngf: int = 64
  ngf_local: int = 64
  attention_query_chunk: int | None = None
  remat: bool = False
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32
  first_stage: str = first_stage_lib.BUILT_IN
  first_stage_args: tuple = ()
  first_stage_trainable: bool = True

  @nn.compact
  def __call__(
      self,
      images: jax.Array,
      masks: jax.Array,
      train: bool,
      first_stage_out: jax.Array | None = None,
  ) -> dict[str, jax.Array]:
    """images (B, H, W, 3) in [-1, 1], masks (B, H, W, 1), 1 = hole; first_stage_out
    (B, H, W, 3) in [-1, 1]: a precomputed first stage's result (only then).

    Returns out{s} and merged{s} for every stage s, each (B, H, W, 3) in at least float32.
    """
    precomputed = self.first_stage == first_stage_lib.PRECOMPUTED
    if precomputed != (first_stage_out is not None):
      raise first_stage_lib.FirstStageError(
          'a precomputed first stage needs first_stage_out, and only it takes one'
      )
    names = stage_names(len(self.stages))
    first = 1 if self.share_first_stage or self.first_stage else 0
    nets = [None] * first + [
        stage_module(self, kind, name) for kind, name in zip(self.stages[first:], names[first:])
    ]
    if first_stage_lib.is_user_code(self.first_stage):
      nets[0] = first_stage_lib.build(self.first_stage, dict(self.first_stage_args), names[0])
    images, masks = layers.upcast(images), layers.upcast(masks)
    known = images * (1.0 - masks)
    stage_input = known + masks  # holes filled with 1.0
    results = {}
    for index, (net, kind) in enumerate(zip(nets, self.stages)):
      x = jnp.concatenate([stage_input, masks], axis=-1)  # (B, H, W, 4)
      if index == 0 and self.first_stage:
        out = self._replaced_first_stage(net, x, train, first_stage_out)
      elif net is None:
        out = nets[-1](x, train, False)  # the last stage's U-Net without its attention
      elif kind == LOCAL:
        out = net(x, train)
      else:
        out = net(x, train, True)
      merged = known + out * masks
      results[f'out{index + 1}'] = out
      results[f'merged{index + 1}'] = merged
      stage_input = merged
    return results

  def _replaced_first_stage(
      self, net: nn.Module | None, x: jax.Array, train: bool, given: jax.Array | None
  ) -> jax.Array:
    """The output of a first stage other than the coarse U-Net, checked against the contract."""
    if net is None:
      out = given
    elif self.first_stage_trainable:
      out = net(x, train)
    else:
      out = jax.lax.stop_gradient(net(x, False))
    first_stage_lib.check_output(self.first_stage, out, x.shape)
    return layers.upcast(out)


def stage_module(generator: 'LGNet', kind: str, name: str | None = None) -> nn.Module:
  """The network of one stage kind of `generator`, built inside `LGNet` or alone (the
  benchmarks time each stage so)."""
  # Rematerialised stages keep only their inputs for the backward pass and recompute the
  # rest; `train` (and `use_attention`) are static. Parameter names do not change.
  local_cls = nn.remat(LocalRefiner, static_argnums=(2,)) if generator.remat else LocalRefiner
  unet_cls = nn.remat(UNet, static_argnums=(2, 3)) if generator.remat else UNet
  if kind == LOCAL:
    return local_cls(
        generator.ngf_local, dtype=generator.dtype, param_dtype=generator.param_dtype, name=name
    )
  if kind in (COARSE, GLOBAL_ATTENTION):
    return unet_cls(
        generator.ngf,
        attention=kind == GLOBAL_ATTENTION,
        attention_query_chunk=generator.attention_query_chunk,
        dtype=generator.dtype,
        param_dtype=generator.param_dtype,
        name=name,
    )
  raise ValueError(f'unknown stage kind {kind!r}; expected one of unet, local, unet_att')


def build_generator(model_config: ml_collections.ConfigDict) -> LGNet:
  """The LGNet generator for `config.model` (variant, ngf, ngf_local, dtypes, ...)."""
  variant = model_config.variant
  if variant not in VARIANT_STAGES:
    raise ValueError(f'unknown model.variant {variant!r}; choose one of {", ".join(VARIANTS)}')
  ngf = model_config.ngf or DEFAULT_NGF.get(variant, 64)
  replaced = model_config.get('first_stage', first_stage_lib.BUILT_IN)
  if replaced and (variant == 'lgnet_share' or len(VARIANT_STAGES[variant]) < 2):
    raise ValueError(
        f'model.first_stage {replaced!r} needs a variant with stages after the first to put '
        f'behind it (lgnet, lgnet_light, C+L, ...), not {variant!r}'
    )
  return LGNet(
      stages=VARIANT_STAGES[variant],
      share_first_stage=variant == 'lgnet_share',
      ngf=ngf,
      ngf_local=model_config.ngf_local,
      attention_query_chunk=model_config.attention_query_chunk,
      remat=bool(model_config.remat),
      dtype=jnp.dtype(model_config.dtype),
      param_dtype=jnp.dtype(model_config.param_dtype),
      first_stage=replaced,
      first_stage_args=first_stage_lib.as_args(model_config.get('first_stage_args', {})),
      first_stage_trainable=bool(model_config.get('first_stage_trainable', True)),
  )
