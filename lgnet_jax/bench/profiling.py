"""Where a compiled program spends its time: a trace for TensorBoard or Perfetto, and its summary.

`python -m lgnet_jax.bench --what=profile --profile_dir=DIR` traces training steps with
`jax.profiler` (on CPU with XLA's per-operation trace events, `--xla_cpu_enable_xprof_traceme`,
which bench sets before the backend starts) and summarises the trace here: the time of each
XLA operation, attributed to the network whose code emitted it (from the operation's
`op_name` metadata), to the forward or backward pass, and to a class of work (matrix products
and convolutions, elementwise fusions, copies and transposes, reductions, ...).
"""

import collections
import gzip
import json
import os
import pathlib
import re

CPU_TRACE_FLAG = '--xla_cpu_enable_xprof_traceme=true'
COMPONENTS = ('G1', 'G2', 'G3', 'VGG16Features', 'Discriminator')
_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_WRAPPERS = re.compile(r'^(\w+\()+|\)+$')
# Fusions of matrix products (XNNPACK, YNNPACK, oneDNN) and convolutions, by instruction name.
_MATMUL_PREFIXES = ('ynn_fusion', 'xnn_fusion', 'onednn', 'conv')


def enable_cpu_op_events() -> None:
  """Asks XLA's CPU backend for one trace event per operation; call before the backend starts."""
  flags = os.environ.get('XLA_FLAGS', '')
  if CPU_TRACE_FLAG.split('=')[0] not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {CPU_TRACE_FLAG}'.strip()


def instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
  """name -> (opcode, op_name metadata, shape) of every instruction of an optimised HLO module."""
  table = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      op_name = _OP_NAME.search(line)
      table[match.group(1)] = (match.group(3), op_name.group(1) if op_name else '', match.group(2))
  return table


def op_class(name: str, opcode: str) -> str:
  """A coarse class of work for an instruction (its fusion's name says what it fused)."""
  if opcode in ('dot', 'convolution') or name.startswith(_MATMUL_PREFIXES):
    return 'matmul/conv'
  if 'transpose' in name or name.startswith(('copy', 'bitcast_copy')):
    return 'copy/transpose'
  if 'reduce' in name or opcode == 'reduce':
    return 'reduction'
  if 'slice' in name or 'concatenate' in name or 'pad' in name:
    return 'slice/pad/concat'
  if name.startswith(('wrapped_iota', 'wrapped_broadcast', 'select-and-scatter', 'sort')):
    return 'iota/broadcast/scatter'
  return 'elementwise'


def component(op_name: str) -> tuple[str, str]:
  """(network, 'forward' or 'backward') of an instruction from its op_name metadata."""
  parts = [_WRAPPERS.sub('', part) for part in op_name.split('/')]  # 'jvp(G2)' -> 'G2'
  network = next((c for c in COMPONENTS if c in parts), None)
  if network is None:
    network = 'losses/optimizer/other'
  return network, 'backward' if 'transpose(' in op_name else 'forward'


def trace_events(profile_dir: str) -> list[dict]:
  """The complete ('X') events of the newest trace under `profile_dir`."""
  files = sorted(pathlib.Path(profile_dir).glob('plugins/profile/*/*.trace.json.gz'))
  if not files:
    raise FileNotFoundError(f'no *.trace.json.gz under {profile_dir}/plugins/profile')
  with gzip.open(files[-1]) as f:
    return [e for e in json.load(f)['traceEvents'] if e.get('ph') == 'X']


def summarize(profile_dir: str, hlo_text: str, steps: int, top: int = 15) -> dict:
  """Milliseconds per step by network and pass, by class of work, and the `top` operations."""
  table = instructions(hlo_text)
  per_op = collections.Counter()
  for event in trace_events(profile_dir):
    if event['name'] in table:
      per_op[event['name']] += event['dur'] / 1e3 / steps  # microseconds -> ms per step
  by_part, by_class = collections.Counter(), collections.Counter()
  for name, ms in per_op.items():
    opcode, op_name, _ = table[name]
    network, direction = component(op_name)
    by_part[f'{network} {direction}'] += ms
    by_class[op_class(name, opcode)] += ms
  top_ops = [
      {
          'op': name,
          'ms': round(ms, 1),
          'shape': table[name][2],
          'where': '/'.join(table[name][1].split('/')[1:])[:120],
      }
      for name, ms in per_op.most_common(top)
  ]
  return {
      'ops_ms_per_step': round(sum(per_op.values()), 1),
      'by_network_ms': {k: round(v, 1) for k, v in by_part.most_common()},
      'by_class_ms': {k: round(v, 1) for k, v in by_class.most_common()},
      'top_ops': top_ops,
  }
