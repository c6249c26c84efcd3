"""How far a measured step is from this machine's limit: the floor and the fraction reached.

The floor is the time the program's dense arithmetic would take at the rate of a large matrix
product on this device (`matmul_gflops`: a jitted 4096x4096 product in the run's dtype).
Its arithmetic is `reference_flops`: the program's convolutions counted as direct
convolutions and its matrix products as they are, 2 flops a multiply-add, read from the shapes
of its jaxpr traced with XLA's plain convolutions. That count is fixed by the network and the
batch: Winograd or any other algorithm that does fewer multiplications counts as speed (a
fraction above 1 is possible), and doing more arithmetic never raises the fraction. Element-wise
work (activations, normalisation, the optimiser) is not counted: it is the part of a step the
floor leaves out.
"""

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from jax._src.interpreters import partial_eval  # pylint: disable=g-direct-jax-internal-import
from jax.extend import core as jax_core

from lgnet_jax.ops import conv

MATMUL_SIZE = 4096
MATMUL_RUNS = 3  # after one warm-up call; the median is the rate


@functools.cache
def matmul_gflops(dtype: str = 'float32', size: int = MATMUL_SIZE) -> float:
  """GFLOP/s of a jitted (size x size) @ (size x size) product in `dtype` on the default device
  (the median of MATMUL_RUNS calls), measured once per process."""
  a = jnp.ones((size, size), dtype)
  b = jnp.full((size, size), 0.5, dtype)
  product = jax.jit(jnp.matmul)
  jax.block_until_ready(product(a, b))
  seconds = []
  for _ in range(MATMUL_RUNS):
    start = time.perf_counter()
    jax.block_until_ready(product(a, b))
    seconds.append(time.perf_counter() - start)
  return 2 * size**3 / statistics.median(seconds) / 1e9


def _conv_flops(eqn) -> float:
  """A convolution as a direct one: output elements x window x input features per group, 2
  flops each; an input dilated by a transposed (or input-gradient) convolution's stride counts
  only its real pixels."""
  rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
  rhs_spec = eqn.params['dimension_numbers'].rhs_spec  # (out features, in features, *spatial)
  window = math.prod(rhs.shape[d] for d in rhs_spec[2:])
  dilated = math.prod(eqn.params['lhs_dilation'] or (1,))
  return 2.0 * math.prod(out.shape) * window * rhs.shape[rhs_spec[1]] / dilated


def _dot_flops(eqn) -> float:
  """A matrix product: output elements x contracted length, 2 flops each."""
  lhs = eqn.invars[0].aval
  (contracting, _), _ = eqn.params['dimension_numbers']
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in contracting)


def _sub_jaxprs(value) -> Iterator:
  """The jaxprs inside an equation's parameter (a jit's, a remat's, a custom rule's)."""
  if isinstance(value, jax_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _sub_jaxprs(item)


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      total += _conv_flops(eqn)
    elif name == 'dot_general':
      total += _dot_flops(eqn)
    elif name == 'cond':  # one branch runs: the dearest
      total += max(_jaxpr_flops(branch.jaxpr) for branch in eqn.params['branches'])
    else:
      inner = sum(_jaxpr_flops(sub) for v in eqn.params.values() for sub in _sub_jaxprs(v))
      total += inner * (eqn.params['length'] if name == 'scan' else 1)
  return total


def reference_flops(fn: Callable, *args) -> float:
  """The dense arithmetic of `fn(*args)` as direct convolutions and matrix products (see the
  module's docstring), traced, not run, with XLA's plain convolutions. Work whose result is
  never used is left out first, as XLA leaves it out (a custom gradient's forward pass can
  appear twice in a traced gradient)."""
  with conv.xla_convolutions():
    closed = jax.make_jaxpr(fn)(*args)
  # JAX's dead-code elimination is not public API; jax is pinned (requirements.txt).
  used, _ = partial_eval.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
  return _jaxpr_flops(used)


def floor_fields(flops: float, batch: int, step_s_median: float, dtype: str) -> dict:
  """The record's floor fields for a program of `flops` on a batch of `batch` images."""
  rate = matmul_gflops(dtype)
  floor_s = flops / (rate * 1e9)
  return {
      'matmul_gflops': round(rate, 1),
      'reference_flops_per_image': round(flops / batch),
      'floor_s': round(floor_s, 6),
      'floor_fraction': round(floor_s / step_s_median, 4),
  }
