"""Pure train and eval steps. No device, mesh, logging or I/O in here: jit,
sharding and donation are applied by the caller.

A batch is a dict: 'inputs' (B, ...), 'labels' (B, ...), and optionally
'mask' (B,) float, 0 for padding examples.
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmodels.train.metrics import Mean
from jaxmodels.train.state import TrainState, step_rngs


def _weights(batch, losses):
  mask = batch.get('mask')
  if mask is None:
    return jnp.ones(losses.shape, jnp.float32)
  # Broadcast a (B,) mask over per-token losses (B, T, ...).
  return jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (losses.ndim - mask.ndim)), losses.shape)


def make_train_step(apply_fn: Callable, loss_fn: Callable, tx: optax.GradientTransformation,
                    metrics_fn: Callable | None = None,
                    learning_rate_fn: Callable | None = None) -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`.

  apply_fn: `Model.apply`. loss_fn(outputs, batch) -> per-example losses.
  metrics_fn(outputs, batch, losses, weights) -> dict of mergeable metrics.
  The step also reports 'loss', 'grad_norm', 'param_norm' and, with
  learning_rate_fn, 'learning_rate' (each a `Mean`, so steps merge by addition).
  """

  def train_step(state: TrainState, batch):
    rngs = step_rngs(state, 'dropout')

    def objective(params):
      variables = {'params': params, **state.model_state}
      outputs, model_state = apply_fn(variables, batch['inputs'], train=True, rngs=rngs)
      losses = loss_fn(outputs, batch)
      weights = _weights(batch, losses)
      loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
      return loss, (outputs, model_state, losses, weights)

    (_, (outputs, model_state, losses, weights)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    metrics = dict(metrics_fn(outputs, batch, losses, weights)) if metrics_fn else {}
    metrics['loss'] = Mean.of(losses, weights)
    metrics['grad_norm'] = Mean.of(optax.tree.norm(grads))
    metrics['param_norm'] = Mean.of(optax.tree.norm(params))
    if learning_rate_fn is not None:
      metrics['learning_rate'] = Mean.of(learning_rate_fn(state.step))
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
