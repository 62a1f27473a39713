"""Per-example losses. Each returns an array of the labels' batch shape; the
train step reduces it with the batch mask, so padding never counts."""
import jax
import jax.numpy as jnp
import optax


def _at_least_f32(x: jax.Array) -> jax.Array:
  # bf16/f16 outputs are upcast for a stable loss; f64 stays f64.
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          label_smoothing: float = 0.0) -> jax.Array:
  """logits (..., C) float, labels (...) int -> (...) float32 (float64 under x64).

  With smoothing s the target is (1 - s) * one_hot + s / C.
  """
  logits = _at_least_f32(logits)
  if label_smoothing == 0.0:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits (...) float, labels (...) in {0, 1} (or soft in [0, 1]) -> (...) float32.

  Multi-label outputs (..., K) return (..., K); average over K in your loss_fn.
  """
  logits = _at_least_f32(logits)
  return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))


def classification_loss(label_smoothing: float = 0.0):
  """loss_fn(outputs, batch) for integer-labelled classification."""

  def loss_fn(logits, batch):
    return softmax_cross_entropy(logits, batch['labels'], label_smoothing)

  return loss_fn
