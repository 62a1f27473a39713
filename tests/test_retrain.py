"""`jaxmodels retrain`: a repository's champion trained further on the feedback of its users
(scikit-learn's digits served rotated by 90 degrees), measured the way retrain.json says;
every bad input is one line, exit code 2, and leaves the repository and --out untouched. And
the `InitFrom.inputs` hook: a run started from another keeps that run's normalisation."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from jaxmodels import console
from jaxmodels.data import load_digits
from jaxmodels.runs import TrainedRun
from jaxmodels.serve.artifact import Artifact, top_k
from jaxmodels.serve.model_repository import ModelRepository
from jaxmodels.serve.prediction_store import PredictionStore, new_record
from jaxmodels.tasks import image_classification, runner
from jaxmodels.tasks.extensions import default_config, default_extensions

EXTENSIONS = default_extensions()
FEEDBACK = 300  # Rotated test digits sent back with their labels.


def _train(workdir, data_dir=None, *, init_from='', learning_rate=1e-2, num_steps=150):
  """A small MLP on the 8x8 digits (or the train.npz / test.npz in data_dir)."""
  config = default_config(image_classification.TASK)
  if data_dir:
    config.data.update(name='shifted', source='local', local_dir=str(data_dir))
  else:
    config.data.name = 'digits'
  config.init_from = init_from
  config.model = dict(name='mlp', hidden=(64,), dropout=0.0)
  config.optimizer.update(learning_rate=learning_rate, warmup_epochs=0.0)
  config.train.update(batch_size=64, num_steps=num_steps, log_every_steps=50,
                      eval_batch_size=400, steps_per_dispatch=1, progress=False)
  config.report.num_prediction_images = 4
  runner.run(image_classification.TASK, config, str(workdir), extensions=EXTENSIONS)
  return str(workdir)


def _rotated(count: int):
  """(float32 images (count, 8, 8, 1) as a client sends them, labels): test digits turned."""
  test = load_digits().test_images[:count], load_digits().test_labels[:count]
  return np.rot90(test[0], 1, axes=(1, 2)).astype(np.float32), test[1].astype(np.int32)


def _record(store_path, repo_dir, version, images, labels, *, keep_input=True, num_classes=10):
  """Records the version's answers for `images` into the store, with `labels` as feedback;
  returns the prediction ids."""
  model = Artifact(os.path.join(repo_dir, str(version)))
  answers = top_k(model.logits(images), model.class_names, 3)
  records = [new_record(answer, image.tobytes(), model_version=version, latency_ms=1.0,
                        keep_input=keep_input) for answer, image in zip(answers, images)]
  store = PredictionStore(str(store_path))
  try:
    store.record(records)
    assert store.flush(30)
    store.add_feedback([(r.prediction_id, int(y)) for r, y in zip(records, labels)], num_classes)
  finally:
    store.close()
  return [r.prediction_id for r in records]


def _held_out(prediction_id: str, share: float) -> bool:
  return int.from_bytes(hashlib.sha256(prediction_id.encode()).digest()[:8], 'big') < (
      share * 2.0 ** 64)


def _files(directory) -> dict:
  """{relative path: mtime_ns} of every file under `directory`."""
  return {os.path.relpath(os.path.join(root, name), directory):
          os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(directory) for name in names}


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  """A repository with version 1 (the digits run) and, in REPO/monitor.db, the labels of
  FEEDBACK rotated digits it answered: (repo, run workdir, prediction ids, images, labels)."""
  root = tmp_path_factory.mktemp('retrain')
  run = _train(root / 'run')
  repo = root / 'models'
  assert console.main(['export', run, '--repo', str(repo), '--platforms', 'cpu']) == 0
  images, labels = _rotated(FEEDBACK)
  ids = _record(repo / 'monitor.db', repo, 1, images, labels)
  return repo, run, ids, images, labels


def _retrain(repo, out, *flags):
  return console.main(['retrain', str(repo), '--out', str(out), *map(str, flags)])


def test_retrain_trains_on_feedback_and_reports_what_it_measured(served, tmp_path, capsys):
  repo, run, ids, images, labels = served
  before = _files(repo)
  out = tmp_path / 'candidate'
  assert _retrain(repo, out, '--epochs', 20, '--seed', 3) == 0
  printed = capsys.readouterr().out
  assert f'jaxmodels export {out} --repo {repo}' in printed
  assert _files(repo) == before  # The store is only read.
  report = json.loads((out / 'retrain.json').read_text())

  held = np.array([_held_out(i, 0.3) for i in ids])
  assert report['feedback'] == {
      'labels': FEEDBACK, 'train': int((~held).sum()), 'holdout': int(held.sum()),
      'versions': [1], 'holdout_ids': [i for i, h in zip(ids, held) if h],
      'train_ids': [i for i, h in zip(ids, held) if not h]}
  assert not set(report['feedback']['holdout_ids']) & set(report['feedback']['train_ids'])
  n_train = int((~held).sum())
  assert report['replay'] == {'fraction': 0.5, 'examples': n_train}  # R / (1 - R) = 1.
  assert report['repository'] == os.path.abspath(repo) and report['champion'] == 1
  assert report['store'] == os.path.join(os.path.abspath(repo), 'monitor.db')
  assert report['created_at']

  # The training file: the feedback's training part and as many replayed digits, no held-out
  # example; the test file: the champion run's test split.
  train = np.load(out / 'feedback_data' / 'train.npz')
  assert len(train['label']) == 2 * n_train
  stored = {x.tobytes() for x in train['image']}
  as_stored = images.astype(np.uint8)
  assert all(x.tobytes() in stored for x in as_stored[~held])
  assert not any(x.tobytes() in stored for x in as_stored[held])
  digits = load_digits()
  test = np.load(out / 'feedback_data' / 'test.npz')
  np.testing.assert_array_equal(test['image'], digits.test_images)

  # The numbers, recomputed: the champion's artifact and the new run, each on its own.
  champion = Artifact(str(repo / '1'))
  candidate = TrainedRun.load(str(out))
  assert candidate.card['inputs'] == TrainedRun.load(run).card['inputs']  # init_from's.
  accuracy = lambda logits, y: float(np.mean(np.argmax(np.asarray(logits), -1) == y))
  for name, x, y in (('holdout', images[held], labels[held]),
                     ('test', digits.test_images.astype(np.float32), digits.test_labels)):
    measured = report['evaluation'][name]
    assert measured['examples'] == len(y)
    assert measured['champion_accuracy'] == pytest.approx(accuracy(champion.logits(x), y))
    assert measured['candidate_accuracy'] == pytest.approx(
        accuracy(candidate.apply(candidate.model_inputs(x)), y))
  holdout = report['evaluation']['holdout']
  assert holdout['candidate_accuracy'] > holdout['champion_accuracy'] + 0.2, holdout

  # Without replay: the same split, only the feedback to train on.
  again = tmp_path / 'feedback_only'
  assert _retrain(repo, again, '--replay', 0, '--epochs', 1) == 0
  report = json.loads((again / 'retrain.json').read_text())
  assert report['replay'] == {'fraction': 0.0, 'examples': 0}
  assert report['feedback']['holdout_ids'] == [i for i, h in zip(ids, held) if h]
  assert len(np.load(again / 'feedback_data' / 'train.npz')['label']) == n_train
  assert _files(repo) == before


def _copy(repo, directory, *, store=True):
  """A copy of the repository (without its store unless `store`)."""
  shutil.copytree(repo, directory, ignore=None if store else shutil.ignore_patterns('monitor*'))
  return directory


def _edit_manifest(version_dir, change):
  path = os.path.join(version_dir, 'manifest.json')
  with open(path, encoding='utf-8') as f:
    manifest = json.load(f)
  change(manifest)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(manifest, f)


def _bad_cases(repo, root):
  """(name, repository, extra flags, words of the message) for each bad input."""
  images, labels = _rotated(4)
  bare = _copy(repo, root / 'bare', store=False)
  empty = root / 'empty.db'
  PredictionStore(str(empty)).close()
  no_inputs = root / 'no_inputs.db'
  _record(no_inputs, repo, 1, images, labels, keep_input=False)
  outside = root / 'outside.db'
  _record(outside, repo, 1, images, [12, 1, 2, 3], num_classes=20)
  single = root / 'single.db'
  _record(single, repo, 1, images[:1], labels[:1])
  garbage = root / 'garbage.db'
  garbage.write_bytes(b'these bytes are not a database\n' * 64)

  mixed = _copy(repo, root / 'mixed', store=False)
  names = [f'digit {k}' for k in range(10)]
  ModelRepository(mixed).add_version(lambda d: (shutil.rmtree(d), shutil.copytree(
      mixed / '1', d), _edit_manifest(d, lambda m: m.update(class_names=names))))
  _record(mixed / 'monitor.db', mixed, 1, images, labels)
  _record(mixed / 'monitor.db', mixed, 2, images, labels)

  text = _copy(repo, root / 'text')
  _edit_manifest(text / '1', lambda m: m['run'].update(task='text_classification'))
  return [
      ('no store', bare, [], 'no prediction store at'),
      ('empty store', repo, ['--store', empty], 'no feedback for version 1'),
      ('no logged inputs', repo, ['--store', no_inputs], '--log-inputs 1'),
      ('other classes', mixed, ['--version', 1],
       "version 2, whose classes differ from version 1's"),
      ('label outside the classes', repo, ['--store', outside], 'label 12 of prediction'),
      ('too few labels', repo, ['--store', single], 'at least 2 labels'),
      ('not a database', repo, ['--store', garbage], 'cannot read the prediction store'),
      ('cannot connect', repo, ['--store', 'postgresql://someone:secret@127.0.0.1:9/none'],
       'cannot read the prediction store postgresql://someone:***@127.0.0.1:9/none'),
      ('replay 1', repo, ['--replay', 1], '--replay is a share in [0, 1)'),
      ('negative replay', repo, ['--replay', -0.1], '--replay is a share in [0, 1)'),
      ('holdout 0', repo, ['--holdout', 0], '--holdout is a share in (0, 1)'),
      ('holdout 1', repo, ['--holdout', 1], '--holdout is a share in (0, 1)'),
      ('unknown version', repo, ['--version', 7], 'version 7 is not in'),
      ('not an image classifier', text, [], 'retrain takes image classification runs'),
      ('no versions', root / 'nothing', [], 'holds no versions'),
  ]


def test_bad_inputs_are_one_line_and_write_nothing(served, tmp_path, capsys):
  repo = served[0]
  cases = _bad_cases(repo, tmp_path)
  capsys.readouterr()
  for name, repository, flags, message in cases:
    before = _files(repository) if os.path.isdir(repository) else None
    out = tmp_path / 'out' / name.replace(' ', '_')
    assert _retrain(repository, out, *flags) == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], (name, err)
    assert not out.exists(), name
    if before is None:
      assert not os.path.exists(repository), name
    else:
      assert _files(repository) == before, name

  out = tmp_path / 'taken'
  out.mkdir()
  (out / 'notes.txt').write_text('mine')
  before = _files(repo)
  assert _retrain(repo, out) == 2
  assert 'already exists and is not empty' in capsys.readouterr().err
  assert os.listdir(out) == ['notes.txt'] and _files(repo) == before
  with pytest.raises(SystemExit):  # --out is required.
    console.main(['retrain', str(repo)])


def test_a_run_started_from_another_keeps_its_normalisation(served, tmp_path):
  """Fine-tuned on inverted digits with a vanishing learning rate, the run is the init run:
  the same mean and std in model.json, the same predictions. Without the hook it would
  normalise by the inverted digits' statistics and predict something else."""
  run = served[1]
  digits = load_digits()
  data = tmp_path / 'inverted'
  data.mkdir()
  np.savez(data / 'train.npz', image=255 - digits.train_images, label=digits.train_labels,
           class_names=np.array(digits.class_names))
  np.savez(data / 'test.npz', image=digits.test_images, label=digits.test_labels)
  tuned = _train(tmp_path / 'tuned', data, init_from=run, learning_rate=1e-9, num_steps=1)
  first, second = TrainedRun.load(run), TrainedRun.load(tuned)
  assert second.card['inputs'] == first.card['inputs']
  inverted_mean = float(np.mean(255 - digits.train_images)) / 255  # In [0, 1] units.
  assert abs(second.card['inputs']['mean'][0] - inverted_mean) > 0.2
  predict = lambda r: np.argmax(np.asarray(r.apply(r.model_inputs(digits.test_images))), -1)
  np.testing.assert_array_equal(predict(second), predict(first))


def test_the_gate_refuses_a_worse_retrained_version_and_lets_the_better_one_through(
    served, tmp_path):
  from fastapi.testclient import TestClient

  from jaxmodels.serve.app import make_app
  repo = _copy(served[0], tmp_path / 'gated')
  ModelRepository(repo).pin_state()  # Version 1 serves, whatever is exported next.
  better, worse = tmp_path / 'better', tmp_path / 'worse'
  assert _retrain(repo, better, '--epochs', 20, '--seed', 3, '--replay', 0.8,
                  '--learning-rate', 3e-3) == 0
  # Trained to pieces: a learning rate that wrecks the champion's weights.
  assert _retrain(repo, worse, '--epochs', 3, '--learning-rate', 50) == 0
  for run in (better, worse):  # Versions 2 and 3.
    assert console.main(['export', str(run), '--repo', str(repo), '--platforms', 'cpu']) == 0
  (tmp_path / 'token').write_text('gate-token\n')
  auth = {'Authorization': 'Bearer gate-token'}
  with TestClient(make_app(str(repo), max_batch_size=2, max_wait_ms=0,
                           admin_token_file=str(tmp_path / 'token'))) as client:
    for version in (2, 3):
      assert client.post(f'/v1/versions/{version}/load', headers=auth).status_code == 200
    refused = client.post('/v1/versions/3/promote', headers=auth)
    worse_report = json.loads((worse / 'retrain.json').read_text())['evaluation']['holdout']
    assert refused.status_code == 409, refused.text
    gate = refused.json()['gate']
    assert gate['holdout_accuracy'] == {
        'candidate': pytest.approx(100 * worse_report['candidate_accuracy'], abs=1e-3),
        'champion': pytest.approx(100 * worse_report['champion_accuracy'], abs=1e-3)}
    error = refused.json()['error']  # Worse on held-out feedback, or on the test split.
    rule = 'holdout' if 'is not better than champion 1' in error else 'test'
    assert f'{gate[rule + "_accuracy"]["candidate"]:.2f} % vs ' \
           f'{gate[rule + "_accuracy"]["champion"]:.2f} %' in error
    assert client.get('/v1/versions').json()['serving']['champion'] == 1  # Nothing changed.

    promoted = client.post('/v1/versions/2/promote', headers=auth)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()['gate']['holdout_gain_points'] >= 1.0
    assert promoted.json()['serving']['champion'] == 2

    forced = client.post('/v1/versions/3/promote', json={'force': True}, headers=auth)
    assert forced.status_code == 200 and forced.json()['forced'] is True
  history = ModelRepository(repo).promotions()
  assert [(p['version'], p['previous_champion'], p['forced']) for p in history] == [
      (2, 1, False), (3, 2, True)]
  assert 'evaluated against version 1' in history[1]['overrode']
