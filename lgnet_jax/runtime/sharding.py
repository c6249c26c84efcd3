"""The one device mesh and how arrays lie on it.

Every program of the project (training, evaluation, benchmarks) runs on one 1-D mesh of
every device of every process, axis `data`: the batch is split over it and everything else
(parameters, optimizer states, metric networks) is replicated. Batches are assembled from
each process's share of the records.
"""

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`devices` (default: every device of every process) on the `data` axis.

  The axis is `Auto`: XLA propagates the shardings given at `jax.jit`'s boundary.
  """
  devices = list(devices or jax.devices())
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device: parameters, optimizer states, metric networks."""
  return NamedSharding(mesh, PartitionSpec())


def batch_split(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the devices."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def make_global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
  """This process's slice of the batch -> global arrays split over the mesh."""
  return {
      key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for key, value in local_batch.items()
  }
