"""Distillation's loss against torch's `kl_div(log_softmax(s / T), softmax(t / T),
'batchmean') * T**2` written out in numpy, its gradient against the closed form, the ensemble's
probability-space average, and the objective's mix with the label loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.compress import distill

RNG = np.random.default_rng(0)
STUDENT = RNG.normal(size=(8, 10)).astype(np.float32) * 3
TEACHER = RNG.normal(size=(8, 10)).astype(np.float32) * 3


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _torch_formula(student, teacher_probs, temperature):
  """kl_div(input, target, 'batchmean') = sum(target * (log target - input)) / B, in float64."""
  log_q = np.log(_softmax(student.astype(np.float64) / temperature))
  return np.sum(teacher_probs * (np.log(teacher_probs) - log_q)) / len(student) * temperature ** 2


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_loss_equals_torch_kl_div_batchmean_times_t_squared(temperature):
  soft = distill.soft_targets(TEACHER, temperature)
  got = jnp.mean(distill.distillation_loss(STUDENT, soft, temperature))
  expected = _torch_formula(STUDENT, _softmax(TEACHER.astype(np.float64) / temperature),
                            temperature)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_gradient_is_the_difference_of_softened_probabilities(temperature):
  soft = distill.soft_targets(TEACHER, temperature)
  grad = jax.grad(lambda s: jnp.mean(distill.distillation_loss(s, soft, temperature)))(STUDENT)
  expected = (_softmax(STUDENT.astype(np.float64) / temperature)
              - _softmax(TEACHER.astype(np.float64) / temperature)) * temperature / len(STUDENT)
  np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-6)
  # The teacher gets no gradient.
  teacher_grad = jax.grad(lambda t: jnp.mean(distill.distillation_loss(
      STUDENT, distill.soft_targets(t, temperature), temperature)))(TEACHER)
  assert not np.any(teacher_grad)


def test_an_ensemble_averages_probabilities_not_logits():
  members = RNG.normal(size=(3, 8, 10)).astype(np.float32) * 2
  got = np.exp(distill.soft_targets(members, 2.0))
  np.testing.assert_allclose(got, _softmax(members / 2.0).mean(0), rtol=1e-5, atol=1e-7)
  logit_mean = _softmax(members.mean(0) / 2.0)
  assert np.abs(got - logit_mean).max() > 1e-3  # The two averages really differ here.


def test_objective_mixes_the_soft_and_label_terms_on_the_batch_inputs():
  labels = RNG.integers(0, 10, 8)
  inputs = RNG.normal(size=(8, 4)).astype(np.float32)
  seen = []

  def teacher(x):
    seen.append(np.asarray(x))
    return jnp.asarray(TEACHER)[None]

  loss_fn = distill.distillation_objective(teacher, 3.0, 0.7)
  got = loss_fn(jnp.asarray(STUDENT), {'inputs': inputs, 'labels': labels})
  probs = _softmax(TEACHER.astype(np.float64) / 3.0)
  log_q = np.log(_softmax(STUDENT.astype(np.float64) / 3.0))
  soft = 9.0 * np.sum(probs * (np.log(probs) - log_q), -1)
  hard = -np.log(_softmax(STUDENT.astype(np.float64)))[np.arange(8), labels]
  np.testing.assert_allclose(got, 0.7 * soft + 0.3 * hard, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(seen[0], inputs)  # The teacher saw the student's batch.
