"""Pure train and eval steps. No device, mesh, logging or I/O in here: jit,
sharding and donation are applied by the caller.

A batch is a dict: 'inputs' (B, ...), 'labels' (B, ...), and optionally
'mask' (B,) float, 0 for padding examples.
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmodels.models.fast_path import rewrite_for_cpu
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


CPU_SLICES = (128, 64)  # Slice sizes where a CPU's caches still hold a CNN's activations.


def auto_micro_batches(batch, model_state, axis_name=None) -> int:
  """How many slices `make_train_step` accumulates over by default: on a single CPU device,
  batches over 128 split into slices of 128, or of 64 if 128 does not divide them.
  XLA:CPU's convolutions slow down per example once the activations leave the caches
  (the SmallCNN: 7,200 img/s at batch 256 in one piece, 12,000 in two slices of 128); the
  update is the same. Slices of 128 run as fast as slices of 64 and compile in two thirds
  of the time (fewer unrolled copies). Never for models with batch statistics (a slice
  would see different ones), under a mesh, or elsewhere: 1."""
  size = jax.tree.leaves(batch)[0].shape[0]
  single_cpu = jax.default_backend() == 'cpu' and jax.device_count() == 1 and axis_name is None
  if single_cpu and not jax.tree.leaves(model_state) and size > CPU_SLICES[0]:
    for slice_size in CPU_SLICES:
      if size % slice_size == 0:
        return size // slice_size
  return 1


def make_train_step(apply_fn: Callable, loss_fn: Callable, tx: optax.GradientTransformation,
                    metrics_fn: Callable | None = None,
                    learning_rate_fn: Callable | None = None, *,
                    micro_batches: int | None = None, axis_name=None) -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`.

  apply_fn: `Model.apply`. loss_fn(outputs, batch) -> per-example losses.
  metrics_fn(outputs, batch, losses, weights) -> dict of mergeable metrics.
  The step also reports 'loss', 'grad_norm', 'param_norm', 'nonfinite' (the
  fraction of steps with a NaN/inf loss or gradient) and, with
  learning_rate_fn, 'learning_rate' (the schedule times the optimiser state's
  'lr_multiplier', if any). Each is a `Mean`, so steps merge by addition.

  micro_batches: accumulate gradients over this many slices of the batch (a
    `lax.scan`), then update once; the update equals one step on the whole
    batch, with the activation memory of one slice. None: `auto_micro_batches`
    (slices of 128 or 64 on a single CPU device, for models without batch statistics).
  axis_name: mesh axis (or axes) to reduce over when the step runs per device
    under `jax.shard_map` (the pmap style): gradients are `lax.pmean`ed,
    metric sums `psum`ed and model state (batch statistics) `pmean`ed.
  """

  # On CPU, max-pools are differentiated without select-and-scatter and first-layer convs
  # run as fused multiply-adds (see models.fast_path): the same numbers (convs to rounding),
  # several times faster, for any model's nn.max_pool and nn.Conv.
  forward = rewrite_for_cpu(apply_fn) if jax.default_backend() == 'cpu' else apply_fn

  def grads_of_sum(state, batch, rngs):
    """Gradients of the weighted loss *sum* (not mean), so slices and devices add up."""

    def objective(params):
      variables = {'params': params, **state.model_state}
      outputs, model_state = forward(variables, batch['inputs'], train=True, rngs=rngs)
      losses = loss_fn(outputs, batch)
      weights = _weights(batch, losses)
      metrics = dict(metrics_fn(outputs, batch, losses, weights)) if metrics_fn else {}
      metrics['loss'] = Mean.of(losses, weights)
      return jnp.sum(losses * weights), (model_state, metrics, jnp.sum(weights))

    (_, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    return grads, aux

  def accumulate(state, batch, rngs):
    num = micro_batches or auto_micro_batches(batch, state.model_state, axis_name)
    if num == 1:
      return grads_of_sum(state, batch, rngs)

    # Unrolled on CPU, where XLA runs convolution gradients slowly inside a while loop.
    cpu = jax.default_backend() == 'cpu'

    def body(carry, micro):
      grads, model_state, metrics, count = carry
      i, micro_batch = micro
      if cpu:
        micro_batch = _after(grads, micro_batch)
      micro_rngs = {k: jax.random.fold_in(v, i) for k, v in rngs.items()}
      g, (model_state, m, c) = grads_of_sum(state.replace(model_state=model_state), micro_batch,
                                            micro_rngs)
      add = lambda a, b: jax.tree.map(jnp.add, a, b)
      return (add(grads, g), model_state, add(metrics, m), count + c), None

    micro = (jnp.arange(num), _split_micro_batches(batch, num))
    shapes = jax.eval_shape(grads_of_sum, state, jax.tree.map(lambda x: x[0], micro[1]), rngs)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    carry = (zeros[0], state.model_state, zeros[1][1], zeros[1][2])
    (grads, model_state, metrics, count), _ = jax.lax.scan(body, carry, micro,
                                                           unroll=True if cpu else 1)
    return grads, (model_state, metrics, count)

  def train_step(state: TrainState, batch):
    rngs = step_rngs(state, 'dropout')
    if axis_name is not None:  # Each device draws its own dropout masks.
      rngs = {k: jax.random.fold_in(v, jax.lax.axis_index(axis_name)) for k, v in rngs.items()}
    grads, (model_state, metrics, count) = accumulate(state, batch, rngs)
    if axis_name is not None:
      # pmean of sums over pmean of counts = the global mean, whatever each device's mask.
      grads = jax.lax.pmean(grads, axis_name)
      count = jax.lax.pmean(count, axis_name)
      metrics = jax.lax.psum(metrics, axis_name)
      model_state = jax.tree.map(  # Batch statistics; integer leaves (counters) agree already.
          lambda x: jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x,
          model_state)
    grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1.0), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    grad_norm = optax.tree.norm(grads)
    metrics['grad_norm'] = Mean.of(grad_norm)
    metrics['param_norm'] = Mean.of(optax.tree.norm(params))
    metrics['nonfinite'] = nonfinite_metric(metrics['loss'].total, grad_norm)
    if learning_rate_fn is not None:  # The rate in effect: the schedule times any multiplier.
      metrics['learning_rate'] = Mean.of(learning_rate_fn(state.step) *
                                         lr_multiplier_value(state.opt_state))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state)
    return new_state, metrics

  return train_step


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


def with_preprocess(step_fn: Callable, preprocess: Callable) -> Callable:
  """Applies `preprocess(rng, batch) -> batch` (normalise, augment) before a train step.

  The key comes from (state.rng, state.step), so it is reproducible and resumable.
  """

  def step(state: TrainState, batch):
    return step_fn(state, preprocess(step_rngs(state, 'preprocess')['preprocess'], batch))

  return step
