"""The statistics of model monitoring (jaxmodels.serve.drift), checked against independent
computations: scipy.stats called directly for every test, numpy recomputations of the
Bonferroni and Benjamini-Hochberg decisions and of the ECE, sklearn for macro-F1, the confusion
matrix and the principal axes, the closed-form Wilson interval (and statsmodels when installed);
then the false alarm rate on windows from the reference's own distribution, and shifted inputs
flagged in every window."""
import json
import os

import numpy as np
import pytest
import scipy.stats
from sklearn.decomposition import PCA
from sklearn.metrics import confusion_matrix, f1_score

from jaxmodels.errors import InputError
from jaxmodels.serve import drift

CLASSES = 10
SIDE = 28  # Synthetic 'images' of SIDE x SIDE pixels.


def _patterns():
  """The fixed distribution of the synthetic images: a mean image with a left-right gradient
  (so a rotation moves it), 16 smooth blobs (SIDE * SIDE,) and their coefficients' scales."""
  rng = np.random.default_rng(1234)
  y, x = np.mgrid[:SIDE, :SIDE]
  mean = 60.0 + 100.0 * x / (SIDE - 1) + 20.0 * (y < SIDE // 2)
  centres, widths = rng.uniform(4, SIDE - 4, (16, 2)), rng.uniform(2.5, 6.0, 16)
  blobs = np.exp(-((y[None] - centres[:, 0, None, None]) ** 2
                   + (x[None] - centres[:, 1, None, None]) ** 2) / (2 * widths[:, None, None] ** 2))
  return mean.ravel(), blobs.reshape(16, -1), np.linspace(40.0, 6.0, 16)


MEAN_IMAGE, BLOBS, SCALES = _patterns()
NOISE = 8.0  # Per-pixel noise std.


def draw(rng, n: int, concentration: float = 0.4):
  """n draws of the synthetic model: probabilities (n, CLASSES) float64 (Dirichlet softmax
  outputs), labels (n,) int64 drawn from them (a calibrated model), images (n, SIDE, SIDE)
  float64 pixels (mean + blobs + noise)."""
  probabilities = rng.dirichlet(np.full(CLASSES, concentration), n)
  labels = (rng.random((n, 1)) > probabilities.cumsum(1)).sum(1).clip(0, CLASSES - 1)
  images = (MEAN_IMAGE + (rng.normal(size=(n, 16)) * SCALES) @ BLOBS
            + rng.normal(0, NOISE, (n, SIDE * SIDE)))
  return probabilities, labels, images.reshape(n, SIDE, SIDE)


def window_of(reference, probabilities, images) -> dict:
  return drift.window_tests(reference, probabilities.argmax(1), probabilities.max(1),
                            reference.summarize(images))


@pytest.fixture(scope='module')
def population():
  """A reference fitted on 5000 draws, and the per-pixel std of those draws (SIDE, SIDE)."""
  probabilities, labels, images = draw(np.random.default_rng(0), 5000)
  return drift.fit_reference(probabilities, images, labels), images.std(0)


def small_reference(rng, n: int = 1500, classes: int = 6, shape=(6, 6)):
  """A reference on random data whose last class is never predicted (its column is tiny)."""
  probabilities = rng.dirichlet(np.ones(classes), n)
  probabilities[:, -1] = 1e-6
  labels = rng.integers(0, classes, n)
  inputs = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
  return drift.fit_reference(probabilities, inputs, labels, components=4, sample_size=600)


def hand_bh(p_values: np.ndarray) -> np.ndarray:
  """Benjamini-Hochberg adjusted p-values in numpy: p_(i) m / i, running minimum from the top."""
  m = len(p_values)
  order = np.argsort(p_values)
  scaled = p_values[order] * m / np.arange(1, m + 1)
  adjusted = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1.0)
  out = np.empty(m)
  out[order] = adjusted
  return out


def test_every_test_equals_scipy_called_directly():
  rng = np.random.default_rng(1)
  reference = small_reference(rng)
  classes, k = len(reference.class_counts), reference.components
  for shift in (0.0, 0.3, 3.0):
    weights = np.r_[0.4 + shift / 6, np.full(classes - 2, (0.6 - shift / 6) / (classes - 2))]
    predicted = rng.choice(classes - 1, 150, p=weights)
    top = rng.beta(2 + 4 * shift, 2, 150)
    summaries = rng.normal(shift, 1.0, (150, k)) * reference.summaries.std(0)
    report = drift.window_tests(reference, predicted, top, summaries)
    tests = {t['name']: t for t in report['tests']}
    assert [t['name'] for t in report['tests']] == (
        ['predicted_class', 'top_probability'] + [f'summary_{j}' for j in range(k)])

    table = np.stack([reference.class_counts, np.bincount(predicted, minlength=classes)])
    assert (table[:, -1] == 0).all()  # The class at 0 in both rows is dropped, not tested.
    expected = {'predicted_class': scipy.stats.chi2_contingency(table[:, :-1]),
                'top_probability': scipy.stats.ks_2samp(reference.top_probability, top)}
    for j in range(k):
      expected[f'summary_{j}'] = scipy.stats.ks_2samp(reference.summaries[:, j], summaries[:, j])
    for name, result in expected.items():
      assert tests[name]['kind'] == ('chi2' if name == 'predicted_class' else 'ks')
      np.testing.assert_allclose(tests[name]['statistic'], result.statistic, rtol=1e-6, atol=1e-9)
      np.testing.assert_allclose(tests[name]['p_value'], result.pvalue, rtol=1e-6, atol=1e-12)
    assert report['size'] == 150 and report['alpha'] == 0.05
    json.dumps(report)  # Plain JSON types throughout.


def test_one_class_in_both_rows_is_no_evidence_of_drift():
  rng = np.random.default_rng(2)
  n = 50
  probabilities = np.tile([0.1, 0.9, 0.0], (n, 1))
  reference = drift.fit_reference(probabilities, rng.normal(size=(n, 3)), np.ones(n, int))
  report = drift.window_tests(reference, np.ones(10, int), np.full(10, 0.9),
                              reference.summaries[:10])
  chi2 = report['tests'][0]
  assert (chi2['statistic'], chi2['p_value'], chi2['drifted']) == (0.0, 1.0, False)


def test_bonferroni_and_fdr_decisions_equal_a_numpy_recomputation():
  rng = np.random.default_rng(3)
  reference = small_reference(rng)
  k = reference.components
  decisions = {'bonferroni': [], 'fdr': []}
  for shift in np.linspace(0.0, 0.6, 13):  # From no drift to drift in some summaries.
    predicted = rng.integers(0, len(reference.class_counts) - 1, 120)
    top = rng.choice(reference.top_probability, 120)
    summaries = (rng.normal(size=(120, k)) + shift * np.arange(k) / k) * reference.summaries.std(0)
    for correction in ('bonferroni', 'fdr'):
      report = drift.window_tests(reference, predicted, top, summaries, alpha=0.05,
                                  correction=correction)
      assert report['correction'] == correction
      p = np.array([t['p_value'] for t in report['tests']])
      adjusted = np.array([t['adjusted_p_value'] for t in report['tests']])
      drifted = np.array([t['drifted'] for t in report['tests']])
      m = len(p)
      if correction == 'bonferroni':
        np.testing.assert_allclose(adjusted, np.minimum(p * m, 1.0), rtol=1e-12)
        np.testing.assert_array_equal(drifted, p < 0.05 / m)
      else:
        np.testing.assert_allclose(adjusted, hand_bh(p), rtol=1e-12)
        np.testing.assert_array_equal(drifted, hand_bh(p) < 0.05)
      assert report['drifted'] == bool(drifted.any())
      decisions[correction].append(report['drifted'])
  for correction, seen in decisions.items():  # Both outcomes happen: the check has teeth.
    assert any(seen) and not all(seen), (correction, seen)


def test_expected_calibration_error_equals_a_loop():
  rng = np.random.default_rng(4)
  probabilities = rng.dirichlet(np.full(4, 0.5), 300)
  # Confidences exactly on bin edges, and 1.
  probabilities[:4] = [[0.6, 0.4, 0, 0], [0.2, 0.2, 0.2, 0.4], [1, 0, 0, 0], [0.5, 0.5, 0, 0]]
  labels = rng.integers(0, 4, 300)
  for bins in (5, 15):
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    edges, ece = np.linspace(0, 1, bins + 1), 0.0
    for low, high in zip(edges[:-1], edges[1:]):
      inside = (confidence > low) & (confidence <= high)
      if inside.any():
        ece += abs(correct[inside].mean() - confidence[inside].mean()) * inside.mean()
    assert drift.expected_calibration_error(probabilities, labels, bins) == pytest.approx(
        ece, abs=1e-12)


def test_live_quality_equals_sklearn_and_the_wilson_formula():
  rng = np.random.default_rng(5)
  classes, n = 7, 400
  labels = rng.integers(0, 5, n)  # Class 5 only predicted, class 6 never seen.
  predicted = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 6, n))
  quality = drift.live_quality(predicted, labels, classes)
  assert quality['labels'] == n
  assert quality['macro_f1'] == pytest.approx(
      f1_score(labels, predicted, average='macro', zero_division=0.0), abs=1e-12)
  np.testing.assert_array_equal(quality['confusion'],
                                confusion_matrix(labels, predicted, labels=range(classes)))
  assert quality['accuracy'] == pytest.approx(np.mean(labels == predicted), abs=1e-15)
  json.dumps(quality)

  for correct, total, confidence in ((int(np.sum(labels == predicted)), n, 0.95), (0, 12, 0.9),
                                     (12, 12, 0.99), (3, 40, 0.95)):
    predicted = np.r_[np.zeros(correct, int), np.ones(total - correct, int)]
    interval = drift.live_quality(predicted, np.zeros(total, int), 2,
                                  confidence=confidence)['accuracy_interval']
    z, p = scipy.stats.norm.ppf(0.5 + confidence / 2), correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    np.testing.assert_allclose(interval, [centre - half, centre + half], rtol=1e-9, atol=1e-12)
    try:
      from statsmodels.stats.proportion import proportion_confint
    except ImportError:
      continue
    np.testing.assert_allclose(
        interval, proportion_confint(correct, total, 1 - confidence, method='wilson'), rtol=1e-9)


def test_live_quality_of_no_labels():
  quality = drift.live_quality([], [], 3)
  assert quality == {'labels': 0, 'accuracy': None, 'accuracy_interval': None, 'macro_f1': None,
                     'confusion': [[0, 0, 0]] * 3}


def test_principal_axes_equal_sklearn_on_the_documented_sample():
  rng = np.random.default_rng(6)
  probabilities, labels, images = draw(rng, 601)
  pixels = np.clip(images, 0, 255).astype(np.uint8)
  reference = drift.fit_reference(probabilities, pixels, labels, components=5, seed=7)
  order = np.random.default_rng(7).permutation(601)
  kept, fit_rows = order[:301], order[301:]  # n = min(2000, N - N // 2), then the rest.
  flat = pixels.reshape(601, -1).astype(np.float64)

  axes = reference.summary_components
  assert axes.shape == (5, SIDE * SIDE) and axes.dtype == np.float64
  np.testing.assert_allclose(axes @ axes.T, np.eye(5), atol=1e-10)
  pca = PCA(n_components=5, svd_solver='full').fit(flat[fit_rows])
  np.testing.assert_allclose(reference.summary_mean, pca.mean_, rtol=1e-12)
  signs = np.sign(np.sum(axes * pca.components_, 1))
  np.testing.assert_allclose(axes, pca.components_ * signs[:, None], atol=1e-8)
  variance = ((flat[fit_rows] - pca.mean_) @ axes.T).var(0, ddof=1)
  np.testing.assert_allclose(variance, pca.explained_variance_, rtol=1e-8)
  assert variance[0] == variance.max() and np.all(np.diff(variance) <= 0)
  assert reference.summaries.var(0).argmax() == 0  # The held-out sample agrees.

  np.testing.assert_allclose(reference.top_probability, probabilities[kept].max(1), rtol=0)
  np.testing.assert_allclose(reference.summaries, (flat[kept] - pca.mean_) @ axes.T, rtol=1e-10,
                             atol=1e-9)
  batch = pixels[:9]
  np.testing.assert_allclose(reference.summarize(batch),
                             (batch.reshape(9, -1).astype(np.float64) - reference.summary_mean)
                             @ axes.T, rtol=1e-12, atol=1e-9)
  assert reference.summarize(batch[:0]).shape == (0, 5)
  assert reference.class_counts.tolist() == np.bincount(probabilities.argmax(1),
                                                         minlength=CLASSES).tolist()
  assert reference.accuracy == pytest.approx(np.mean(probabilities.argmax(1) == labels))
  assert reference.expected_calibration_error == pytest.approx(
      drift.expected_calibration_error(probabilities, labels))
  assert reference.examples == 601


def test_summary_width_is_at_most_the_input_size():
  rng = np.random.default_rng(8)
  probabilities = rng.dirichlet(np.ones(3), 40)
  reference = drift.fit_reference(probabilities, rng.normal(size=(40, 2, 2)),
                                  rng.integers(0, 3, 40))
  assert reference.summary_components.shape == (4, 4) and reference.summaries.shape == (20, 4)


def test_save_and_load_round_trip(tmp_path):
  rng = np.random.default_rng(9)
  reference = small_reference(rng)
  path = str(tmp_path / 'drift_reference')  # No .npz suffix: written at exactly this path.
  reference.save(path)
  reference.save(path)  # Over an existing file.
  assert os.listdir(tmp_path) == ['drift_reference']
  loaded = drift.Reference.load(path)
  for field in ('class_counts', 'top_probability', 'summary_mean', 'summary_components',
                'summaries'):
    np.testing.assert_array_equal(getattr(loaded, field), getattr(reference, field))
    assert getattr(loaded, field).dtype == getattr(reference, field).dtype
  assert (loaded.accuracy, loaded.expected_calibration_error, loaded.examples) == (
      reference.accuracy, reference.expected_calibration_error, reference.examples)
  assert loaded.to_json() == reference.to_json()
  with np.load(path, allow_pickle=False) as archive:  # Nothing in it needs pickle.
    assert sorted(archive.files) == sorted(
        ['class_counts', 'top_probability', 'summary_mean', 'summary_components', 'summaries',
         'accuracy', 'expected_calibration_error', 'examples'])


def test_to_json_is_a_small_summary():
  rng = np.random.default_rng(10)
  reference = small_reference(rng)
  summary = json.loads(json.dumps(reference.to_json()))
  assert set(summary) == {'examples', 'accuracy', 'expected_calibration_error',
                          'class_distribution', 'components', 'confidence_histogram'}
  assert summary['components'] == 4 and summary['examples'] == 1500
  np.testing.assert_allclose(summary['class_distribution'],
                             reference.class_counts / reference.class_counts.sum())
  counts, edges = np.histogram(reference.top_probability, bins=drift.CONFIDENCE_BINS, range=(0, 1))
  assert summary['confidence_histogram'] == {'edges': edges.tolist(), 'counts': counts.tolist()}


def test_an_unreadable_reference_file_is_an_input_error_naming_it(tmp_path):
  good = tmp_path / 'good.npz'
  small_reference(np.random.default_rng(11)).save(str(good))
  garbage, truncated, partial, array = (tmp_path / name for name in (
      'garbage', 'truncated', 'partial', 'array.npy'))
  np.save(array, np.arange(3))
  garbage.write_bytes(b'not a reference at all\n' * 10)
  truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
  with open(partial, 'wb') as f:
    np.savez(f, class_counts=np.arange(3))
  for path in (garbage, truncated, partial, array, tmp_path / 'missing.npz', tmp_path):
    with pytest.raises(InputError) as error:
      drift.Reference.load(str(path))
    assert str(path) in str(error.value) and '\n' not in str(error.value)
    assert 'pickle' not in str(error.value)  # No advice to load it unsafely.
    assert error.value.key == 'path'


def test_bad_inputs_are_input_errors():
  rng = np.random.default_rng(12)
  reference = small_reference(rng)
  probabilities, labels = rng.dirichlet(np.ones(3), 10), rng.integers(0, 3, 10)
  inputs = rng.normal(size=(10, 4))
  nan = probabilities.copy()
  nan[3, 1] = np.nan
  summaries = reference.summaries[:5]
  calls = [
      lambda: drift.fit_reference(probabilities[:1], inputs[:1], labels[:1]),
      lambda: drift.fit_reference(probabilities, inputs[:9], labels),
      lambda: drift.fit_reference(probabilities, inputs, labels[:9]),
      lambda: drift.fit_reference(nan, inputs, labels),
      lambda: drift.fit_reference(probabilities, inputs, labels + 3),
      lambda: drift.window_tests(reference, np.zeros(0, int), np.zeros(0), np.zeros((0, 4))),
      lambda: drift.window_tests(reference, np.zeros(5, int), np.zeros(4), summaries),
      lambda: drift.window_tests(reference, np.zeros(5, int), np.zeros(5), summaries[:, :3]),
      lambda: drift.window_tests(reference, np.zeros(5, int), np.zeros(5), summaries,
                                 correction='holm'),
      lambda: drift.window_tests(reference, np.full(5, 9), np.zeros(5), summaries),
      lambda: drift.live_quality([0, 1], [0], 2),
      lambda: drift.live_quality([0, 2], [0, 1], 2),
      lambda: reference.summarize(np.zeros((2, 5, 5))),
  ]
  for call in calls:
    with pytest.raises(InputError) as error:
      call()
    assert '\n' not in str(error.value) and error.value.key


def test_windows_from_the_reference_distribution_rarely_flag_drift(population):
  reference, _ = population
  rng = np.random.default_rng(13)
  windows = [window_of(reference, *draw(rng, 200)[::2]) for _ in range(60)]
  alarms = sum(w['drifted'] for w in windows)
  assert alarms <= 3, f'{alarms} of 60 windows flagged'  # At most 5%.
  # Every test is near uniform under no drift, not just rarely below the threshold.
  p_values = np.array([[t['p_value'] for t in w['tests']] for w in windows])
  assert 0.3 < np.median(p_values[:, 1:]) < 0.7


@pytest.mark.parametrize('shift', ['brightness', 'rotation'])
def test_shifted_inputs_are_flagged_in_every_window(population, shift):
  reference, pixel_std = population
  rng = np.random.default_rng(14)
  for _ in range(5):
    probabilities, _, images = draw(rng, 200)  # The model's outputs do not move.
    images = images + 0.5 * pixel_std if shift == 'brightness' else np.rot90(images, axes=(1, 2))
    report = window_of(reference, probabilities, images)
    assert report['drifted']
    assert any(t['drifted'] for t in report['tests'] if t['name'].startswith('summary_'))


def test_reference_summaries_spread_like_fresh_inputs_even_on_pure_noise():
  # Projected on axes fitted to themselves, 2000 rows of 784 iid pixels spread ~1.6x wider along
  # the top axes than fresh rows do, and every window would be flagged: the kept sample is
  # held out of the fit.
  rng = np.random.default_rng(15)
  noise = lambda n: rng.normal(128.0, 30.0, (n, SIDE, SIDE))
  probabilities = rng.dirichlet(np.ones(CLASSES), 4000)
  reference = drift.fit_reference(probabilities, noise(4000), probabilities.argmax(1))
  ratio = reference.summaries.std(0) / reference.summarize(noise(4000)).std(0)
  assert np.all(np.abs(ratio - 1) < 0.1), ratio
  windows = [window_of(reference, rng.dirichlet(np.ones(CLASSES), 200), noise(200))
             for _ in range(60)]
  assert sum(w['drifted'] for w in windows) <= 6  # Twice the nominal 5%; in-sample: all 60.
