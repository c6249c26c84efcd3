"""LGNet's training losses, as the reference implementation computes them (NHWC, jit-friendly).

With M the mask (1 = hole), I the ground truth, O_s the stage-s output and Mer_s its merge,
the generator objective is

  sum_s (lambda_valid * valid_s + lambda_hole * hole_s)
  + sum_{s >= 2} (lambda_perceptual * perceptual_s + lambda_style * style_s + lambda_tv * tv_s)
  + lambda_gan * gan_g

where perceptual_s and style_s each add the O_s and Mer_s terms, tv_s is taken on Mer_s * M
(the code's choice, not the paper's Mer_s) and only Mer_1 meets the discriminator. Every loss
function returns a dict of named terms so that training can log each one.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lgnet_jax.models.layers import upcast

FEATURE_KEYS = ('pool1', 'pool2', 'pool3')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Features = Mapping[str, jax.Array]
VGGFn = Callable[[jax.Array], Features]


def l1_masked(a: jax.Array, b: jax.Array, weight: jax.Array) -> jax.Array:
  """Weighted L1 normalised by the weighted area, averaged over the batch.

  Args:
    a, b: (B, H, W, 3) images.
    weight: (B, H, W, 1) per-pixel weight (the mask or 1 - mask).

  Returns:
    A scalar: mean over samples of sum|a*w - b*w| / (3 * sum w + 1e-12). The reference
    multiplies the one-channel area by a literal 3.
  """
  a, b, weight = (upcast(x) for x in (a, b, weight))
  diff = jnp.sum(jnp.abs(a * weight - b * weight), axis=(1, 2, 3))  # (B,)
  area = jnp.sum(weight, axis=(1, 2, 3)) * 3 + 1e-12  # (B,)
  return jnp.mean(diff / area)


def perceptual(feats_a: Features, feats_b: Features) -> jax.Array:
  """Sum over pool1..pool3 of the mean absolute feature difference (a scalar)."""
  return sum(jnp.mean(jnp.abs(upcast(feats_a[k]) - upcast(feats_b[k]))) for k in FEATURE_KEYS)


def gram(f: jax.Array) -> jax.Array:
  """Per-sample Gram matrix F^T F / (C*H*W) of a (B, H, W, C) map, F as (H*W, C): (B, C, C).

  Computed in at least float32 at full matmul precision: the style term is a small difference of
  large sums, which TF32 or bfloat16 accumulation would visibly perturb.
  """
  batch, height, width, channels = f.shape
  flat = upcast(f).reshape(batch, height * width, channels)  # (B, N, C)
  g = jnp.einsum('bnc,bnd->bcd', flat, flat, precision=jax.lax.Precision.HIGHEST)
  return g / (channels * height * width)


def style(feats_a: Features, feats_b: Features) -> jax.Array:
  """Sum over pool1..pool3 of the mean over (B, C, C) of |gram(A) - gram(B)| (a scalar)."""
  return sum(jnp.mean(jnp.abs(gram(feats_a[k]) - gram(feats_b[k]))) for k in FEATURE_KEYS)


def total_variation(x: jax.Array) -> jax.Array:
  """Mean absolute vertical plus mean absolute horizontal difference of a (B, H, W, C) map."""
  x = upcast(x)
  return jnp.mean(jnp.abs(x[:, 1:] - x[:, :-1])) + jnp.mean(jnp.abs(x[:, :, 1:] - x[:, :, :-1]))


def lsgan_generator(d_fake: jax.Array) -> jax.Array:
  """LSGAN generator term mean((D(fake) - 1)^2); `d_fake` is D's patch map (B, h, w, 1)."""
  return jnp.mean(jnp.square(upcast(d_fake) - 1))


def lsgan_discriminator(d_fake: jax.Array, d_real: jax.Array) -> jax.Array:
  """LSGAN discriminator term 0.5 * (mean(D(fake)^2) + mean((D(real) - 1)^2))."""
  return 0.5 * (jnp.mean(jnp.square(upcast(d_fake))) + jnp.mean(jnp.square(upcast(d_real) - 1)))


def imagenet_normalize(images: jax.Array) -> jax.Array:
  """Maps (B, H, W, 3) images in [-1, 1] to torchvision's ImageNet-normalised input."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return ((upcast(images) + 1) / 2 - mean) / std


def num_stages(outputs: Mapping[str, jax.Array]) -> int:
  """Number of stages in a generator's outputs dict (keys out1, merged1, out2, ...)."""
  count = 0
  while f'out{count + 1}' in outputs:
    count += 1
  if count == 0:
    raise ValueError(f'generator outputs have no stages: keys {sorted(outputs)}')
  missing = [f'merged{s}' for s in range(1, count + 1) if f'merged{s}' not in outputs]
  if missing:
    raise ValueError(f'generator outputs lack {", ".join(missing)}')
  return count


def generator_loss_terms(
    outputs: Mapping[str, jax.Array],
    images: jax.Array,
    masks: jax.Array,
    vgg_fn: VGGFn | None,
    d_fake_merged1: jax.Array | None,
    loss_config: Any,
    first_stage: int = 1,
) -> dict[str, jax.Array]:
  """Every term of the generator objective, and their weighted sum `total_g`.

  Args:
    outputs: the generator's {'out{s}', 'merged{s}'}, each (B, H, W, 3), for 1, 2 or 3 stages.
    images: (B, H, W, 3) ground truth in [-1, 1].
    masks: (B, H, W, 1), 1 = hole.
    vgg_fn: maps (N, H, W, 3) to {'pool1', 'pool2', 'pool3'}; called twice: on the ground
      truth, and on every later-stage output and merge concatenated along the batch. None
      (perceptual and style weights both 0) skips VGG: those terms are 0.
    d_fake_merged1: the discriminator's map of merged1, (B, h, w, 1); None skips the GAN
      term (gan_g = 0).
    loss_config: has lambda_valid, lambda_hole, lambda_tv, lambda_perceptual, lambda_style,
      lambda_gan and optionally vgg_imagenet_normalize (default False: the reference feeds
      [-1, 1] images to VGG as they are).
    first_stage: the first stage whose terms count: 2 leaves out stage 1's (a first stage
      that does not learn, frozen or precomputed).

  Returns:
    Scalars l1_valid_{s}, l1_hole_{s} for every stage from `first_stage`; perceptual_{s},
    style_{s}, tv_{s} for stages s >= 2; gan_g; total_g.
  """
  stages = num_stages(outputs)
  images = upcast(images)
  masks = upcast(masks)
  terms: dict[str, jax.Array] = {}
  for s in range(first_stage, stages + 1):
    terms[f'l1_valid_{s}'] = l1_masked(outputs[f'out{s}'], images, 1 - masks)
    terms[f'l1_hole_{s}'] = l1_masked(outputs[f'out{s}'], images, masks)

  later = range(2, stages + 1)
  zero = jnp.zeros((), images.dtype)
  if stages >= 2 and vgg_fn is not None:
    terms.update(_vgg_terms(outputs, images, vgg_fn, loss_config, later))
  for s in later:
    terms.setdefault(f'perceptual_{s}', zero)
    terms.setdefault(f'style_{s}', zero)
    terms[f'tv_{s}'] = total_variation(upcast(outputs[f'merged{s}']) * masks)

  terms['gan_g'] = zero if d_fake_merged1 is None else lsgan_generator(d_fake_merged1)
  terms['total_g'] = _weighted_total(terms, first_stage, stages, loss_config, zero)
  return terms


def _vgg_terms(
    outputs: Mapping[str, jax.Array],
    images: jax.Array,
    vgg_fn: VGGFn,
    loss_config: Any,
    later: range,
) -> dict[str, jax.Array]:
  """perceptual_{s} and style_{s} of each later stage s: its out and merged against the truth."""
  batch = images.shape[0]
  normalize = (
      imagenet_normalize if getattr(loss_config, 'vgg_imagenet_normalize', False) else lambda x: x
  )
  # The ground truth's features get no gradient: a call of their own keeps the backward
  # pass to the generated images.
  real = jax.lax.stop_gradient(vgg_fn(normalize(images)))
  generated = vgg_fn(
      normalize(
          jnp.concatenate(
              [upcast(outputs[f'{kind}{s}']) for s in later for kind in ('out', 'merged')], axis=0
          )
      )
  )  # (B * 2(S-1), H, W, 3) -> features

  def chunk(i: int) -> dict[str, jax.Array]:
    return {k: generated[k][i * batch : (i + 1) * batch] for k in FEATURE_KEYS}

  terms = {}
  for i, s in enumerate(later):
    out_feats, merged_feats = chunk(2 * i), chunk(2 * i + 1)
    terms[f'perceptual_{s}'] = perceptual(real, out_feats) + perceptual(real, merged_feats)
    terms[f'style_{s}'] = style(real, out_feats) + style(real, merged_feats)
  return terms


def _weighted_total(
    terms: Mapping[str, jax.Array], first: int, stages: int, loss_config: Any, zero: jax.Array
) -> jax.Array:
  """total_g: the lambda-weighted sum of the terms, added in the reference's order."""
  total = zero
  for s in range(first, stages + 1):
    total += (
        loss_config.lambda_valid * terms[f'l1_valid_{s}']
        + loss_config.lambda_hole * terms[f'l1_hole_{s}']
    )
  for s in range(2, stages + 1):
    total += (
        loss_config.lambda_perceptual * terms[f'perceptual_{s}']
        + loss_config.lambda_style * terms[f'style_{s}']
        + loss_config.lambda_tv * terms[f'tv_{s}']
    )
  return total + loss_config.lambda_gan * terms['gan_g']


def discriminator_loss_terms(d_fake: jax.Array, d_real: jax.Array) -> dict[str, jax.Array]:
  """{'gan_d'}: LSGAN loss of D's maps (B, h, w, 1) of stop_grad(merged1) and the real images."""
  return {'gan_d': lsgan_discriminator(d_fake, d_real)}


def uses_vgg(loss_config) -> bool:
  """Whether the perceptual or style term is on (the step skips VGG when both are 0)."""
  return loss_config.lambda_perceptual != 0 or loss_config.lambda_style != 0
