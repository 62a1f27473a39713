"""Data resident on the devices, split over the mesh's batch axes, shuffled per shard.

Every batch shard (a device, or devices that replicate each other along other
mesh axes) holds an equal block of a split. Blocks are padded with copies of
their last example, flagged 0 in a float32 'valid' array, so no example is ever
dropped, whatever the device or process count. Epoch e on shard d is
`permutation(fold_in(fold_in(rng, e), d))` of its block, so a position (epoch,
step in epoch) names every batch exactly and resuming needs no replay. An epoch
is `num_examples // batch_size` steps however the split is laid out, and a global
batch of B takes B / num_shards examples from each shard.
"""
import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels.errors import DataError


def num_shards(mesh: Mesh, axes: Sequence[str]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def per_shard_batch(mesh: Mesh, axes: Sequence[str], batch_size: int) -> int:
  shards = num_shards(mesh, axes)
  if batch_size % shards:
    raise DataError(f'global batch size {batch_size} is not divisible by the {shards} batch '
                    f'shards of the mesh ({dict(mesh.shape)}): use a multiple of {shards}')
  return batch_size // shards


@dataclasses.dataclass(frozen=True)
class ShardedExamples:
  """One split on the mesh. arrays: global jax arrays (num_shards * shard_size, ...) split
  over `axes` on dim 0, 'valid' among them; num_examples: the real (unpadded) count."""
  arrays: dict
  num_examples: int
  mesh: Mesh
  axes: tuple

  @property
  def shard_size(self) -> int:
    return self.arrays['valid'].shape[0] // num_shards(self.mesh, self.axes)

  def steps_per_epoch(self, batch_size: int) -> int:
    """Whole batches of `batch_size` (global) in the split; DataError for a batch size that
    is not positive, not a multiple of the batch shards, or larger than the split."""
    if batch_size <= 0:
      raise DataError(f'batch_size must be > 0, got {batch_size}')
    per_shard_batch(self.mesh, self.axes, batch_size)  # Checks divisibility.
    if batch_size > self.num_examples:
      raise DataError(f'batch_size {batch_size} is larger than the training set '
                      f'({self.num_examples} examples)')
    return self.num_examples // batch_size


def _sum_over_processes(value: int, reduce=np.sum) -> int:
  if jax.process_count() == 1:
    return value
  return int(reduce(multihost_utils.process_allgather(np.int64(value))))


def _pad_to(array: np.ndarray, length: int) -> np.ndarray:
  array = np.asarray(array)
  if len(array) == length:  # Nothing to pad: no copy of a large split.
    return array
  return array[np.minimum(np.arange(length), len(array) - 1)]


def shard_examples(mesh: Mesh, axes: Sequence[str], arrays: Mapping[str, np.ndarray], *,
                   global_arrays: bool = False) -> ShardedExamples:
  """Host arrays of one split (equal length) -> a `ShardedExamples` on `mesh`.

  global_arrays=False: each process passes its own part (a multi-process run
  reads only its share); True: every process passes the whole split and keeps
  the blocks of its own devices, so the layout depends only on the mesh.
  """
  axes = tuple(axes)
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  n = len(next(iter(arrays.values())))
  sharding = NamedSharding(mesh, P(axes))
  shards = num_shards(mesh, axes)
  if global_arrays:
    total, length = n, math.ceil(n / shards) * shards
  else:
    local = max(shards // jax.process_count(), 1)
    total = _sum_over_processes(n)
    length = _sum_over_processes(math.ceil(n / local) * local, np.max)
  if total == 0:
    raise DataError('the split has no examples: check the data and data.num_train / num_test')
  padded = {k: _pad_to(v, length) for k, v in arrays.items()}
  padded['valid'] = (np.arange(length) < n).astype(np.float32)
  if global_arrays:
    place = lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  else:
    place = lambda x: jax.make_array_from_process_local_data(sharding, x)
  return ShardedExamples({k: place(v) for k, v in padded.items()}, total, mesh, axes)


def _shard_index(axes):
  return jax.lax.axis_index(tuple(axes))


def epoch_batch_indices(rng: jax.Array, epoch, data: ShardedExamples,
                        batch_size: int) -> jax.Array:
  """(steps_per_epoch, batch_size) int32 positions *within each shard*, split over the
  axes on dim 1. Each shard draws its own permutation, so each leaves out a different
  remainder each epoch."""
  per_shard = per_shard_batch(data.mesh, data.axes, batch_size)
  steps, shard_size = data.steps_per_epoch(batch_size), data.shard_size

  def local(rng, epoch):
    key = jax.random.fold_in(jax.random.fold_in(rng, epoch), _shard_index(data.axes))
    perm = jax.random.permutation(key, shard_size)
    return perm[:steps * per_shard].reshape(steps, per_shard).astype(jnp.int32)

  return jax.shard_map(local, mesh=data.mesh, in_specs=(P(), P()),
                       out_specs=P(None, data.axes))(rng, epoch)


def eval_batch_indices(data: ShardedExamples, batch_size: int):
  """A sequential pass over each shard: (indices, mask), each (num_batches, batch_size).

  Every shard reads the same positions of its own block; positions past its end
  repeat its last example with mask 0.
  """
  mesh, axes, shard_size = data.mesh, data.axes, data.shard_size
  per_shard = per_shard_batch(mesh, axes, batch_size)
  num_batches = math.ceil(shard_size / per_shard)
  positions = np.tile(np.arange(num_batches * per_shard).reshape(num_batches, per_shard),
                      (1, num_shards(mesh, axes)))
  sharding = NamedSharding(mesh, P(None, axes))
  place = lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return (place(np.minimum(positions, shard_size - 1).astype(np.int32)),
          place((positions < shard_size).astype(np.float32)))


def as_batch(rows: dict) -> dict:
  """Rows of a `ShardedExamples`' arrays as a train-step batch: 'valid' becomes the batch's
  'mask' (0 for padding examples)."""
  batch = dict(rows)
  batch['mask'] = batch.pop('valid')
  return batch


def take_batch(arrays: dict, indices: jax.Array, mesh: Mesh, axes: Sequence[str]) -> dict:
  """Each shard gathers its own rows: {name: array[indices]} for sharded (N, ...) arrays,
  `as_batch`."""
  spec = P(tuple(axes))
  gather = lambda arrays, idx: {k: jnp.take(v, idx, axis=0) for k, v in arrays.items()}
  return as_batch(jax.shard_map(gather, mesh=mesh, in_specs=(spec, spec), out_specs=spec)(
      arrays, indices))
