"""Mergeable metrics and the classification report, checked against scikit-learn."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from jaxmodels import (Mean, classification_metrics, classification_report, confusion_matrix,
                       merge, precision_recall_f1, summarize, top_k_correct)


def _predictions(num=500, classes=6, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, num)
  logits = rng.normal(size=(num, classes)).astype(np.float32)
  logits[np.arange(num), labels] += rng.normal(1.0, 1.0, num)  # Better than chance.
  return logits, labels


def test_metrics_merge_across_batches_equals_whole():
  logits, labels = _predictions()
  metrics_fn = classification_metrics(6, top_k=3, with_confusion=True)
  losses = jnp.asarray(np.random.default_rng(1).random(500), jnp.float32)
  batch = lambda s: metrics_fn(logits[s], {'labels': labels[s]}, losses[s], jnp.ones(len(labels[s])))
  merged = summarize(jax.jit(merge)(batch(slice(0, 123)), batch(slice(123, None))))
  whole = summarize(batch(slice(None)))
  for key in ('loss', 'accuracy', 'top3_accuracy'):
    assert merged[key] == pytest.approx(whole[key], rel=1e-6)
  np.testing.assert_array_equal(merged['confusion'], whole['confusion'])
  assert whole['accuracy'] == pytest.approx(skm.accuracy_score(labels, logits.argmax(-1)))
  assert whole['loss'] == pytest.approx(float(np.mean(losses)), rel=1e-6)


def test_mask_excludes_padding():
  logits, labels = _predictions(num=10)
  mask = jnp.array([1.0] * 7 + [0.0] * 3)
  m = summarize({'acc': Mean.of((logits.argmax(-1) == labels).astype(np.float32), mask),
                 'confusion': confusion_matrix(labels, logits.argmax(-1), 6, mask)})
  assert m['acc'] == pytest.approx(skm.accuracy_score(labels[:7], logits[:7].argmax(-1)))
  assert m['confusion'].sum() == 7


@pytest.mark.parametrize('k', [1, 2, 4])
def test_top_k_matches_sklearn(k):
  logits, labels = _predictions(seed=k)
  ours = float(np.mean(top_k_correct(logits, labels, k)))
  assert ours == pytest.approx(skm.top_k_accuracy_score(labels, logits, k=k, labels=range(6)))


def test_confusion_matrix_matches_sklearn():
  logits, labels = _predictions()
  ours = np.asarray(confusion_matrix(labels, logits.argmax(-1), 6))
  np.testing.assert_array_equal(ours, skm.confusion_matrix(labels, logits.argmax(-1), labels=range(6)))


def test_precision_recall_f1_match_sklearn_including_a_never_predicted_class():
  logits, labels = _predictions()
  preds = logits.argmax(-1)
  preds[preds == 5] = 4  # Class 5 is never predicted: precision must be 0, as sklearn's.
  scores = precision_recall_f1(skm.confusion_matrix(labels, preds, labels=range(6)))
  p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=range(6), zero_division=0)
  np.testing.assert_allclose(scores['precision'], p)
  np.testing.assert_allclose(scores['recall'], r)
  np.testing.assert_allclose(scores['f1'], f)
  np.testing.assert_array_equal(scores['support'], s)
  for avg in ('macro', 'weighted'):
    p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, average=avg, zero_division=0)
    assert (scores[f'{avg}_precision'], scores[f'{avg}_recall'], scores[f'{avg}_f1']) == pytest.approx((p, r, f))


def test_classification_report_numbers_match_sklearn():
  logits, labels = _predictions(seed=3)
  preds = logits.argmax(-1)
  names = ['cat', 'dog', 'frog', 'horse', 'ship', 'truck']
  text = classification_report(skm.confusion_matrix(labels, preds, labels=range(6)), names)
  expected = skm.classification_report(labels, preds, target_names=names, digits=4,
                                       zero_division=0, output_dict=True)
  rows = {}
  for line in text.splitlines():
    match = re.match(r'\s*(\w+(?: avg)?)\s+([\d.\s]+)$', line)
    if match:
      rows[match.group(1)] = [float(v) for v in match.group(2).split()]
  assert set(rows) == set(names) | {'accuracy', 'macro avg', 'weighted avg'}
  for name in names + ['macro avg', 'weighted avg']:
    want = expected[name]
    assert rows[name] == pytest.approx(
        [want['precision'], want['recall'], want['f1-score'], want['support']], abs=5e-5)
  assert rows['accuracy'] == pytest.approx([expected['accuracy'], len(labels)], abs=5e-5)


def test_correct_is_argmax_equals_label_with_ties_and_nans():
  """`correct` (a max, then the first index reaching it) marks what numpy's argmax marks:
  ties go to the first maximum, a NaN row to its first NaN; over (B, T, C) logits too."""
  from jaxmodels.train.metrics import correct
  rng = np.random.default_rng(0)
  logits = rng.integers(-2, 3, (4, 50, 7)).astype(np.float32)  # Many ties.
  logits[0, :5, 3] = np.nan
  logits[1, 7, [2, 5]] = np.nan
  logits[2, 9] = -np.inf
  labels = rng.integers(0, 7, (4, 50))
  labels[0, :5] = 3
  labels[1, 7] = 2
  expected = (np.argmax(logits, -1) == labels).astype(np.float32)
  assert 0.1 < expected.mean() < 0.9
  np.testing.assert_array_equal(jax.jit(correct)(logits, labels), expected)
