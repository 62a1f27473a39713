"""Data resident on the devices, split over the mesh's batch axes, shuffled per shard.

Every batch shard (a device, or devices that replicate each other along other
mesh axes) holds an equal block of the examples. Epoch e on shard d is
`permutation(fold_in(fold_in(rng, e), d))` of its block, so a position
(epoch, step in epoch) names every batch exactly and resuming needs no replay.
A global batch of B takes B / num_shards examples from each shard; with one
device this is a plain global shuffle. In a multi-process run each process
places its own examples (its part of the split) on its own devices.
"""
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels.data.errors import DataError


def num_shards(mesh: Mesh, axes: Sequence[str]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def _local_shards(mesh, axes):
  # Processes split the batch axes evenly (jax.make_mesh orders devices by process).
  return max(num_shards(mesh, axes) // jax.process_count(), 1)


def _same_everywhere(value: int, reduce) -> int:
  if jax.process_count() == 1:
    return value
  return int(reduce(multihost_utils.process_allgather(np.int64(value))))


def shard_examples(mesh: Mesh, axes: Sequence[str], *arrays, pad: bool = False):
  """Process-local (n, ...) numpy arrays -> global jax arrays split over `axes` on dim 0.

  pad=False (training): keeps the first m examples, m the largest size every
  process has that splits evenly, so all shards are equal. pad=True
  (evaluation): pads with copies of the last example instead and appends a
  float32 'valid' array (1 real, 0 padding) so that every example counts once.
  """
  n = len(arrays[0])
  local = _local_shards(mesh, axes)
  if pad:
    m = _same_everywhere(math.ceil(n / local) * local, max)
    valid = (np.arange(m) < n).astype(np.float32)
    take = np.minimum(np.arange(m), n - 1)
    arrays = tuple(np.asarray(a)[take] for a in arrays) + (valid,)
  else:
    m = _same_everywhere(n // local * local, min)
    if m == 0:
      raise DataError(f'{n} examples cannot be split over {local} batch shards: '
                      'use fewer devices or more data')
    arrays = tuple(np.asarray(a)[:m] for a in arrays)
  sharding = NamedSharding(mesh, P(tuple(axes)))
  return tuple(jax.make_array_from_process_local_data(sharding, a) for a in arrays)


def _shard_index(axes):
  return jax.lax.axis_index(tuple(axes))


def epoch_batch_indices(rng: jax.Array, epoch, mesh: Mesh, axes: Sequence[str],
                        shard_size: int, batch_size: int) -> jax.Array:
  """(steps, batch_size) int32 positions *within each shard*, split over `axes` on dim 1.

  steps = shard_size // (batch_size / num_shards); each shard drops a
  different remainder each epoch.
  """
  per_shard = per_shard_batch(mesh, axes, batch_size)
  steps = shard_size // per_shard

  def local(rng, epoch):
    key = jax.random.fold_in(jax.random.fold_in(rng, epoch), _shard_index(axes))
    perm = jax.random.permutation(key, shard_size)
    return perm[:steps * per_shard].reshape(steps, per_shard).astype(jnp.int32)

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P()), out_specs=P(None, tuple(axes)))(
      rng, epoch)


def eval_batch_indices(mesh: Mesh, axes: Sequence[str], shard_size: int, batch_size: int):
  """Sequential pass over each shard: (indices, mask), each (num_batches, batch_size).

  Every shard reads the same positions of its own block; positions past its
  end repeat its last example with mask 0.
  """
  per_shard = per_shard_batch(mesh, axes, batch_size)
  num_batches = math.ceil(shard_size / per_shard)
  positions = np.tile(np.arange(num_batches * per_shard).reshape(num_batches, per_shard),
                      (1, num_shards(mesh, axes)))
  sharding = NamedSharding(mesh, P(None, tuple(axes)))
  place = lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return (place(np.minimum(positions, shard_size - 1).astype(np.int32)),
          place((positions < shard_size).astype(np.float32)))


def per_shard_batch(mesh: Mesh, axes: Sequence[str], batch_size: int) -> int:
  shards = num_shards(mesh, axes)
  if batch_size % shards:
    raise DataError(f'global batch size {batch_size} is not divisible by the {shards} batch '
                    f'shards of the mesh ({dict(mesh.shape)}): use a multiple of {shards}')
  return batch_size // shards


def take_batch(arrays: dict, indices: jax.Array, mesh: Mesh, axes: Sequence[str]) -> dict:
  """Each shard gathers its own rows: {name: array[indices]} for sharded (N, ...) arrays."""
  spec = P(tuple(axes))
  gather = lambda arrays, idx: {k: jnp.take(v, idx, axis=0) for k, v in arrays.items()}
  return jax.shard_map(gather, mesh=mesh, in_specs=(spec, spec), out_specs=spec)(arrays, indices)
