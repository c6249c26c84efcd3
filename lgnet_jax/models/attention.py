"""Cosine-affinity self-attention of LGNet's global refinement network, as implemented.

The reference implementation differs from the paper's Eq. 10: only the keys are
L2-normalised (after adding 1e-7 to every component), the raw scores are propagated over
the 3x3 neighbourhood of each query position, and the output mixes the normalised keys.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lgnet_jax.models import layers


def box_sum_3x3(x: jax.Array) -> jax.Array:
  """Sum over each position's 3x3 neighbourhood with zero padding.  # (B, H, W, C)"""
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), 'SAME')


def cosine_affinity_attention(features: jax.Array, query_chunk: int | None = None) -> jax.Array:
  """Attention read-out y_i = sum_j softmax_j(s_ij) k_j for a batch of feature maps.

  The reference propagates the score map r_ij = <f_i, k_j> by a 3x3 zero-padded box sum
  over query positions i. Because r is linear in the query, this equals scoring the
  box-summed queries, which costs a C-channel box filter instead of an N-channel one.

  Args:
    features: (B, H, W, C) decoder features.
    query_chunk: if set, queries are processed in chunks of this many positions, bounding
      the (B, chunk, N) score tensor for large maps; the result is identical.

  Returns:
    (B, H, W, C) attention read-out.
  """
  batch, height, width, channels = features.shape
  compute = layers.upcast(features)
  shifted = compute + 1e-7
  keys = shifted / jnp.linalg.norm(shifted, axis=-1, keepdims=True)  # (B, H, W, C)
  keys = keys.reshape(batch, height * width, channels)  # (B, N, C)
  queries = box_sum_3x3(compute).reshape(batch, height * width, channels)  # (B, N, C)

  def attend(query_block: jax.Array) -> jax.Array:
    scores = jnp.einsum('bqc,bkc->bqk', query_block, keys)  # (B, Q, N)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum('bqk,bkc->bqc', weights, keys)  # (B, Q, C)

  num_queries = height * width
  if query_chunk is None or query_chunk >= num_queries:
    out = attend(queries)
  else:
    if num_queries % query_chunk:
      raise ValueError(f'attention query_chunk {query_chunk} must divide {num_queries} positions')
    blocks = queries.reshape(batch, num_queries // query_chunk, query_chunk, channels)
    out = jax.lax.map(attend, jnp.moveaxis(blocks, 1, 0))  # (chunks, B, Q, C)
    out = jnp.moveaxis(out, 0, 1).reshape(batch, num_queries, channels)
  return out.reshape(batch, height, width, channels).astype(features.dtype)


class CosineAttention(nn.Module):
  """Attention read-out, concatenated before the input and mixed by a biased 1x1 conv."""

  query_chunk: int | None = None
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    attended = cosine_affinity_attention(x, self.query_chunk)  # (B, H, W, C)
    mixed = jnp.concatenate([attended, x], axis=-1)  # (B, H, W, 2C)
    return layers.conv(
        x.shape[-1],
        1,
        use_bias=True,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='combiner',
    )(mixed)
