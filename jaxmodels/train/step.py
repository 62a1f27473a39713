"""Pure train and eval steps. No device, mesh, logging or I/O in here: jit,
sharding and donation are applied by the caller.

A batch is a dict: 'inputs' (B, ...), 'labels' (B, ...), and optionally
'mask' (B,) float, 0 for padding examples.
"""
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxmodels.train.guards import nonfinite_metric
from jaxmodels.train.metrics import Mean
from jaxmodels.train.optim import lr_multiplier_value
from jaxmodels.train.state import TrainState, step_rngs


def _weights(batch, losses):
  mask = batch.get('mask')
  if mask is None:
    return jnp.ones(losses.shape, jnp.float32)
  # Broadcast a (B,) mask over per-token losses (B, T, ...).
  return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (losses.ndim - mask.ndim)), losses.shape)


def _split_micro_batches(batch, num: int):
  """(B, ...) leaves -> (num, B / num, ...); microbatch i takes rows i, i + num, ...

  Strided rows keep each microbatch spread over the whole (sharded) batch, so
  no device sits idle while another holds the microbatch.
  """
  def split(x):
    if x.shape[0] % num:
      raise ValueError(f'batch of {x.shape[0]} does not split into {num} micro-batches')
    return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _after(tree, batch):
  """`batch`, made to depend on every leaf of `tree`; its values change only if `tree` holds a
  NaN (the step is lost then anyway).

  Unrolled, the slices of a batch are independent programs to XLA, and its scheduler runs all
  their forward passes first: every slice's activations live at once, as in one big batch
  (85 MB of temporaries instead of 18 for 8 slices of 64 through the SmallCNN, a third
  slower). Inputs that depend on the previous slice's gradients keep the slices in turn.
  An optimization barrier would not do: XLA:CPU removes them before scheduling.
  """
  total = sum(leaf.ravel()[0].astype(jnp.float32) for leaf in jax.tree.leaves(tree))
  nan = jnp.isnan(total)  # Always False for finite gradients; XLA cannot know that.
  return dict(batch, inputs=jax.tree.map(lambda x: x + nan.astype(x.dtype), batch['inputs']))


def micro_batch_count(batch_size: int, slice_sizes: tuple[int, ...], model_state) -> int:
  """How many slices a batch of `batch_size` is accumulated over when no count is given: a
  batch over slice_sizes[0] splits into slices of the first size that divides it. Never for
  models with batch statistics (a slice would see different ones): 1 then, and with no
  slice sizes, or when none divides the batch."""
  if slice_sizes and not jax.tree.leaves(model_state) and batch_size > slice_sizes[0]:
    for slice_size in slice_sizes:
      if batch_size % slice_size == 0:
        return batch_size // slice_size
  return 1


@dataclasses.dataclass(frozen=True, eq=False)
class TrainStep:
  """`train_step(state, batch) -> (state, metrics)`, as `make_train_step` builds it: pure, with
  its knobs as fields, so that a wrapper can rebuild it with others (`dataclasses.replace`;
  `cpu_path.tuned` does, for XLA:CPU). Hashed by identity, like a function.

  apply_fn: `Model.apply`. loss_fn(outputs, batch) -> per-example losses.
  metrics_fn(outputs, batch, losses, weights) -> dict of mergeable metrics.
  micro_batches: accumulate gradients over this many slices of the batch (a `lax.scan`), then
    update once; None: `micro_batch_count(B, slice_sizes, model_state)`.
  slice_sizes: the slice sizes a batch may be split into when micro_batches is None; () keeps
    the batch whole.
  unroll: run the micro-batch scan as straight-line code, each slice's inputs waiting for the
    previous slice's gradients (`_after`).
  axis_name: mesh axis (or axes) to reduce over under `jax.shard_map`.
  """
  __name__ = 'train_step'  # jit names its program after it (jit_train_step).
  apply_fn: Callable
  loss_fn: Callable
  tx: optax.GradientTransformation
  metrics_fn: Callable | None = None
  learning_rate_fn: Callable | None = None
  micro_batches: int | None = None
  slice_sizes: tuple[int, ...] = ()
  unroll: bool = False
  axis_name: Any = None

  def _grads_of_sum(self, state, batch, rngs):
    """Gradients of the weighted loss *sum* (not mean), so slices and devices add up."""

    def objective(params):
      variables = {'params': params, **state.model_state}
      outputs, model_state = self.apply_fn(variables, batch['inputs'], train=True, rngs=rngs)
      losses = self.loss_fn(outputs, batch)
      weights = _weights(batch, losses)
      metrics = dict(self.metrics_fn(outputs, batch, losses, weights)) if self.metrics_fn else {}
      metrics['loss'] = Mean.of(losses, weights)
      return jnp.sum(losses * weights), (model_state, metrics, jnp.sum(weights))

    (_, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    return grads, aux

  def _accumulate(self, state, batch, rngs):
    num = self.micro_batches or micro_batch_count(jax.tree.leaves(batch)[0].shape[0],
                                                  self.slice_sizes, state.model_state)
    if num == 1:
      return self._grads_of_sum(state, batch, rngs)

    def body(carry, micro):
      grads, model_state, metrics, count = carry
      i, micro_batch = micro
      if self.unroll:
        micro_batch = _after(grads, micro_batch)
      micro_rngs = {k: jax.random.fold_in(v, i) for k, v in rngs.items()}
      g, (model_state, m, c) = self._grads_of_sum(state.replace(model_state=model_state),
                                                  micro_batch, micro_rngs)
      add = lambda a, b: jax.tree.map(jnp.add, a, b)
      return (add(grads, g), model_state, add(metrics, m), count + c), None

    micro = (jnp.arange(num), _split_micro_batches(batch, num))
    shapes = jax.eval_shape(self._grads_of_sum, state, jax.tree.map(lambda x: x[0], micro[1]),
                            rngs)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    carry = (zeros[0], state.model_state, zeros[1][1], zeros[1][2])
    (grads, model_state, metrics, count), _ = jax.lax.scan(body, carry, micro,
                                                           unroll=True if self.unroll else 1)
    return grads, (model_state, metrics, count)

  def __call__(self, state: TrainState, batch):
    axis_name = self.axis_name
    rngs = step_rngs(state, 'dropout')
    if axis_name is not None:  # Each device draws its own dropout masks.
      rngs = {k: jax.random.fold_in(v, jax.lax.axis_index(axis_name)) for k, v in rngs.items()}
    grads, (model_state, metrics, count) = self._accumulate(state, batch, rngs)
    if axis_name is not None:
      # pmean of sums over pmean of counts = the global mean, whatever each device's mask.
      grads = jax.lax.pmean(grads, axis_name)
      count = jax.lax.pmean(count, axis_name)
      metrics = jax.lax.psum(metrics, axis_name)
      model_state = jax.tree.map(  # Batch statistics; integer leaves (counters) agree already.
          lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x,
          model_state)
    grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    grad_norm = optax.tree.norm(grads)
    metrics['grad_norm'] = Mean.of(grad_norm)
    metrics['param_norm'] = Mean.of(optax.tree.norm(params))
    metrics['nonfinite'] = nonfinite_metric(metrics['loss'].total, grad_norm)
    if self.learning_rate_fn is not None:  # The rate in effect: the schedule times any multiplier.
      metrics['learning_rate'] = Mean.of(self.learning_rate_fn(state.step) *
                                         lr_multiplier_value(state.opt_state))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state)
    return new_state, metrics


def make_train_step(apply_fn: Callable, loss_fn: Callable, tx: optax.GradientTransformation,
                    metrics_fn: Callable | None = None,
                    learning_rate_fn: Callable | None = None, *,
                    micro_batches: int | None = None, slice_sizes: tuple[int, ...] = (),
                    unroll: bool = False, axis_name=None) -> TrainStep:
  """Returns `train_step(state, batch) -> (state, metrics)` (a `TrainStep`).

  apply_fn: `Model.apply`. loss_fn(outputs, batch) -> per-example losses.
  metrics_fn(outputs, batch, losses, weights) -> dict of mergeable metrics.
  The step also reports 'loss', 'grad_norm', 'param_norm', 'nonfinite' (the
  fraction of steps with a NaN/inf loss or gradient) and, with
  learning_rate_fn, 'learning_rate' (the schedule times the optimiser state's
  'lr_multiplier', if any). Each is a `Mean`, so steps merge by addition.

  micro_batches: accumulate gradients over this many slices of the batch (a
    `lax.scan`), then update once; the update equals one step on the whole
    batch, with the activation memory of one slice. None: slices of the first of
    `slice_sizes` that divides a batch larger than slice_sizes[0] (`micro_batch_count`);
    with the default () the batch stays whole.
  unroll: the micro-batch scan as straight-line code (faster on XLA:CPU).
  axis_name: mesh axis (or axes) to reduce over when the step runs per device
    under `jax.shard_map` (the pmap style): gradients are `lax.pmean`ed,
    metric sums `psum`ed and model state (batch statistics) `pmean`ed.

  The step is the same on every device. `fit` runs it through `cpu_path.tuned`, which on
  XLA:CPU rewrites apply_fn and picks slice sizes and unrolling; call that yourself before
  `jax.jit` in your own loop, or before `parallel.per_device_step`.
  """
  return TrainStep(apply_fn, loss_fn, tx, metrics_fn, learning_rate_fn,
                   micro_batches=micro_batches, slice_sizes=tuple(slice_sizes), unroll=unroll,
                   axis_name=axis_name)


def make_eval_step(apply_fn: Callable, loss_fn: Callable,
                   metrics_fn: Callable | None = None) -> Callable:
  """Returns `eval_step(state, batch) -> metrics` (inference mode, mask-aware)."""

  def eval_step(state: TrainState, batch):
    variables = {'params': state.params, **state.model_state}
    outputs, _ = apply_fn(variables, batch['inputs'], train=False)
    losses = loss_fn(outputs, batch)
    weights = _weights(batch, losses)
    metrics = dict(metrics_fn(outputs, batch, losses, weights)) if metrics_fn else {}
    metrics['loss'] = Mean.of(losses, weights)
    return metrics

  return eval_step


def make_predict_fn(apply_fn: Callable) -> Callable:
  """Returns `predict(state, inputs) -> outputs` in inference mode."""

  def predict(state: TrainState, inputs):
    outputs, _ = apply_fn({'params': state.params, **state.model_state}, inputs, train=False)
    return outputs

  return predict


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocessed:
  """`train_step` on `preprocess(rng, batch)`; see `with_preprocess`."""
  __name__ = 'train_step'  # jit names its program after it (jit_train_step).
  train_step: Callable
  preprocess: Callable

  def __call__(self, state: TrainState, batch):
    rng = step_rngs(state, 'preprocess')['preprocess']
    return self.train_step(state, self.preprocess(rng, batch))


def with_preprocess(step_fn: Callable, preprocess: Callable) -> Preprocessed:
  """Applies `preprocess(rng, batch) -> batch` (normalise, augment) before a train step.

  The key comes from (state.rng, state.step), so it is reproducible and resumable.
  """
  return Preprocessed(step_fn, preprocess)
