"""Whole-split evaluation on the mesh: every example counted once, one dispatch per pass."""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxmodels import parallel
from jaxmodels.data.batching import (ShardedExamples, eval_batch_indices, num_shards,
                                     shard_examples, take_batch)
from jaxmodels.train.callbacks import Callback
from jaxmodels.train.metrics import merge, summarize


def as_sharded(data, mesh: Mesh) -> ShardedExamples:
  """`data` placed on `mesh`: a ShardedExamples as it is, or (inputs, labels) host arrays
  (this process's part) split over the mesh's batch axes."""
  if isinstance(data, ShardedExamples):
    return data
  inputs, labels = data
  return shard_examples(mesh, parallel.batch_axes(mesh), {'inputs': inputs, 'labels': labels})


def scalar_logs(metrics) -> dict:
  """The scalar entries of `summarize(metrics)` (confusion matrices and the like left out)."""
  return {k: v for k, v in summarize(metrics).items() if np.ndim(v) == 0}


class Evaluator:
  """Metrics of `eval_step` over a whole split, placed on the mesh once; one dispatch per call.

  data: (inputs, labels) host arrays (this process's part) or a `ShardedExamples`.
  Shards are padded and the padding masked, so every example counts exactly once.
  """

  def __init__(self, eval_step: Callable, data, batch_size: int, mesh: Mesh | None = None):
    self.data = as_sharded(data, mesh or parallel.single_device_mesh())
    mesh, axes = self.data.mesh, self.data.axes
    # Evaluation has no batch semantics: round up so that every shard gets the same share.
    shards = num_shards(mesh, axes)
    self._indices, self._masks = eval_batch_indices(self.data, -(-batch_size // shards) * shards)

    def run(state, arrays, indices, masks):
      def batch_of(i):
        batch = take_batch(arrays, indices[i], mesh, axes)
        return {**batch, 'mask': batch['mask'] * masks[i]}

      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                           jax.eval_shape(eval_step, state, batch_of(0)))
      body = lambda acc, i: (merge(acc, eval_step(state, batch_of(i))), None)
      metrics, _ = jax.lax.scan(body, zeros, jnp.arange(indices.shape[0]))
      return metrics

    self._run = jax.jit(run, out_shardings=parallel.replicated(mesh))

  def __call__(self, state):
    return self._run(state, self.data.arrays, self._indices, self._masks)


def make_evaluate_fn(eval_step: Callable, batch_size: int, mesh: Mesh | None = None) -> Callable:
  """Returns `evaluate(state, inputs, labels) -> metrics` over a whole split (see `Evaluator`)."""
  return lambda state, inputs, labels: Evaluator(eval_step, (inputs, labels), batch_size, mesh)(
      state)


class Evaluate(Callback):
  """Evaluates `eval_step` on `data` every `every_steps` (default: each epoch) and at the end
  of fit. The logs become `history.eval` rows and reach every callback's `on_eval_end`.

  data: (inputs, labels) host arrays (this process's part) or a `ShardedExamples`.
  """
  order = -1  # Before the callbacks that act on its results (checkpoints, early stopping).

  def __init__(self, eval_step: Callable, data, *, every_steps: int = 0, batch_size: int = 1000):
    self._eval_step, self._data, self._batch_size = eval_step, data, batch_size
    self._every = every_steps

  def on_fit_start(self, loop, state):
    self._loop = loop
    self.every_steps = self._every or loop.steps_per_epoch
    self._evaluate = Evaluator(self._eval_step, self._data, self._batch_size, loop.mesh)

  def on_steps_end(self, step, state):
    if step % self.every_steps == 0 or step == self._loop.total_steps:
      self._loop.record('eval', step, scalar_logs(self._evaluate(state)), state)
