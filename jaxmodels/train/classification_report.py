"""Per-class precision, recall and F1 from a confusion matrix; sklearn-style report text.

A class that is never predicted has precision 0, one that never occurs has
recall 0 (sklearn's `zero_division=0`).
"""
from collections.abc import Sequence

import numpy as np


def _safe_divide(num, den):
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def precision_recall_f1(confusion) -> dict:
  """confusion (C, C), rows true, columns predicted -> dict of per-class and averaged scores.

  Keys: precision, recall, f1, support ((C,) arrays); accuracy; macro_* and
  weighted_* (support-weighted) precision, recall and f1 (floats).
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  support = confusion.sum(axis=1)
  precision = _safe_divide(tp, confusion.sum(axis=0))
  recall = _safe_divide(tp, support)
  f1 = _safe_divide(2 * precision * recall, precision + recall)
  total = support.sum()
  out = {'precision': precision, 'recall': recall, 'f1': f1, 'support': support.astype(np.int64),
         'accuracy': float(tp.sum() / total) if total else 0.0}
  for name, values in (('precision', precision), ('recall', recall), ('f1', f1)):
    out[f'macro_{name}'] = float(values.mean())
    out[f'weighted_{name}'] = float(_safe_divide((values * support).sum(), total))
  return out


def classification_report(confusion, class_names: Sequence[str] | None = None,
                          digits: int = 4) -> str:
  """Text report in sklearn's `classification_report` layout."""
  scores = precision_recall_f1(confusion)
  num_classes = len(scores['support'])
  names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
  width = max(len('weighted avg'), *(len(n) for n in names), digits)
  header = ' ' * width + ''.join(f'{h:>10}' for h in ('precision', 'recall', 'f1-score', 'support'))
  lines = [header, '']
  row = lambda name, p, r, f, s: f'{name:>{width}}' + ''.join(
      f'{v:>10.{digits}f}' for v in (p, r, f)) + f'{s:>10}'
  for i, name in enumerate(names):
    lines.append(row(name, scores['precision'][i], scores['recall'][i], scores['f1'][i],
                     scores['support'][i]))
  total = int(scores['support'].sum())
  lines += ['', f'{"accuracy":>{width}}' + ' ' * 20 + f'{scores["accuracy"]:>10.{digits}f}{total:>10}']
  for avg in ('macro', 'weighted'):
    lines.append(row(f'{avg} avg', scores[f'{avg}_precision'], scores[f'{avg}_recall'],
                     scores[f'{avg}_f1'], total))
  return '\n'.join(lines) + '\n'
