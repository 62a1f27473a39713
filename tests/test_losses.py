"""Losses against direct numpy formulas."""
import numpy as np
import pytest

from jaxmodels import sigmoid_binary_cross_entropy, softmax_cross_entropy


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize('smoothing', [0.0, 0.1, 0.3])
def test_softmax_cross_entropy_with_label_smoothing(smoothing):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(8, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, size=8)
  target = np.full((8, 5), smoothing / 5)
  target[np.arange(8), labels] += 1 - smoothing
  expected = -(target * _log_softmax(logits.astype(np.float64))).sum(-1)
  np.testing.assert_allclose(softmax_cross_entropy(logits, labels, smoothing), expected, rtol=1e-5)


def test_sigmoid_binary_cross_entropy_is_stable_and_exact():
  logits = np.array([-50.0, -2.0, 0.0, 3.0, 50.0], np.float32)
  labels = np.array([1, 0, 1, 1, 0])
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  with np.errstate(divide='ignore'):
    naive = -(labels * np.log(p) + (1 - labels) * np.log1p(-p))
  expected = np.where(np.isfinite(naive), naive, np.abs(logits))  # log(1+e^50) ~ 50
  np.testing.assert_allclose(sigmoid_binary_cross_entropy(logits, labels), expected, rtol=1e-5)

