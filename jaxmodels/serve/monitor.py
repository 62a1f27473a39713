"""What `GET /v1/monitor`, the /monitor page and the monitoring gauges of /metrics show: per
served version, input and output drift over windows of its recent predictions, and its live
quality on the feedback users sent back.

Drift: the version's last `window * history` recorded predictions are cut into windows of
`window`, newest last; each is tested against the version's reference (`drift.window_tests`:
chi-squared on the predicted classes, Kolmogorov-Smirnov on the top probability and on each
input-summary dimension, corrected for the number of tests). `current` is the newest full
window. Quality: accuracy with its Wilson interval and macro-F1 over every labelled
prediction of the version (`drift.live_quality`), the same in chunks of `LABELS_PER_POINT`
labels over time, and the mean top probability of the newest window: the estimate to watch
while labels are late.

The numbers come from the prediction store, so several servers writing one PostgreSQL store
show the same figures. A snapshot is kept for `ttl_s`: a page polling every second and a
Prometheus scrape do not each re-read the store.
"""
import os
import threading
import time

import numpy as np

from jaxmodels.serve import drift
from jaxmodels.serve.model_repository import ServingState

DEFAULT_WINDOW = 200
DEFAULT_HISTORY = 50  # Windows kept per version.
LABELS_PER_POINT = 50  # Labels per point of the live-accuracy curve.


def load_reference(directory: str, manifest: dict) -> drift.Reference | None:
  """The artifact's drift reference (manifest 'reference'), or None when it was exported
  without one."""
  entry = manifest.get('reference')
  if not entry:
    return None
  return drift.Reference.load(os.path.join(directory, entry['file']))


def role_of(state: ServingState, version: int) -> str:
  if version == state.champion:
    return 'champion'
  if version == state.canary:
    return 'canary'
  return 'shadow' if version == state.shadow else 'loaded'


def drift_of(reference: drift.Reference | None, recent: dict, *, window: int, alpha: float,
             correction: str) -> dict:
  """{'current': the newest full window's tests or None, 'history': every full window's, oldest
  first, each with its 'start' and 'end' (unix s of its first and last prediction)}."""
  if reference is None:
    return {'current': None, 'history': [], 'note': 'exported without a drift reference'}
  count = len(recent['predicted'])
  history = []
  for stop in [count - i * window for i in reversed(range(count // window))]:  # Newest last.
    part = slice(stop - window, stop)
    tests = drift.window_tests(reference, recent['predicted'][part], recent['confidence'][part],
                               recent['summary'][part], alpha=alpha, correction=correction)
    history.append({**tests, 'start': float(recent['created_at'][part.start]),
                    'end': float(recent['created_at'][stop - 1])})
  note = None if history else f'{count} of the {window} predictions a window needs'
  return {'current': history[-1] if history else None, 'history': history,
          **({'note': note} if note else {})}


def quality_of(labelled: list[dict], num_classes: int) -> dict:
  """`drift.live_quality` of every labelled prediction, plus 'history': the accuracy of each
  chunk of LABELS_PER_POINT labels in the order the predictions were made."""
  predicted = np.array([row['predicted'] for row in labelled], np.int64)
  labels = np.array([row['label'] for row in labelled], np.int64)
  quality = drift.live_quality(predicted, labels, num_classes)
  history = []
  for start in range(0, len(labelled) - LABELS_PER_POINT + 1, LABELS_PER_POINT):
    part = slice(start, start + LABELS_PER_POINT)
    history.append({'end': float(labelled[part.stop - 1]['created_at']),
                    'labels': LABELS_PER_POINT,
                    'accuracy': float(np.mean(predicted[part] == labels[part]))})
  return {**quality, 'history': history}


class Monitor:
  """Snapshots of every loaded version's drift and quality from `store` (a PredictionStore).
  `references(version)` gives a version's `drift.Reference` or None; `class_names()` the
  champion's classes."""

  def __init__(self, store, references, class_names, *, window: int = DEFAULT_WINDOW,
               history: int = DEFAULT_HISTORY, alpha: float = 0.05,
               correction: str = 'bonferroni', ttl_s: float = 2.0):
    self.store, self.references, self.class_names = store, references, class_names
    self.window, self.history, self.alpha, self.correction = window, history, alpha, correction
    self.ttl_s = ttl_s
    self._lock, self._cached = threading.Lock(), (None, -np.inf, None)

  def snapshot(self, state: ServingState) -> dict:
    """The /v1/monitor document for serving `state` (blocking: call it in a thread)."""
    with self._lock:
      key, taken, cached = self._cached
      if key == state and time.monotonic() - taken < self.ttl_s:
        return cached
      document = self._compute(state)
      self._cached = (state, time.monotonic(), document)
      return document

  def _compute(self, state: ServingState) -> dict:
    class_names = list(self.class_names())
    versions = []
    for version in state.loaded:
      reference = self.references(version)
      recent = self.store.recent(version, self.window * self.history)
      newest = recent['confidence'][-self.window:]
      versions.append({
          'version': version, 'role': role_of(state, version),
          'predictions': int(len(recent['predicted'])),
          'reference': None if reference is None else reference.to_json(),
          'drift': drift_of(reference, recent, window=self.window, alpha=self.alpha,
                            correction=self.correction),
          'confidence': {'window': int(len(newest)),
                         'mean': float(newest.mean()) if len(newest) else None,
                         'histogram': drift.histogram(newest)},
          'quality': quality_of(self.store.labelled(version=version), len(class_names))})
    return {'generated_at': time.time(), 'window': self.window, 'alpha': self.alpha,
            'correction': self.correction, 'class_names': class_names,
            'serving': state.to_json(), 'versions': versions}


def gauges(document: dict) -> str:
  """The snapshot as Prometheus gauges (text format), one series per version (and test)."""
  series = {name: [] for name in (
      'jaxmodels_drift_p_value', 'jaxmodels_drift_detected', 'jaxmodels_live_accuracy',
      'jaxmodels_live_accuracy_lower', 'jaxmodels_live_accuracy_upper', 'jaxmodels_live_macro_f1',
      'jaxmodels_feedback_labels', 'jaxmodels_mean_confidence', 'jaxmodels_reference_accuracy')}

  def add(name, version, value, **labels):
    if value is not None:
      extra = ''.join(f',{k}="{v}"' for k, v in labels.items())
      series[name].append(f'{name}{{version="{version}"{extra}}} {float(value):.9g}')

  for entry in document['versions']:
    version, current, quality = entry['version'], entry['drift']['current'], entry['quality']
    if current is not None:
      add('jaxmodels_drift_detected', version, int(current['drifted']))
      for test in current['tests']:
        add('jaxmodels_drift_p_value', version, test['p_value'], test=test['name'])
    interval = quality['accuracy_interval'] or (None, None)
    add('jaxmodels_live_accuracy', version, quality['accuracy'])
    add('jaxmodels_live_accuracy_lower', version, interval[0])
    add('jaxmodels_live_accuracy_upper', version, interval[1])
    add('jaxmodels_live_macro_f1', version, quality['macro_f1'])
    add('jaxmodels_feedback_labels', version, quality['labels'])
    add('jaxmodels_mean_confidence', version, entry['confidence']['mean'])
    add('jaxmodels_reference_accuracy', version, (entry['reference'] or {}).get('accuracy'))
  lines = []
  for name, rows in series.items():
    lines += [f'# TYPE {name} gauge', *rows]
  return '\n'.join(lines) + '\n'
