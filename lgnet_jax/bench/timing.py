"""Timing a jitted program: compiled ahead of time, called one call at a time, with XLA's flops,
the peak memory and the machine it ran on, in the record every device benchmark prints."""

import pathlib
import platform
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lgnet_jax.runtime import host_memory
from lgnet_jax.training import state as train_state_lib


def host_name() -> str:
  """The machine a figure was measured on: the CPU model (with its widest vector ISA) or the
  accelerator's kind, e.g. 'AMD EPYC (avx2)' or 'NVIDIA H200'."""
  device = jax.devices()[0]
  if device.platform != 'cpu':
    return str(device.device_kind)
  model, flags = platform.processor() or platform.machine(), set()
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      key, _, value = line.partition(':')
      if key.strip() == 'model name':
        model = value.strip()
      elif key.strip() == 'flags':
        flags = set(value.split())
      if model and flags:
        break
  except OSError:
    pass
  isa = next((f for f in ('avx512f', 'avx2', 'avx', 'neon', 'asimd') if f in flags), None)
  return f'{model} ({isa})' if isa else model


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


def quick_init():
  """Context for drawing random weights: JAX's non-partitionable threefry, whose init programs
  compile several times faster on CPU (13.6 s -> 2.9 s for an ngf-4 U-Net). Only the random
  values differ; the benchmarked programs draw no random numbers."""
  return jax.threefry_partitionable(False)


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


def describe(config) -> dict:
  """The model fields every device result carries."""
  generator, discriminator = train_state_lib.build_networks(config)
  return {
      'dtype': str(jnp.dtype(config.model.dtype)),
      'param_dtype': str(jnp.dtype(config.model.param_dtype)),
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
  """The record of a timed program: its per-call times (median and minimum), throughput in
  images per second, and flops per image (the per-device program's flops times the devices
  over the global batch)."""
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
      'host': host_name(),
      'freed_memory_kept': host_memory.is_kept(),
      **describe(config),
  }
