"""Whole-split evaluation on the mesh: every example counted once, one dispatch per pass."""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmodels.data.batching import eval_batch_indices, num_shards, shard_examples, take_batch
from jaxmodels.train.metrics import merge


def _zeros_like_shapes(tree):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def single_device_mesh() -> Mesh:
  """The mesh `fit` uses when given none: the first local device, axis 'data'."""
  return Mesh(np.array(jax.local_devices()[:1]), ('data',))


def _batch_axes(mesh: Mesh, batch_axes):
  return tuple(batch_axes or (a for a in ('data', 'fsdp') if a in mesh.axis_names))


class Evaluator:
  """Metrics of `eval_step` over a whole split, placed on the mesh once; one dispatch per call.

  Every example counts exactly once: shards are padded and padding masked.
  """

  def __init__(self, eval_step: Callable, inputs, labels, batch_size: int,
               mesh: Mesh | None = None, batch_axes=None):
    mesh = mesh or single_device_mesh()
    axes = _batch_axes(mesh, batch_axes)
    self._inputs, self._labels, self._valid = shard_examples(mesh, axes, inputs, labels, pad=True)
    shards = num_shards(mesh, axes)
    shard_size = self._inputs.shape[0] // shards
    # Evaluation has no batch semantics: round up so that every shard gets the same share.
    batch_size = -(-batch_size // shards) * shards
    self._indices, self._masks = eval_batch_indices(mesh, axes, shard_size, batch_size)

    def run(state, arrays, indices, masks):
      def batch_of(i):
        batch = take_batch(arrays, indices[i], mesh, axes)
        return {'inputs': batch['inputs'], 'labels': batch['labels'],
                'mask': batch['valid'] * masks[i]}

      zeros = _zeros_like_shapes(jax.eval_shape(eval_step, state, batch_of(0)))
      body = lambda acc, i: (merge(acc, eval_step(state, batch_of(i))), None)
      metrics, _ = jax.lax.scan(body, zeros, jnp.arange(indices.shape[0]))
      return metrics

    self._run = jax.jit(run, out_shardings=NamedSharding(mesh, P()))

  def __call__(self, state):
    arrays = {'inputs': self._inputs, 'labels': self._labels, 'valid': self._valid}
    return self._run(state, arrays, self._indices, self._masks)


def make_evaluate_fn(eval_step: Callable, batch_size: int, mesh: Mesh | None = None,
                     batch_axes=None) -> Callable:
  """Returns `evaluate(state, inputs, labels) -> metrics` over a whole split (see `Evaluator`)."""
  return lambda state, inputs, labels: Evaluator(
      eval_step, inputs, labels, batch_size, mesh, batch_axes)(state)
