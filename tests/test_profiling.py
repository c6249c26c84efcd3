"""The profile summary: XLA operations attributed to networks, passes and classes of work."""

import jax
import jax.numpy as jnp
import pytest

from lgnet_jax.bench import profiling, timing
from lgnet_jax.ops import conv as conv_ops


def test_host_name_names_the_cpu():
  name = timing.host_name()
  assert name and name != 'cpu'


def test_component_reads_network_and_pass_from_op_name():
  assert profiling.component('jit(train_step)/transpose(jvp(LGNet))/G2/stem/dot_general') == (
      'G2',
      'backward',
  )
  assert profiling.component('jit(train_step)/jvp(VGG16Features)/conv1_1/conv') == (
      'VGG16Features',
      'forward',
  )
  assert profiling.component('jit(train_step)/adam/add')[0] == 'losses/optimizer/other'


def test_summarize_attributes_traced_operations(tmp_path):
  """A real trace of a jitted convolution: its operations are found in the HLO and timed."""
  profiling.enable_cpu_op_events()  # a no-op once the backend runs; the fusion events still come

  def f(x, w):
    return jnp.sum(jnp.tanh(conv_ops.conv2d(x, w, 1)) ** 2)

  step = jax.jit(jax.grad(f, argnums=(0, 1)))
  x, w = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 8, 16)) * 0.01
  compiled = step.lower(x, w).compile()
  jax.block_until_ready(compiled(x, w))
  with jax.profiler.trace(str(tmp_path)):
    jax.block_until_ready(compiled(x, w))
  summary = profiling.summarize(str(tmp_path), compiled.as_text(), steps=1, top=3)
  assert summary['ops_ms_per_step'] > 0
  assert 'matmul/conv' in summary['by_class_ms']
  assert (
      len(summary['top_ops']) <= 3 and summary['top_ops'][0]['ms'] >= summary['top_ops'][-1]['ms']
  )


def test_summarize_without_a_trace_says_where_it_looked(tmp_path):
  with pytest.raises(FileNotFoundError, match='no .*trace.json.gz'):
    profiling.summarize(str(tmp_path), '', steps=1)
