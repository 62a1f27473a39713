"""Watching a served model: `export` keeps a drift reference of the validation split beside the
artifact; the server records each prediction's top probability and input summary; GET
/v1/monitor and the gauges of /metrics report drift per window and live quality on feedback,
with every figure equal to scipy / sklearn / numpy recomputing it from the store's rows."""
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from fastapi.testclient import TestClient

from deploy_run import trained_once
from jaxmodels import console
from jaxmodels.runs import TrainedRun
from jaxmodels.serve import artifact, drift
from jaxmodels.serve.app import make_app
from jaxmodels.serve.prediction_store import PredictionStore
from jaxmodels.tasks.registry import load_reference_split

WINDOW = 20


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """(a repository with one version, the run's test images and labels, the run's workdir)."""
  workdir, root = trained_once(tmp_path_factory)
  repo = tmp_path_factory.mktemp('monitored') / 'repo'
  assert console.main(['export', workdir, '--repo', str(repo), '--platforms', 'cpu']) == 0
  test = np.load(root / 'data' / 'test.npz')
  return repo, test['image'], test['label'], workdir


def test_export_keeps_the_validation_reference(exported):
  repo, _, _, workdir = exported
  model = artifact.Artifact(str(repo / '1'))
  entry = model.manifest['reference']
  reference = drift.Reference.load(str(repo / '1' / entry['file']))
  split, (inputs, labels) = load_reference_split(TrainedRun.load(workdir))
  probabilities = artifact.softmax(model.logits(inputs))
  assert split == entry['split'] == 'validation' and reference.examples == len(labels)
  np.testing.assert_array_equal(reference.class_counts,
                                np.bincount(probabilities.argmax(-1), minlength=8))
  assert reference.accuracy == pytest.approx(np.mean(probabilities.argmax(-1) == labels))
  assert entry['accuracy'] == pytest.approx(reference.accuracy)
  # Every top probability of the sample is one of the model's on the split.
  assert np.isin(np.round(reference.top_probability, 5),
                 np.round(probabilities.max(-1), 5)).all()


def _flip(images):
  return (255 - images.astype(np.int64)).astype(np.uint8)  # White on black -> black on white.


def test_monitor_reports_drift_and_live_quality_equal_to_scipy(exported, tmp_path):
  repo, images, labels, _ = exported
  store_path = tmp_path / 'monitor.db'
  with TestClient(make_app(str(repo), max_batch_size=8, max_wait_ms=0, store=str(store_path),
                           monitor_window=WINDOW)) as client:
    answers = []
    stream = np.concatenate([images[:3 * WINDOW], _flip(images[:2 * WINDOW])])
    for start in range(0, len(stream), 4):  # 3 windows as trained, then 2 inverted.
      response = client.post('/predict', json={'inputs': stream[start:start + 4].tolist()})
      assert response.status_code == 200, response.text
      answers += response.json()['prediction_ids']
    truth = np.concatenate([labels[:3 * WINDOW], labels[:2 * WINDOW]])
    labelled = np.arange(0, len(answers), 3)
    assert client.post('/v1/feedback', json={'feedback': [
        {'prediction_id': answers[i], 'label': int(truth[i])} for i in labelled]}).status_code == 200
    app_store = client.app.state.store
    app_store.flush()
    document = client.get('/v1/monitor').json()
    metrics_text = client.get('/metrics').text

  (version,) = document['versions']
  assert version['version'] == 1 and version['role'] == 'champion'
  history = version['drift']['history']
  assert [w['size'] for w in history] == [WINDOW] * 5
  assert [w['drifted'] for w in history] == [False, False, False, True, True]

  # The newest window, recomputed from the store's rows with scipy directly.
  store = PredictionStore(str(store_path))
  rows = store.predictions(version=1)
  reference = drift.Reference.load(str(repo / '1' / 'reference.npz'))
  newest = rows[-WINDOW:]
  confidence = np.array([r['top_k'][0]['probability'] for r in newest])
  summaries = reference.summarize(stream[-WINDOW:].astype(np.float32))
  np.testing.assert_allclose(np.array([r['summary'] for r in newest]), summaries, atol=1e-6)
  tests = {t['name']: t for t in version['drift']['current']['tests']}
  ks = scipy.stats.ks_2samp(reference.top_probability, confidence)
  assert tests['top_probability']['statistic'] == pytest.approx(ks.statistic, abs=1e-6)
  assert tests['top_probability']['p_value'] == pytest.approx(ks.pvalue, abs=1e-6)
  for j in range(reference.summaries.shape[1]):
    ks = scipy.stats.ks_2samp(reference.summaries[:, j], summaries[:, j])
    assert tests[f'summary_{j}']['p_value'] == pytest.approx(ks.pvalue, abs=1e-6)
  counts = np.bincount([r['predicted'] for r in newest], minlength=8)
  table = np.stack([reference.class_counts, counts])
  chi2 = scipy.stats.chi2_contingency(table[:, table.sum(0) > 0])
  assert tests['predicted_class']['statistic'] == pytest.approx(chi2.statistic, abs=1e-6)
  assert tests['predicted_class']['p_value'] == pytest.approx(chi2.pvalue, abs=1e-6)
  assert version['confidence']['mean'] == pytest.approx(confidence.mean(), abs=1e-9)

  # Live quality on the feedback, against sklearn and the Wilson formula.
  predicted = np.array([rows[i]['predicted'] for i in labelled])
  quality = version['quality']
  assert quality['labels'] == len(labelled)
  assert quality['accuracy'] == pytest.approx(np.mean(predicted == truth[labelled]))
  assert quality['macro_f1'] == pytest.approx(
      sklearn.metrics.f1_score(truth[labelled], predicted, average='macro'))
  np.testing.assert_array_equal(quality['confusion'], sklearn.metrics.confusion_matrix(
      truth[labelled], predicted, labels=range(8)))
  n, p, z = len(labelled), quality['accuracy'], scipy.stats.norm.ppf(0.975)
  centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * np.sqrt(
      p * (1 - p) / n + z * z / (4 * n * n))
  np.testing.assert_allclose(quality['accuracy_interval'], [centre - half, centre + half],
                             atol=1e-9)

  # The same figures as Prometheus gauges.
  gauge = lambda name: float(next(line.split()[-1] for line in metrics_text.splitlines()
                                  if line.startswith(name)))
  assert gauge('jaxmodels_live_accuracy{version="1"}') == pytest.approx(quality['accuracy'])
  assert gauge('jaxmodels_feedback_labels{version="1"}') == quality['labels']
  assert gauge('jaxmodels_drift_detected{version="1"}') == 1
  assert gauge('jaxmodels_drift_p_value{version="1",test="top_probability"}') == pytest.approx(
      tests['top_probability']['p_value'], rel=1e-6)
  store.close()


def test_monitor_without_a_store_or_with_a_failing_one_keeps_serving(exported, tmp_path):
  repo, images, _, _ = exported
  with TestClient(make_app(str(repo), max_batch_size=4, max_wait_ms=0, store='off')) as client:
    answer = client.get('/v1/monitor')
    assert answer.status_code == 409 and 'records no predictions' in answer.json()['error']
    assert client.post('/predict', json={'inputs': images[:1].tolist()}).status_code == 200
  with TestClient(make_app(str(repo), max_batch_size=4, max_wait_ms=0,
                           store=str(tmp_path / 'gone.db'))) as client:
    client.app.state.store.engine.dispose()
    (tmp_path / 'gone.db').unlink()
    (tmp_path / 'gone.db').mkdir()  # The file is now a directory: every read fails.
    answer = client.get('/v1/monitor')
    assert answer.status_code == 503 and 'cannot be read' in answer.json()['error']
    assert client.get('/metrics').status_code == 200
    assert client.post('/predict', json={'inputs': images[:1].tolist()}).status_code == 200


def test_monitor_arguments_are_checked(exported):
  with pytest.raises(Exception, match='monitor_window must be at least 2'):
    make_app(str(exported[0]), monitor_window=1)
