"""`jaxmodels serve REPO`: the versions of a model repository behind one server. A version is
compiled before it takes traffic; a canary gets its share of the request ids, the same id
always the same version; a shadow's predictions are recorded, never returned; promote and
rollback; every change saved in serving.json and served again by a fresh server. Every
prediction is recorded with its version; feedback is answered 200 only once committed (and
survives a SIGKILL of the server). Bad admin and feedback requests change nothing."""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from deploy_run import CLASSES, trained_once
from jaxmodels import console
from jaxmodels.serve import model_repository
from jaxmodels.serve.app import make_app
from serve_process import Server

TOKEN = 's3cret-token'
AUTH = {'Authorization': f'Bearer {TOKEN}'}


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """(a repository with version 1 (float) and 2 (int8) of one run, test images (uint8))."""
  workdir, root = trained_once(tmp_path_factory)
  repo = tmp_path_factory.mktemp('versions') / 'repo'
  assert console.main(['export', workdir, '--repo', str(repo), '--platforms', 'cpu']) == 0
  assert console.main(['export', workdir, '--repo', str(repo), '--platforms', 'cpu',
                       '--quantize', 'int8']) == 0
  return repo, np.load(root / 'data' / 'test.npz')['image']


@pytest.fixture
def repo(exported, tmp_path):
  """A copy of the two-version repository (no serving.json yet: version 2 is the newest),
  with version 1 made the champion and the admin token in tmp_path/token."""
  copy = tmp_path / 'repo'
  shutil.copytree(exported[0], copy)
  model_repository.ModelRepository(copy).save_state(
      model_repository.ServingState(champion=1, loaded=(1,)))
  (tmp_path / 'token').write_text(TOKEN + '\n')
  return copy


def client_of(repo, **options) -> TestClient:
  options = {'max_batch_size': 4, 'max_wait_ms': 0,
             'admin_token_file': str(pathlib.Path(repo).parent / 'token'), **options}
  return TestClient(make_app(str(repo), **options))


def saved(repo) -> dict:
  return json.loads((pathlib.Path(repo) / 'serving.json').read_text())


def metric(client, name: str) -> float:
  return float(next(line.split()[-1] for line in client.get('/metrics').text.splitlines()
                    if line.startswith(name + ' ')))


def change(client, path: str, body=None) -> dict:
  response = client.post(path, json=body, headers=AUTH)
  assert response.status_code == 200, response.text
  return response.json()['serving']


def test_version_lifecycle_over_http(exported, repo):
  images = exported[1][:2].tolist()
  with client_of(repo) as client:
    listed = client.get('/v1/versions').json()
    assert [(v['version'], v['state']) for v in listed['versions']] == [(1, 'champion'),
                                                                        (2, 'available')]
    assert listed['versions'][1]['run']['model'] == 'mlp'
    state = change(client, '/v1/versions/2/load')
    assert state['loaded'] == [1, 2] and state['champion'] == 1 and saved(repo) == state
    assert metric(client, 'jaxmodels_compilations_after_warmup_total') == 0  # Warmed first.

    state = change(client, '/v1/versions/2/canary', {'percent': 20})
    assert state['canary'] == 2 and state['canary_percent'] == 20 and saved(repo) == state
    answered = {}
    for i in range(2000):
      response = client.post('/predict', json={'inputs': images[:1]},
                             headers={'X-Request-Id': f'request-{i}'})
      answered[i] = response.json()['model_version']
      assert response.headers['X-Model-Version'] == str(answered[i])
    share = sum(v == 2 for v in answered.values()) / len(answered)
    assert abs(share - 0.20) <= 0.03, share
    for i in range(0, 2000, 97):  # A retry meets the same version.
      assert client.post('/predict', json={'inputs': images[:1]}, headers={
          'X-Request-Id': f'request-{i}'}).json()['model_version'] == answered[i]
    assert metric(client, 'jaxmodels_version_requests_total{version="2"}') > 300

    state = change(client, '/v1/versions/2/shadow')
    assert state['shadow'] == 2 and state['canary'] is None and saved(repo) == state
    asked = time.time()  # The canary's version-2 records came before.
    answer = client.post('/predict', json={'inputs': images}).json()
    assert answer['model_version'] == 1 and len(answer['prediction_ids']) == 2
    store = client.app.state.store
    deadline = time.monotonic() + 30
    while len(store.predictions(version=2, since=asked)) < 2 and time.monotonic() < deadline:
      time.sleep(0.05)  # The shadow runs after the answer.
    store.flush()
    shadowed = store.predictions(since=asked)
    assert sorted(r['model_version'] for r in shadowed) == [1, 1, 2, 2]
    assert {r['prediction_id'] for r in shadowed if r['model_version'] == 1} == set(
        answer['prediction_ids'])

    state = change(client, '/v1/versions/2/promote')
    assert state['champion'] == 2 and state['previous_champions'] == [1]
    assert state['shadow'] is None and saved(repo) == state
    assert client.post('/predict', json={'inputs': images}).json()['model_version'] == 2
    state = change(client, '/v1/rollback')
    assert state['champion'] == 1 and state['previous_champions'] == [] and saved(repo) == state
    state = change(client, '/v1/versions/2/canary', {'percent': 50})
    assert metric(client, 'jaxmodels_compilations_after_warmup_total') == 0
  with client_of(repo) as client:  # A fresh server serves the state saved.
    assert client.get('/v1/versions').json()['serving'] == state == saved(repo)
    assert client.get('/readyz').json()['versions'] == [1, 2]
    assert {client.post('/predict', json={'inputs': images[:1]}, headers={
        'X-Request-Id': f'request-{i}'}).json()['model_version'] for i in range(40)} == {1, 2}


def test_unload_lets_the_requests_routed_to_it_finish(exported, repo):
  """Requests wait in version 2's batcher (a long max wait) when it is unloaded: all are
  answered by it, and the next ones by the champion."""
  images = exported[1][:1].tolist()
  with client_of(repo, max_batch_size=8, max_wait_ms=800) as client:
    change(client, '/v1/versions/2/load')
    state = model_repository.ServingState(**change(client, '/v1/versions/2/canary',
                                                   {'percent': 50}))
    ids = [f'id-{i}' for i in range(40) if model_repository.route(state, f'id-{i}') == 2][:4]
    answers = [None] * len(ids)
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, client.post(
        '/predict', json={'inputs': images}, headers={'X-Request-Id': ids[i]})))
        for i in range(len(ids))]
    for thread in threads:
      thread.start()
    deadline = time.monotonic() + 30
    while metric(client, 'jaxmodels_requests_in_flight') < len(ids):
      assert time.monotonic() < deadline
      time.sleep(0.02)
    assert change(client, '/v1/versions/2/unload')['loaded'] == [1]
    for thread in threads:
      thread.join()
    assert [(a.status_code, a.json()['model_version']) for a in answers] == [(200, 2)] * 4
    assert client.post('/predict', json={'inputs': images}, headers={
        'X-Request-Id': ids[0]}).json()['model_version'] == 1


def _fake_versions(repo):
  """Version 3 takes other inputs; version 4 is a broken artifact."""
  repository = model_repository.ModelRepository(repo)

  def other_input(directory):
    shutil.copytree(repo / '1', directory, dirs_exist_ok=True)
    manifest = json.loads((pathlib.Path(directory) / 'manifest.json').read_text())
    manifest['input']['shape'] = [16, 16, 1]
    (pathlib.Path(directory) / 'manifest.json').write_text(json.dumps(manifest))

  def broken(directory):
    shutil.copytree(repo / '1', directory, dirs_exist_ok=True)
    (pathlib.Path(directory) / 'model.jaxexport').write_bytes(b'not an exported function')

  assert repository.add_version(other_input) == 3
  assert repository.add_version(broken) == 4


def test_bad_admin_and_feedback_requests_change_nothing(exported, repo):
  _fake_versions(repo)
  images = exported[1][:2].tolist()
  with client_of(repo) as client:
    change(client, '/v1/versions/2/load')
    prediction_id = client.post('/predict', json={'inputs': images}).json()['prediction_ids'][0]
    store = client.app.state.store
    store.flush()
    before, counts = (repo / 'serving.json').read_bytes(), store.counts()
    bad = [
        ('/v1/versions/2/promote', None, {}, 401),  # no token
        ('/v1/versions/2/promote', None, {'Authorization': 'Bearer wrong'}, 403),
        ('/v1/versions/2/promote', None, {'Authorization': TOKEN}, 401),  # not Bearer
        ('/v1/rollback', None, {}, 401),
        ('/v1/versions/9/load', None, AUTH, 404),  # unknown version
        ('/v1/versions/x/load', None, AUTH, 404),
        ('/v1/versions/2/retire', None, AUTH, 404),  # unknown action
        ('/v1/versions/2/canary', {'percent': 150}, AUTH, 422),
        ('/v1/versions/2/canary', {'percent': 0}, AUTH, 422),
        ('/v1/versions/2/canary', {'share': 20}, AUTH, 422),
        ('/v1/versions/2/canary', b'{"percent": ', AUTH, 400),
        ('/v1/versions/1/canary', {'percent': 10}, AUTH, 409),  # the champion
        ('/v1/versions/3/promote', None, AUTH, 409),  # not loaded
        ('/v1/versions/1/unload', None, AUTH, 409),  # the champion
        ('/v1/rollback', None, AUTH, 409),  # no previous champion
        ('/v1/versions/3/load', None, AUTH, 409),  # another input spec
        ('/v1/versions/4/load', None, AUTH, 422),  # a broken artifact
        ('/v1/feedback', {'feedback': [{'prediction_id': 'f' * 32, 'label': 1}]}, {}, 404),
        ('/v1/feedback', {'feedback': [{'prediction_id': prediction_id, 'label': 8}]}, {}, 422),
        ('/v1/feedback', {'feedback': [{'prediction_id': prediction_id, 'label': 'cat'}]}, {},
         422),
        ('/v1/feedback', {'feedback': [{'prediction_id': prediction_id, 'label': 1.5}]}, {}, 422),
        ('/v1/feedback', {'feedback': [{'prediction_id': prediction_id, 'label': 1},  # all or
                                       {'prediction_id': 'f' * 32, 'label': 1}]}, {}, 404),  # none
        ('/v1/feedback', {'feedback': []}, {}, 422),
        ('/v1/feedback', {'feedback': [{'prediction_id': prediction_id}]}, {}, 422),
        ('/v1/feedback', [1, 2], {}, 422),
        ('/v1/feedback', b'{"feedback": [', {}, 400),
    ]
    for path, body, headers, expected in bad:
      content = body if isinstance(body, bytes) else None if body is None else json.dumps(body)
      response = client.post(path, content=content, headers=headers)
      assert response.status_code == expected, (path, body, response.text)
      assert response.json()['error'], response.text
      assert (repo / 'serving.json').read_bytes() == before and store.counts() == counts
    assert 'version 3 takes other inputs' in client.post('/v1/versions/3/load',
                                                          headers=AUTH).json()['error']
    assert client.get('/v1/versions').json()['serving'] == json.loads(before)
    assert client.post('/predict', json={'inputs': images}).status_code == 200
    assert metric(client, 'jaxmodels_compilations_after_warmup_total') == 0
  with client_of(repo, admin_token_file=None) as client:  # Admin routes off.
    response = client.post('/v1/versions/2/promote', headers=AUTH)
    assert response.status_code == 403 and '--admin-token-file' in response.json()['error']
    assert (repo / 'serving.json').read_bytes() == before


def test_predictions_are_recorded_with_their_version_and_inputs(exported, repo):
  images = exported[1][:3]
  dtype = model_repository.ModelRepository(repo).manifest(1)['input']['dtype']
  sent = lambda image: np.asarray(image, dtype).tobytes()  # As the model reads them.
  with client_of(repo, log_inputs=1.0) as client:
    answer = client.post('/predict', json={'inputs': images.tolist(), 'top_k': 2}).json()
    assert client.post('/predict', json={'inputs': images[:1].tolist()}).status_code == 200
    client.app.state.store.flush()
    assert metric(client, 'jaxmodels_prediction_records_dropped_total') == 0
  with sqlite3.connect(repo / 'monitor.db') as db:
    rows = {row[0]: row[1:] for row in db.execute(
        'SELECT prediction_id, model_version, top_k, predicted, input_digest, input '
        'FROM predictions')}
  assert len(rows) == 4
  for prediction_id, image, top_k in zip(answer['prediction_ids'], images,
                                         answer['predictions']):
    version, stored_top_k, predicted, digest, stored_input = rows[prediction_id]
    assert version == 1 and json.loads(stored_top_k) == top_k and len(top_k) == 2
    assert predicted == top_k[0]['index']
    assert stored_input == sent(image) and digest == hashlib.sha256(sent(image)).hexdigest()
  with client_of(repo) as client:  # log_inputs 0: the digest only.
    answer = client.post('/predict', json={'inputs': images[:1].tolist()}).json()
    client.app.state.store.flush()
  with sqlite3.connect(repo / 'monitor.db') as db:
    assert db.execute('SELECT input, input_digest FROM predictions WHERE prediction_id = ?',
                      answer['prediction_ids']).fetchone() == (
                          None, hashlib.sha256(sent(images[0])).hexdigest())


def test_feedback_is_answered_once_committed(exported, repo, tmp_path, capsys):
  with client_of(repo) as client:
    ids = client.post('/predict', json={'inputs': exported[1][:3].tolist()}).json()[
        'prediction_ids']
    response = client.post('/v1/feedback', json={'feedback': [
        {'prediction_id': ids[0], 'label': 'class3'}, {'prediction_id': ids[1], 'label': 5}]})
    assert response.status_code == 200 and response.json() == {'accepted': 2}
    with sqlite3.connect(repo / 'monitor.db') as db:  # Committed before the answer.
      assert dict(db.execute('SELECT prediction_id, label FROM feedback')) == {ids[0]: 3,
                                                                                ids[1]: 5}
    assert client.post('/v1/feedback', json={'feedback': [
        {'prediction_id': ids[0], 'label': 'class6'}]}).json() == {'accepted': 1}
    with sqlite3.connect(repo / 'monitor.db') as db:  # The same id again: replaced.
      assert dict(db.execute('SELECT prediction_id, label FROM feedback')) == {ids[0]: 6,
                                                                                ids[1]: 5}
  (tmp_path / 'labels.csv').write_text(f'prediction_id,label\n{ids[2]},class1\n{ids[1]},0\n')
  assert console.main(['feedback', 'import', str(repo), str(tmp_path / 'labels.csv')]) == 0
  assert 'imported 2' in capsys.readouterr().out
  with sqlite3.connect(repo / 'monitor.db') as db:
    assert dict(db.execute('SELECT prediction_id, label FROM feedback')) == {
        ids[0]: 6, ids[1]: 0, ids[2]: 1}
  (tmp_path / 'bad.csv').write_text(f'prediction_id,label\n{ids[2]},dog\n')
  assert console.main(['feedback', 'import', str(repo), str(tmp_path / 'bad.csv')]) == 2
  assert 'bad.csv line 2' in capsys.readouterr().err


def test_a_single_artifact_serves_as_version_one(exported, tmp_path):
  artifact_dir = tmp_path / 'artifact'
  shutil.copytree(exported[0] / '1', artifact_dir)
  before = sorted(os.listdir(artifact_dir))
  (tmp_path / 'token').write_text(TOKEN)
  with TestClient(make_app(str(artifact_dir), max_batch_size=2,
                           admin_token_file=str(tmp_path / 'token'))) as client:
    response = client.post('/predict', json={'inputs': exported[1][:2].tolist()})
    assert response.status_code == 200 and response.headers['X-Model-Version'] == '1'
    assert response.json()['model_version'] == 1 and len(response.json()['prediction_ids']) == 2
    assert [v['state'] for v in client.get('/v1/versions').json()['versions']] == ['champion']
    page = client.get('/').text
    assert 'id="feedback"' in page and json.dumps(CLASSES, separators=(',', ':')) in page
    assert client.post('/v1/versions/1/promote', headers=AUTH).status_code == 200  # No change.
    response = client.post('/v1/rollback', headers=AUTH)
    assert response.status_code == 409
    assert client.post('/v1/feedback', json={'feedback': [
        {'prediction_id': 'a' * 32, 'label': 0}]}).status_code == 409  # No store.
  assert sorted(os.listdir(artifact_dir)) == before  # Nothing written into the artifact.


def test_store_off_records_nothing(exported, repo):
  """--store off: a repository served without its prediction store (no monitor.db)."""
  with client_of(repo, store='off') as client:
    response = client.post('/predict', json={'inputs': exported[1][:1].tolist()})
    assert response.status_code == 200 and client.app.state.store is None
  assert not (repo / 'monitor.db').exists()


@pytest.mark.slow
def test_feedback_and_state_survive_a_sigkill(exported, repo, capsys):
  """A real server: the serving state set with `jaxmodels versions`; a burst of feedback,
  SIGKILL in the middle of it; after a restart every feedback answered 200 is in the store
  and the canary is the one set before."""
  token = ['--token-file', str(repo.parent / 'token')]
  server = Server(str(repo), '--max-batch-size', '4', '--admin-token-file',
                  str(repo.parent / 'token'))
  try:
    for command in (['load', '2'], ['shadow', '2'], ['promote', '2'], ['rollback'],
                    ['unload', '2'], ['load', '2'], ['canary', '2', '--percent', '30']):
      assert console.main(['versions', command[0], server.url, *command[1:], *token]) == 0
    answers = [json.loads(a) for a in capsys.readouterr().out.replace('}\n{', '}\0{').split('\0')]
    assert [a['serving']['champion'] for a in answers] == [1, 1, 2, 1, 1, 1, 1]
    assert answers[-1]['serving']['previous_champions'] == []
    assert console.main(['versions', 'list', server.url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v['version'], v['state']) for v in listed['versions']] == [(1, 'champion'),
                                                                        (2, 'canary')]
    before = listed['serving']
    assert console.main(['versions', 'load', server.url, '9', *token]) == 2
    assert capsys.readouterr().err.startswith('error: 404: version 9 is not in')
    assert console.main(['versions', 'rollback', server.url]) == 2  # No token.
    assert '401' in capsys.readouterr().err
    images = exported[1][:4].tolist()
    ids = [i for _ in range(40)
           for i in server.request('POST', '/predict', {'inputs': images})[1]['prediction_ids']]
    answered, stop = [], threading.Event()

    def burst():
      for n, prediction_id in enumerate(ids):
        try:
          status, _ = server.request('POST', '/v1/feedback', {'feedback': [
              {'prediction_id': prediction_id, 'label': CLASSES[n % 8]}]}, timeout=10)
        except OSError:
          return  # The server is gone.
        if status == 200:
          answered.append((prediction_id, n % 8))
        if stop.is_set():
          return

    client = threading.Thread(target=burst)
    client.start()
    deadline = time.monotonic() + 60
    while len(answered) < 30 and time.monotonic() < deadline:
      time.sleep(0.01)
    assert server.kill() == -signal.SIGKILL
    stop.set()
    client.join()
    assert 30 <= len(answered) < len(ids)
  finally:
    server.kill()
  server = Server(str(repo), '--max-batch-size', '4')
  try:
    assert server.request('GET', '/v1/versions')[1]['serving'] == before == saved(repo)
    assert server.request('GET', '/readyz')[1]['versions'] == [1, 2]
    with sqlite3.connect(repo / 'monitor.db') as db:
      stored = dict(db.execute('SELECT prediction_id, label FROM feedback'))
    assert all(stored.get(i) == label for i, label in answered)
  finally:
    assert server.stop() == -signal.SIGTERM


@pytest.mark.slow
def test_two_servers_share_one_postgresql_store(exported, repo):
  """A prediction made by one server gets its feedback accepted through the other."""
  from postgres_server import postgres_server
  with postgres_server() as url:
    servers = [Server(str(repo), '--max-batch-size', '2', '--store', url) for _ in range(2)]
    try:
      ids = servers[0].request('POST', '/predict',
                               {'inputs': exported[1][:2].tolist()})[1]['prediction_ids']
      deadline = time.monotonic() + 10
      while True:  # The first server's writer commits its records within ~50 ms.
        status, answer = servers[1].request('POST', '/v1/feedback', {'feedback': [
            {'prediction_id': ids[0], 'label': 'class2'}, {'prediction_id': ids[1], 'label': 4}]})
        if status != 404 or time.monotonic() > deadline:
          break
        time.sleep(0.1)
      assert (status, answer) == (200, {'accepted': 2})
      assert servers[0].request('POST', '/v1/feedback', {'feedback': [
          {'prediction_id': ids[0], 'label': 7}]}) == (200, {'accepted': 1})
    finally:
      for server in servers:
        server.stop()
    import sqlalchemy as sa
    engine = sa.create_engine(url)
    with engine.connect() as connection:
      labels = dict(connection.execute(sa.text('SELECT prediction_id, label FROM feedback')).all())
    engine.dispose()
    assert labels == {ids[0]: 7, ids[1]: 4}


@pytest.mark.slow
def test_demo_page_sends_feedback_in_headless_chromium(exported, repo, tmp_path):
  """A person's path: an image chosen, its labels shown, another label picked and sent; the
  store holds it for the prediction the page made."""
  import demo_browser
  from PIL import Image
  if demo_browser.MISSING:
    pytest.skip(demo_browser.MISSING)
  Image.fromarray(exported[1][5][..., 0]).save(tmp_path / 'upload.png')
  server = Server(str(repo), '--max-batch-size', '2')
  try:
    with demo_browser.chrome() as driver:
      demo_browser.open_page(driver, server.url + '/', '#file')
      demo_browser.upload(driver, '#file', tmp_path / 'upload.png')
      status = demo_browser.wait_text(
          driver, '#status', lambda text: text == 'done' or text.startswith('error'))
      assert status == 'done', status
      assert demo_browser.texts(driver, '#result li')  # The labels, then the feedback form.
      assert driver.find_element('id', 'feedback').is_displayed()
      demo_browser.choose(driver, '#correct', 'class6')
      demo_browser.click(driver, '#feedback button')
      shown = demo_browser.wait_text(driver, '#feedback-status',
                                     lambda text: text.startswith(('thank', 'error')))
      assert shown == 'thank you: recorded as class6', shown
  finally:
    server.stop()
  with sqlite3.connect(repo / 'monitor.db') as db:
    assert db.execute('SELECT label FROM feedback').fetchall() == [(6,)]


def test_a_version_exported_while_serving_does_not_change_what_serves(exported, tmp_path):
  copy = tmp_path / 'repo'
  shutil.copytree(exported[0], copy)  # Versions 1 and 2, no serving.json: the newest serves.
  (tmp_path / 'token').write_text(TOKEN + '\n')
  with client_of(copy) as client:
    assert saved(copy)['champion'] == 2  # The server pins the state it serves.
    shutil.copytree(copy / '1', copy / '3')  # A new version appears, as an export adds it.
    answer = client.post('/predict', json={'inputs': exported[1][:1].tolist()})
    assert answer.headers['X-Model-Version'] == '2'
    change(client, '/v1/versions/1/load')
    state = change(client, '/v1/versions/1/promote')
  assert state['champion'] == 1 and state['previous_champions'] == [2]
  assert saved(copy) == state
