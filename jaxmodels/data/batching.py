"""Shuffling and batching on the device, as pure functions of an rng.

The order of epoch e is `permutation(fold_in(rng, e))`, so a position
(epoch, step in epoch) names a batch exactly and a resumed run needs no replay.
"""
import jax
import jax.numpy as jnp


def epoch_batch_indices(rng: jax.Array, epoch, num_examples: int, batch_size: int) -> jax.Array:
  """(num_examples // batch_size, batch_size) int32 example indices for one epoch.

  The last partial batch is dropped; each epoch drops a different remainder.
  """
  steps = num_examples // batch_size
  perm = jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)
  return perm[:steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def take_batch(inputs: jax.Array, labels: jax.Array, indices: jax.Array) -> dict:
  """Gathers {'inputs': inputs[indices], 'labels': labels[indices]} on the device."""
  return {'inputs': jnp.take(inputs, indices, axis=0), 'labels': jnp.take(labels, indices, axis=0)}


def padded_batch(inputs: jax.Array, labels: jax.Array, batch_index, batch_size: int) -> dict:
  """Batch `batch_index` of a sequential pass; examples past the end are masked.

  Returns the `take_batch` dict plus 'mask' (batch_size,) float32, 0 on padding.
  """
  num_examples = inputs.shape[0]
  positions = batch_index * batch_size + jnp.arange(batch_size)
  batch = take_batch(inputs, labels, jnp.minimum(positions, num_examples - 1))
  batch['mask'] = (positions < num_examples).astype(jnp.float32)
  return batch
