"""Pure, mergeable metrics: sums and counts in a pytree.

Metrics from many steps, batches or devices merge by `merge` (leaf-wise
addition), inside jit or out; `summarize` turns them into numbers on the host
only when they are logged.
"""
from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Mean:
  """A running mean as (total, count); value = total / count."""
  total: jax.Array
  count: jax.Array

  @classmethod
  def of(cls, values: jax.Array, weights: jax.Array | None = None) -> 'Mean':
    values = jnp.asarray(values, jnp.float32)
    weights = jnp.ones_like(values) if weights is None else jnp.broadcast_to(weights, values.shape)
    return cls(total=jnp.sum(values * weights), count=jnp.sum(weights).astype(jnp.float32))

  def value(self):
    return self.total / jnp.maximum(self.count, 1e-12)


def merge(a, b):
  """Leaf-wise sum of two metric pytrees of the same structure."""
  return jax.tree.map(jnp.add, a, b)


def summarize(metrics: Mapping) -> dict:
  """Host-side values: a float per `Mean`, a numpy array per other leaf (e.g. confusion)."""
  metrics = jax.device_get(metrics)
  out = {}
  for name, metric in metrics.items():
    if isinstance(metric, Mean):
      out[name] = float(metric.total / max(float(metric.count), 1e-12))
    else:
      out[name] = np.asarray(metric)
  return out


def _argmax(logits: jax.Array) -> jax.Array:
  """`jnp.argmax(logits, -1)` (the first maximum, or the first NaN), int32, as a max and then
  the first index that reaches it: XLA:CPU runs argmax as a reduction over (value, index)
  pairs, element by element, 0.4 % of lm.py's train step over its 256 byte classes."""
  top = jnp.max(logits, -1, keepdims=True)
  is_top = (logits == top) | jnp.isnan(logits)
  index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.min(jnp.where(is_top, index, logits.shape[-1]), -1)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits (..., C), labels (...) -> (...) float32, 1 where argmax is the label."""
  return (_argmax(logits) == labels).astype(jnp.float32)


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """(...) float32, 1 where the label is among the k largest logits (logits (..., C)).

  Counts logits strictly greater than the label's logit, so ties favour the label.
  """
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)
  rank = jnp.sum(logits > label_logit, axis=-1)
  return (rank < k).astype(jnp.float32)


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     weights: jax.Array | None = None) -> jax.Array:
  """(C, C) int32 counts; rows are true classes, columns predicted (sklearn's layout)."""
  true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  pred = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)
  if weights is not None:
    true = true * weights.astype(jnp.int32)[:, None]
  return true.T @ pred


def classification_metrics(num_classes: int, top_k: int = 5, with_confusion: bool = False):
  """metrics_fn(logits, batch, losses, weights) -> {'loss', 'accuracy', ['top{k}_accuracy'], ['confusion']}."""

  def metrics_fn(logits, batch, losses, weights):
    labels = batch['labels']
    out = {'loss': Mean.of(losses, weights), 'accuracy': Mean.of(correct(logits, labels), weights)}
    if 1 < top_k < num_classes:  # top_k=0 turns it off.
      out[f'top{top_k}_accuracy'] = Mean.of(top_k_correct(logits, labels, top_k), weights)
    if with_confusion:
      out['confusion'] = confusion_matrix(labels, _argmax(logits), num_classes, weights)
    return out

  return metrics_fn
