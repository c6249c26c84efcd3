"""Training batches: one global stream of records, each process reading its slice of every batch.

Training batches are cut from one global stream (a seeded shuffle of the source, repeated),
global batch k being its records [kG, (k + 1)G) for the global batch G; process p reads only
its slice [pL, (p + 1)L) of each, L = G / #processes. The global batch, with each record's
crop, flip and mask (`preprocess.TrainPreprocess`), is therefore the same whatever the number
of processes, and a run resumed on another number of processes continues from global batch
`step` (`GlobalBatchSampler`). The iterator's position is checkpointed with the model.

Batches are cut this way with `data.num_workers` = 0 (the default). grain's worker processes
each batch their own share of a process's records, so with workers the same records are
grouped into other batches, and the grouping depends on the number of processes.

A batch holds 'image' (B, H, W, 3), 'mask' (B, H, W, 1) and 'skipped' (B,), as
`preprocess` describes; summed over an epoch, 'skipped' is the number of bad images. With
`model.first_stage='precomputed'` the records are another method's results paired with their
images and masks by file name (`first_stage_results`), and batches also hold 'first_stage'
(B, H, W, 3).
"""

import grain.python as grain
import jax
import ml_collections
from absl import logging

from lgnet_jax.data import datasets, first_stage_results, preprocess, sources
from lgnet_jax.models import first_stage


class GlobalBatchSampler:
  """This process's slice of every global batch of a seeded, endlessly repeated shuffle.

  Local record i (batch i // L, position i % L, L = global_batch / process_count) is
  record (start_batch + i // L) * global_batch + process_index * L + i % L of the global
  stream, with that record's own random generator: a global batch and its augmentation do
  not depend on how many processes read it.
  """

  def __init__(
      self,
      num_records: int,
      global_batch: int,
      process_index: int,
      process_count: int,
      seed: int,
      start_batch: int = 0,
  ):
    if global_batch % process_count:
      raise sources.DataError(
          f'train.batch_size {global_batch} is not divisible by {process_count} processes'
      )
    self._stream = grain.IndexSampler(
        num_records, shard_options=grain.NoSharding(), shuffle=True, num_epochs=None, seed=seed
    )
    self._global_batch = global_batch
    self._local_batch = global_batch // process_count
    self._process_index = process_index
    self._start_batch = start_batch

  def __len__(self) -> int:
    return len(self._stream)

  def global_index(self, index: int) -> int:
    batch, position = divmod(index, self._local_batch)
    return (
        (self._start_batch + batch) * self._global_batch
        + self._process_index * self._local_batch
        + position
    )

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    record = self._stream[self.global_index(index)]
    return grain.RecordMetadata(index=index, record_key=record.record_key, rng=record.rng)

  def __repr__(self) -> str:
    return (
        f'GlobalBatchSampler({self._stream!r}, global batch {self._global_batch}, process '
        f'{self._process_index} reads {self._local_batch}, from batch {self._start_batch})'
    )


def create_train_iterator(
    config: ml_collections.ConfigDict, start_batch: int = 0
) -> tuple[grain.PyGrainDatasetIterator, int]:
  """This process's training iterator (local batches) and the dataset size.

  The global batch `config.train.batch_size` is split evenly over processes; each process
  reads its slice of every global batch (`GlobalBatchSampler`), starting at global batch
  `start_batch`. Batches hold 'image', 'mask' and 'skipped', and 'first_stage' for a
  precomputed first stage, whose triples are all checked here (see the module docstring).
  """
  data = config.data
  if config.model.first_stage == first_stage.PRECOMPUTED:
    source = first_stage_results.TripleSource(
        first_stage_results.train_triples(data), data.mask_invert
    )
    transform = first_stage_results.TriplePreprocess(
        config.model.image_size, bool(data.mask_binarize)
    )
    masks_from = f'{data.train_mask_dir} and first-stage results from {data.first_stage_dir}'
  else:
    source, crop = datasets.train_source(data)
    transform = preprocess.TrainPreprocess(
        config.model.image_size,
        crop,
        tuple(data.hole_ratio),
        preprocess.train_mask_sampler(data),
        bool(data.mask_binarize),
    )
    masks_from = data.train_mask_dir or 'the brush-stroke generator'
  if len(source) == 0:
    raise sources.DataError(f'the {data.source} training split is empty')
  process_count = jax.process_count()
  sampler = GlobalBatchSampler(
      len(source),
      config.train.batch_size,
      jax.process_index(),
      process_count,
      config.seed,
      start_batch,
  )
  # The sampler already serves only this process's records.
  loader = grain.DataLoader(
      data_source=source,
      sampler=sampler,
      shard_options=grain.NoSharding(),
      operations=[
          transform,
          grain.Batch(config.train.batch_size // process_count, drop_remainder=True),
      ],
      worker_count=data.num_workers,
      worker_buffer_size=data.worker_buffer_size,
      read_options=sources.read_options(data),
  )
  logging.info('training data: %s, %r, %r, masks from %s', data.source, source, sampler, masks_from)
  return iter(loader), len(source)
