"""The statistics of model monitoring: a reference fitted at export on a run's validation split,
drift tests of windows of served predictions against it, and live quality from the feedback
labels. numpy and scipy.stats alone; no I/O but `Reference.save` and `Reference.load`.

    reference = fit_reference(probabilities, inputs, labels)   # at export
    report = window_tests(reference, predicted, top_probability, reference.summarize(inputs))
    quality = live_quality(predicted, labels, num_classes)

A window is judged on the predicted classes (chi-squared), the top softmax probability
(Kolmogorov-Smirnov) and each of the k coordinates of the input summary (Kolmogorov-Smirnov),
the family corrected by Bonferroni or Benjamini-Hochberg.

The input summary is the projection of the flattened input (the pixels, for small image models)
on its first k principal axes. It needs nothing from the model: no second exported function for
penultimate activations. The server computes it per request from the request's input array with
one (B, D) x (D, k) product. And it catches shifts of the input itself (contrast, noise, rotation)
even when the predicted classes do not move.

The axes are fitted on other validation rows than the sample the reference keeps: projected on
axes fitted to themselves, rows spread wider along them than fresh rows do (the top eigenvalues
of a sample covariance are biased up), which on noisy inputs flags drift in every window.
"""
import dataclasses
import os
import uuid
import zipfile

import numpy as np
import scipy.stats

from jaxmodels.errors import InputError, one_line

SUMMARY_COMPONENTS = 8  # k: the input summary's width.
CONFIDENCE_BINS = 20  # Histogram bins over [0, 1] for top probabilities.
CORRECTIONS = ('bonferroni', 'fdr')
_ARRAYS = ('class_counts', 'top_probability', 'summary_mean', 'summary_components', 'summaries')
_SCALARS = ('accuracy', 'expected_calibration_error', 'examples')


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
  """What drift is judged against, from the validation split. The arrays are read-only.

  class_counts        (C,) int64: predicted classes on the validation split.
  top_probability     (n,) float64: a sample of the top softmax probability.
  summary_mean        (D,) float64: mean of the flattened inputs (D = prod of the input shape).
  summary_components  (k, D) float64: the first k principal axes of the flattened inputs.
  summaries           (n, k) float64: the same sample's inputs projected on them.
  accuracy, expected_calibration_error: on the validation split.
  examples: validation examples used.
  """
  class_counts: np.ndarray
  top_probability: np.ndarray
  summary_mean: np.ndarray
  summary_components: np.ndarray
  summaries: np.ndarray
  accuracy: float
  expected_calibration_error: float
  examples: int

  def __post_init__(self):
    dtypes = {'class_counts': np.int64}
    for name in _ARRAYS:
      array = np.array(getattr(self, name), dtypes.get(name, np.float64))
      array.setflags(write=False)
      object.__setattr__(self, name, array)
    for name, kind in (('accuracy', float), ('expected_calibration_error', float),
                       ('examples', int)):
      object.__setattr__(self, name, kind(getattr(self, name)))
    k, d = self.summary_components.shape
    if (self.class_counts.ndim != 1 or self.summary_mean.shape != (d,)
        or self.summaries.shape != (len(self.top_probability), k)):
      raise InputError(f'inconsistent drift reference: class_counts {self.class_counts.shape}, '
                       f'top_probability {self.top_probability.shape}, summary_mean '
                       f'{self.summary_mean.shape}, summary_components {(k, d)}, summaries '
                       f'{self.summaries.shape}', key='reference')

  @property
  def components(self) -> int:
    """k, the width of an input summary."""
    return self.summary_components.shape[0]

  def summarize(self, inputs) -> np.ndarray:
    """inputs (B, *input shape), any real dtype -> summaries (B, k) float64:
    (flattened inputs - summary_mean) @ summary_components.T."""
    inputs = np.asarray(inputs)
    d = self.summary_mean.shape[0]
    if inputs.dtype.kind not in 'biuf':
      raise InputError(f'inputs must hold numbers, got dtype {inputs.dtype}', key='inputs')
    if inputs.ndim == 0 or int(np.prod(inputs.shape[1:])) != d:
      raise InputError(f'inputs have shape {list(inputs.shape)}: expected (B, ...) with '
                       f'{d} values per example', key='inputs')
    flat = inputs.reshape(len(inputs), d).astype(np.float64)
    return (flat - self.summary_mean) @ self.summary_components.T

  def save(self, path: str) -> None:
    """Writes one .npz file of plain arrays at exactly `path`, atomically: through a temporary file
    beside it, fsynced and renamed over it, so a reader never sees half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f'.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp')
    try:
      # os.open, not mkstemp: the file gets the umask's mode, as an ordinary open would.
      with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), 'wb') as f:
        np.savez(f, **{name: getattr(self, name) for name in _ARRAYS + _SCALARS})
        f.flush()
        os.fsync(f.fileno())
      os.replace(temporary, path)
    except BaseException:
      if os.path.exists(temporary):
        os.unlink(temporary)
      raise

  @classmethod
  def load(cls, path: str) -> 'Reference':
    """The reference `save` wrote at `path`; InputError naming the file when it is missing,
    unreadable or not a drift reference."""
    try:
      with open(path, 'rb') as f:  # Missing or unreadable: the OSError says so.
        archive_file = zipfile.is_zipfile(f)
      if not archive_file:  # A lone .npy array, or not numpy's at all.
        raise ValueError('not an .npz archive')
      with np.load(path) as archive:  # np.load's default refuses object arrays.
        values = {name: archive[name] for name in _ARRAYS + _SCALARS if name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      reason = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
      raise InputError(f'{path} cannot be read as a drift reference ({reason}): export the '
                       'model again', key='path') from None
    missing = [name for name in _ARRAYS + _SCALARS if name not in values]
    if missing:
      raise InputError(f'{path} is not a drift reference (no {", ".join(missing)}): export the '
                       'model again', key='path')
    try:
      return cls(**{name: value[()] if name in _SCALARS else value
                    for name, value in values.items()})
    except (InputError, TypeError, ValueError) as e:
      raise InputError(f'{path} is not a drift reference ({one_line(e)}): export the model '
                       'again', key='path') from None

  def to_json(self) -> dict:
    """A small JSON summary: examples, accuracy, ECE, the class distribution (proportions),
    the summary width k and the histogram of the top probability sample."""
    total = max(int(self.class_counts.sum()), 1)
    return {'examples': self.examples, 'accuracy': self.accuracy,
            'expected_calibration_error': self.expected_calibration_error,
            'class_distribution': [int(c) / total for c in self.class_counts],
            'components': self.components,
            'confidence_histogram': histogram(self.top_probability)}


def fit_reference(probabilities, inputs, labels, *, components: int = SUMMARY_COMPONENTS,
                  sample_size: int = 2000, seed: int = 0) -> Reference:
  """The reference of a validation split: probabilities (N, C) softmax outputs, inputs
  (N, *input shape) of any real dtype (pixels 0..255, say), labels (N,) int class ids.

  Class counts, accuracy and ECE use all N rows. The rows are shuffled with
  np.random.default_rng(seed).permutation(N): the first n = min(sample_size, N - N // 2) are
  the sample kept (top probabilities and summaries); the principal axes are fitted (numpy SVD)
  on the next min(sample_size, N - n), disjoint from it. k = min(components, D, those rows).
  """
  probabilities = _probabilities(probabilities)
  n_rows, num_classes = probabilities.shape
  if n_rows < 2:
    raise InputError(f'a drift reference needs at least 2 validation examples, got {n_rows}',
                     key='probabilities')
  labels = _class_ids(labels, 'labels', num_classes)
  inputs = np.asarray(inputs)
  if inputs.dtype.kind not in 'biuf' or inputs.ndim == 0:
    raise InputError(f'inputs must be an (N, ...) array of numbers, got dtype {inputs.dtype} '
                     f'shape {list(inputs.shape)}', key='inputs')
  if len(labels) != n_rows or len(inputs) != n_rows:
    raise InputError(f'probabilities, inputs and labels must have one row per example, got '
                     f'{n_rows}, {len(inputs)} and {len(labels)}', key='inputs')
  if not isinstance(components, int) or components < 1:
    raise InputError(f'components must be a positive int, got {components!r}', key='components')
  if not isinstance(sample_size, int) or sample_size < 1:
    raise InputError(f'sample_size must be a positive int, got {sample_size!r}',
                     key='sample_size')
  order = np.random.default_rng(seed).permutation(n_rows)
  kept = min(sample_size, n_rows - n_rows // 2)
  sample, fit_rows = order[:kept], order[kept:kept + sample_size]
  # Only the rows used are flattened to float64: a whole split may not fit in memory twice.
  fit = _flat(inputs[fit_rows])
  mean = fit.mean(0)
  _, _, axes = np.linalg.svd(fit - mean, full_matrices=False)
  axes = axes[:min(components, axes.shape[0])]
  # Each axis signed so its largest entry is positive (as sklearn's svd_flip): repeatable.
  axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])[:, None]
  predicted = probabilities.argmax(1)
  return Reference(
      class_counts=np.bincount(predicted, minlength=num_classes),
      top_probability=probabilities[sample].max(1),
      summary_mean=mean, summary_components=axes,
      summaries=(_flat(inputs[sample]) - mean) @ axes.T,
      accuracy=float(np.mean(predicted == labels)),
      expected_calibration_error=expected_calibration_error(probabilities, labels),
      examples=n_rows)


def expected_calibration_error(probabilities, labels, bins: int = 15) -> float:
  """ECE of probabilities (N, C) against labels (N,) int: confidence (top probability) in equal
  bins over (0, 1], the sum over bins of |accuracy - mean confidence| x the bin's share."""
  probabilities = _probabilities(probabilities)
  labels = _class_ids(labels, 'labels', probabilities.shape[1])
  if len(labels) != len(probabilities) or len(labels) == 0:
    raise InputError(f'probabilities and labels need the same number of rows (at least 1), '
                     f'got {len(probabilities)} and {len(labels)}', key='labels')
  if not isinstance(bins, int) or bins < 1:
    raise InputError(f'bins must be a positive int, got {bins!r}', key='bins')
  confidence = probabilities.max(1)
  correct = probabilities.argmax(1) == labels
  edges = np.linspace(0.0, 1.0, bins + 1)
  # side='left' puts c in bin b when edges[b] < c <= edges[b + 1]; 0 joins the first bin.
  index = np.clip(np.searchsorted(edges, confidence, side='left') - 1, 0, bins - 1)
  count = np.bincount(index, minlength=bins)
  gap = np.abs(np.bincount(index, correct, bins) - np.bincount(index, confidence, bins))
  # Per bin |acc - conf| * count / N == |sum(correct) - sum(confidence)| / N.
  return float(gap[count > 0].sum() / len(labels))


def histogram(values, bins: int = CONFIDENCE_BINS) -> dict:
  """values (n,) in [0, 1] -> {'edges': bins + 1 floats over 0..1, 'counts': bins ints}
  (np.histogram over range (0, 1); values outside it are not counted)."""
  counts, edges = np.histogram(np.asarray(values, np.float64), bins=bins, range=(0.0, 1.0))
  return {'edges': [float(e) for e in edges], 'counts': [int(c) for c in counts]}


def window_tests(reference: Reference, predicted, top_probability, summaries, *,
                 alpha: float = 0.05, correction: str = 'bonferroni') -> dict:
  """Whether a window of W served predictions drifted from `reference`: predicted (W,) int
  class ids, top_probability (W,) float, summaries (W, k) float (`reference.summarize`).

  Tests, m = k + 2 in all: 'predicted_class', chi-squared on the 2 x C table of reference and
  window class counts (classes at 0 in both dropped; one class left: statistic 0, p 1);
  'top_probability' and 'summary_0'.. 'summary_{k-1}', two-sample Kolmogorov-Smirnov against
  the reference's sample. `correction` 'bonferroni': a test drifted when p < alpha / m
  (adjusted p = min(p m, 1)); 'fdr': when its Benjamini-Hochberg adjusted p < alpha.

  -> {'size': W, 'alpha', 'correction', 'drifted': any test drifted, 'tests': [{'name',
  'kind': 'chi2' | 'ks', 'statistic', 'p_value', 'adjusted_p_value', 'drifted'}, ...]}
  """
  if correction not in CORRECTIONS:
    raise InputError(f'correction must be one of {", ".join(CORRECTIONS)}, got {correction!r}',
                     key='correction')
  if not 0 < alpha < 1:
    raise InputError(f'alpha is a significance level in (0, 1), got {alpha}', key='alpha')
  num_classes, k = len(reference.class_counts), reference.components
  predicted = _class_ids(predicted, 'predicted', num_classes)
  size = len(predicted)
  if size == 0:
    raise InputError('the window holds no predictions: test a window of at least one',
                     key='predicted')
  top_probability = _finite(top_probability, 'top_probability', (size,))
  summaries = _finite(summaries, 'summaries', (size, k))

  table = np.stack([reference.class_counts, np.bincount(predicted, minlength=num_classes)])
  table = table[:, table.sum(0) > 0]
  if table.shape[1] < 2:  # One class in both: nothing to compare, no evidence of drift.
    chi2 = (0.0, 1.0)
  else:
    result = scipy.stats.chi2_contingency(table)
    chi2 = (result.statistic, result.pvalue)
  tests = [('predicted_class', 'chi2', *chi2),
           ('top_probability', 'ks', *_ks(reference.top_probability, top_probability))]
  tests += [(f'summary_{j}', 'ks', *_ks(reference.summaries[:, j], summaries[:, j]))
            for j in range(k)]

  p_values = np.array([t[3] for t in tests], np.float64)
  m = len(p_values)
  if correction == 'bonferroni':
    adjusted = np.minimum(p_values * m, 1.0)
    drifted = p_values < alpha / m
  else:
    adjusted = scipy.stats.false_discovery_control(p_values)
    drifted = adjusted < alpha
  rows = [{'name': name, 'kind': kind, 'statistic': float(statistic), 'p_value': float(p),
           'adjusted_p_value': float(a), 'drifted': bool(d)}
          for (name, kind, statistic, p), a, d in zip(tests, adjusted, drifted)]
  return {'size': size, 'alpha': float(alpha), 'correction': correction,
          'drifted': bool(drifted.any()), 'tests': rows}


def live_quality(predicted, labels, num_classes: int, *, confidence: float = 0.95) -> dict:
  """Quality on the labelled feedback: predicted (n,) and labels (n,) class ids.

  -> {'labels': n, 'accuracy', 'accuracy_interval': [low, high] (Wilson score interval at
  `confidence`), 'macro_f1' (mean per-class F1 over the classes in labels or predictions, as
  sklearn's f1_score(average='macro')), 'confusion': num_classes x num_classes counts, rows the
  true label, columns the prediction}. With n == 0 the three scores are None.
  """
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise InputError(f'num_classes must be a positive int, got {num_classes!r}',
                     key='num_classes')
  if not 0 < confidence < 1:
    raise InputError(f'confidence is a level in (0, 1), got {confidence}', key='confidence')
  num_classes = int(num_classes)
  predicted = _class_ids(predicted, 'predicted', num_classes)
  labels = _class_ids(labels, 'labels', num_classes)
  if len(predicted) != len(labels):
    raise InputError(f'predicted and labels must pair up, got {len(predicted)} and '
                     f'{len(labels)}', key='labels')
  n = len(labels)
  confusion = np.bincount(labels * num_classes + predicted,
                          minlength=num_classes * num_classes).reshape(num_classes, num_classes)
  result = {'labels': n, 'accuracy': None, 'accuracy_interval': None, 'macro_f1': None,
            'confusion': confusion.tolist()}
  if n == 0:
    return result
  correct = int(np.trace(confusion))
  interval = scipy.stats.binomtest(correct, n).proportion_ci(confidence, method='wilson')
  tp = np.diag(confusion)
  # 2 tp / (2 tp + fp + fn) = 2 tp / (row + column): never 0 / 0 for a class that appears.
  appears = (confusion.sum(0) + confusion.sum(1)) > 0
  f1 = 2 * tp[appears] / (confusion.sum(0) + confusion.sum(1))[appears]
  result.update(accuracy=correct / n, macro_f1=float(f1.mean()),
                accuracy_interval=[float(interval.low), float(interval.high)])
  return result


def _ks(reference, window) -> tuple[float, float]:
  """Two-sample Kolmogorov-Smirnov (two-sided, scipy's default method): statistic, p."""
  result = scipy.stats.ks_2samp(reference, window)
  return result.statistic, result.pvalue


def _probabilities(probabilities) -> np.ndarray:
  """(N, C) finite float64, or InputError."""
  probabilities = np.asarray(probabilities)
  if (probabilities.ndim != 2 or probabilities.shape[1] < 1
      or probabilities.dtype.kind not in 'iuf'):
    raise InputError(f'probabilities must be an (N, classes) array of numbers, got shape '
                     f'{list(probabilities.shape)} dtype {probabilities.dtype}',
                     key='probabilities')
  probabilities = probabilities.astype(np.float64)
  if not np.all(np.isfinite(probabilities)):
    raise InputError('probabilities hold NaN or infinite values: check the model outputs',
                     key='probabilities')
  return probabilities


def _class_ids(values, name: str, num_classes: int) -> np.ndarray:
  """(n,) int64 class ids in 0..num_classes-1, or InputError naming `name`."""
  values = np.asarray(values)
  if values.size == 0 and values.ndim == 1:
    return values.astype(np.int64)  # [] comes out of np.asarray as float64.
  if values.ndim != 1 or values.dtype.kind not in 'iu':
    raise InputError(f'{name} must be a 1-D array of int class ids, got shape '
                     f'{list(values.shape)} dtype {values.dtype}', key=name)
  if values.min() < 0 or values.max() >= num_classes:
    raise InputError(f'{name} holds {values.min() if values.min() < 0 else values.max()}: class '
                     f'ids are in 0..{num_classes - 1}', key=name)
  return values.astype(np.int64)


def _finite(values, name: str, shape: tuple) -> np.ndarray:
  """float64 of exactly `shape` with finite values, or InputError naming `name`."""
  values = np.asarray(values)
  if values.shape != shape or values.dtype.kind not in 'biuf':
    raise InputError(f'{name} has shape {list(values.shape)} dtype {values.dtype}: expected '
                     f'{list(shape)} numbers', key=name)
  values = values.astype(np.float64)
  if not np.all(np.isfinite(values)):
    raise InputError(f'{name} holds NaN or infinite values', key=name)
  return values


def _flat(inputs: np.ndarray) -> np.ndarray:
  """(B, *shape) -> (B, D) float64, or InputError on NaN or infinite values."""
  flat = inputs.reshape(len(inputs), -1).astype(np.float64)
  if not np.all(np.isfinite(flat)):
    raise InputError('inputs hold NaN or infinite values', key='inputs')
  return flat
