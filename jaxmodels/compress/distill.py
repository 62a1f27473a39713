"""Knowledge distillation (Hinton et al., 2015): a student learns the teacher's softened
class probabilities, softmax(t / T), as well as the labels.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

The T^2 keeps the soft term's gradient, T * (softmax(s / T) - softmax(t / T)) / B for the
batch mean, on the scale of the label term's as T changes. An ensemble teacher averages its
members' softened probabilities (probability space, not logits).
"""
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.train.losses import softmax_cross_entropy


def soft_targets(teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """log of the mean of softmax(t_k / T) over teachers: (K, B, C) or (B, C) -> (B, C)."""
  logits = jnp.asarray(teacher_logits, jnp.float32)
  if logits.ndim == 2:
    return jax.nn.log_softmax(logits / temperature)
  log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(logits.shape[0])


def distillation_loss(student_logits: jax.Array, teacher_log_probs: jax.Array,
                      temperature: float) -> jax.Array:
  """Per example T^2 * KL(p || softmax(s / T)), p = exp(teacher_log_probs): (B, C) -> (B,).

  Its batch mean is torch's `kl_div(log_softmax(s / T), p, reduction='batchmean') * T**2`.
  The teacher gets no gradient.
  """
  log_p = jax.lax.stop_gradient(teacher_log_probs)
  log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  p = jnp.exp(log_p)
  return temperature ** 2 * jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def teacher_fn(modules: Sequence, variables: Sequence[dict], input_maps: Sequence[Callable]):
  """fn(inputs) -> (K, B, C) logits of K teachers in inference mode; input_maps[k] turns the
  student's model inputs into teacher k's (e.g. another normalisation). The variables are
  constants of the calling program: not trained, not part of the student's state."""
  variables = [jax.tree.map(jnp.asarray, v) for v in variables]

  def logits(inputs):
    outs = [m.apply(v, f(inputs), train=False) for m, v, f in zip(modules, variables, input_maps)]
    return jnp.stack([o.astype(jnp.float32) for o in outs])

  return logits


def renormalize(from_spec: dict, to_spec: dict) -> Callable:
  """Model inputs normalised by one image spec -> the same images normalised by another."""
  from_mean, from_std = (np.asarray(from_spec[k], np.float32) for k in ('mean', 'std'))
  to_mean, to_std = (np.asarray(to_spec[k], np.float32) for k in ('mean', 'std'))
  if np.array_equal(from_mean, to_mean) and np.array_equal(from_std, to_std):
    return lambda x: x
  return lambda x: ((x * from_std + from_mean) - to_mean) / to_std


def distillation_objective(teacher_logits: Callable, temperature: float, alpha: float,
                           label_smoothing: float = 0.0) -> Callable:
  """loss_fn(student_logits, batch) -> (B,) per-example losses for the train step: the
  teacher sees the batch's own (augmented, normalised) inputs."""

  def loss_fn(logits, batch):
    if alpha == 0.0:  # The labels alone (a baseline): no teacher pass.
      return softmax_cross_entropy(logits, batch['labels'], label_smoothing)
    soft = distillation_loss(logits, soft_targets(teacher_logits(batch['inputs']), temperature),
                             temperature)
    if alpha == 1.0:
      return soft
    return alpha * soft + (1 - alpha) * softmax_cross_entropy(logits, batch['labels'],
                                                              label_smoothing)

  return loss_fn
