"""`jaxmodels predict` and `jaxmodels serve` on an exported run: the command line, the HTTP
API and the run's own summary give the same predictions; bad requests get a 4xx JSON error
and the server goes on; no compilation after warm-up; SIGTERM lets requests in flight finish."""
import base64
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import demo_browser
from deploy_run import trained_once
from jaxmodels import console
from serve_process import Server

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def deployed(tmp_path_factory):
  """(workdir, artifact directory, test images (uint8), summary)."""
  workdir, root = trained_once(tmp_path_factory)
  out = str(tmp_path_factory.mktemp('serve') / 'artifact')
  assert console.main(['export', workdir, '--out', out, '--platforms', 'cpu']) == 0
  images = np.load(root / 'data' / 'test.npz')['image']
  with open(os.path.join(workdir, 'summary.json')) as f:
    return workdir, out, images, json.load(f)


@pytest.fixture(scope='module')
def server(deployed):
  server = Server(deployed[1], '--max-batch-size', '16', '--max-body-bytes', '20000')
  yield server
  assert server.stop() == -signal.SIGTERM  # uvicorn re-raises SIGTERM once shut down


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buffer, format='PNG')
  return buffer.getvalue()


def _close(a, b):
  """Top-k records equal: same labels in the same order, probabilities to 1e-6."""
  assert [[e['label'] for e in row] for row in a] == [[e['label'] for e in row] for row in b]
  np.testing.assert_allclose([[e['probability'] for e in row] for row in a],
                             [[e['probability'] for e in row] for row in b], rtol=0, atol=1e-6)


def test_predict_command_equals_server_equals_summary(deployed, server, tmp_path, capsys):
  _, out, images, summary = deployed
  recorded = summary['test_predictions']
  np.save(tmp_path / 'test.npy', images[:len(recorded)])
  (tmp_path / 'first.png').write_bytes(_png(images[0]))
  assert console.main(['predict', out, str(tmp_path / 'test.npy'), str(tmp_path / 'first.png'),
                       '--json']) == 0
  command = [p['top_k'] for p in json.loads(capsys.readouterr().out)['predictions']]
  status, answer = server.request('POST', '/predict', {'inputs': images[:len(recorded)].tolist()})
  assert status == 200
  _close(command[:-1], answer['predictions'])
  _close(answer['predictions'], [entry['top_k'] for entry in recorded])
  status, answer = server.request(
      'POST', '/predict', {'images': [base64.b64encode(_png(images[0])).decode()]})
  assert status == 200
  _close(command[-1:], answer['predictions'])  # A PNG file, read on both sides.
  assert console.main(['predict', out, str(tmp_path / 'test.npy')]) == 0
  assert recorded[0]['top_k'][0]['label'] in capsys.readouterr().out.splitlines()[1]


def test_bad_requests_get_4xx_json_and_the_server_goes_on(deployed, server):
  good = deployed[2][:2].tolist()
  bad = [
      ('POST', '/predict', b'{"inputs": [', 400),  # malformed JSON
      ('POST', '/predict', b'', 400),  # no body
      ('POST', '/predict', b'\xff\xfe', 400),  # not UTF-8
      ('POST', '/predict', [1, 2], 422),  # not an object
      ('POST', '/predict', {}, 422),  # nothing to predict
      ('POST', '/predict', {'inputs': good, 'texts': ['a']}, 422),  # two kinds
      ('POST', '/predict', {'inputs': good, 'extra': 1}, 422),  # unknown field
      ('POST', '/predict', {'inputs': [[1, 2, 3]]}, 422),  # wrong shape
      ('POST', '/predict', {'inputs': [[['a'] * 8] * 8]}, 422),  # wrong dtype
      ('POST', '/predict', {'inputs': [[[None] * 8] * 8]}, 422),  # nulls
      ('POST', '/predict', {'inputs': [[[300] * 8] * 8]}, 422),  # out of range
      ('POST', '/predict', b'{"inputs": [[[NaN, 0, 0, 0, 0, 0, 0, 0]]]}', 400),  # JSON has no NaN
      ('POST', '/predict', {'inputs': [[[0] * 8] * 8, [[0] * 7] * 8]}, 422),  # ragged
      ('POST', '/predict', {'inputs': []}, 422),  # no examples
      ('POST', '/predict', {'inputs': good, 'top_k': 0}, 422),
      ('POST', '/predict', {'images': ['not base64!']}, 422),
      ('POST', '/predict', {'images': [base64.b64encode(b'GIF89a junk').decode()]}, 422),
      ('POST', '/predict', {'texts': ['an image model']}, 422),
      ('POST', '/predict', {'inputs': [[[0] * 8] * 8] * 17}, 413),  # over the batch size
      ('POST', '/predict', b'{"inputs": [' + b'0, ' * 10000 + b'0]}', 413),  # body too big
      ('GET', '/predict', None, 405),
      ('GET', '/nowhere', None, 404),
  ]
  for method, path, body, expected in bad:
    status, answer = server.request(method, path, body)
    assert status == expected, (body if not isinstance(body, bytes) else body[:40], answer)
    assert isinstance(answer, dict) and answer['error'], answer
  assert server.request('GET', '/healthz') == (200, {'status': 'ok'})
  assert server.request('POST', '/predict', {'inputs': good})[0] == 200
  assert server.metric('jaxmodels_request_errors_total') >= len(bad) - 2  # 404/405: no route
  assert server.metric('jaxmodels_compilations_after_warmup_total') == 0


def test_concurrent_requests_are_batched_without_compiling(deployed, server):
  images = deployed[2]
  expected = server.request('POST', '/predict', {'inputs': images[:24].tolist()})
  assert expected[0] == 413  # More than one batch in a request is refused...
  singles = [server.request('POST', '/predict', {'inputs': images[i:i + 1].tolist()})[1]
             for i in range(12)]
  answers = [None] * 12
  threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, server.request(
      'POST', '/predict', {'inputs': images[i:i + 1].tolist()})[1])) for i in range(12)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  for single, answer in zip(singles, answers):  # ...but batched requests equal lone ones.
    _close(single['predictions'], answer['predictions'])
  assert server.metric('jaxmodels_compilations_after_warmup_total') == 0
  page = server.request('GET', '/')[1]
  assert 'id="file"' in page and "'image'" in page
  assert server.request('GET', '/openapi.json')[1]['paths']['/predict']


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(deployed):
  """Requests wait in the batcher (a long max wait) when SIGTERM comes: all are answered."""
  images = deployed[2]
  server = Server(deployed[1], '--max-batch-size', '64', '--max-wait-ms', '3000')
  expected = server.request('POST', '/predict', {'inputs': images[:6].tolist()})[1]
  answers = [None] * 6
  threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, server.request(
      'POST', '/predict', {'inputs': images[i:i + 1].tolist()}))) for i in range(6)]
  for thread in threads:
    thread.start()
  deadline = time.monotonic() + 30
  while server.metric('jaxmodels_requests_in_flight') < 6 and time.monotonic() < deadline:
    time.sleep(0.05)
  assert server.metric('jaxmodels_requests_in_flight') == 6  # All waiting in the batcher.
  server.process.send_signal(signal.SIGTERM)
  for thread in threads:
    thread.join()
  assert all(status == 200 for status, _ in answers), answers
  assert server.process.wait(timeout=60) == -signal.SIGTERM  # Re-raised once shut down.
  for i, (_, answer) in enumerate(answers):
    _close(answer['predictions'], expected['predictions'][i:i + 1])


@pytest.mark.slow
@pytest.mark.skipif(demo_browser.MISSING is not None, reason=str(demo_browser.MISSING))
def test_demo_page_in_headless_chromium(deployed, server, tmp_path):
  """A person's path: the page, a PNG chosen in the file input, the labels shown."""
  image = tmp_path / 'upload.png'
  image.write_bytes(_png(deployed[2][3]))
  shown = demo_browser.labels_shown(server.url + '/', str(image))
  status, answer = server.request('POST', '/predict',
                                  {'images': [base64.b64encode(image.read_bytes()).decode()]})
  assert status == 200 and shown == [entry['label'] for entry in answer['predictions'][0]]
  assert shown[0] == deployed[3]['test_predictions'][3]['top_k'][0]['label']


@pytest.mark.slow
def test_serve_load_benchmark_runs(deployed, tmp_path):
  """benchmarks/serve_load.py end to end, briefly: no errors, no compilation after warm-up."""
  np.save(tmp_path / 'images.npy', deployed[2][:32])
  result = subprocess.run(
      [sys.executable, 'benchmarks/serve_load.py', deployed[1], '--clients', '4', '--seconds',
       '1', '--max-batch-size', '8', '--images', str(tmp_path / 'images.npy'), '--json',
       str(tmp_path / 'load.json')], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'XLA_FLAGS': ''})
  assert result.returncode == 0, result.stderr[-3000:]
  load = json.loads((tmp_path / 'load.json').read_text())
  for name in ('batching', 'one_at_a_time'):
    assert load[name]['requests'] > 0 and load[name]['errors'] == 0
    assert load[name]['compilations_after_warmup'] == 0
  assert load['one_at_a_time']['mean_batch_size'] == 1
  assert [r['batch_size'] for r in load['in_process']] == [1, 8]


def test_other_commands_work_without_the_web_stack(monkeypatch, capsys):
  """The base install has no FastAPI: every command's parser still builds, and `serve` says
  in one line which extra it needs."""
  from jaxmodels import console
  for name in ('fastapi', 'orjson', 'uvicorn', 'jaxmodels.serve.app'):
    monkeypatch.setitem(sys.modules, name, None)
  assert console.main(['serve', 'exported/nowhere']) == 2
  message = capsys.readouterr().err.strip()
  assert message.startswith('error: serve needs the web stack') and '.[serve]' in message
  assert '\n' not in message
