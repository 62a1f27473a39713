"""The /monitor page in headless Chromium against a real server: before any traffic it says
there are no labels and fewer predictions than a window; after in-distribution traffic, then
inverted images, then feedback, every number it shows (live accuracy and its interval,
macro-F1, label count, mean confidence, reference accuracy and ECE, each current test's
statistic and p-value, the confusion matrix, which windows drifted) equals GET /v1/monitor's,
both the document the page fetched and one fetched right after; the inverted windows show as
drifted. A server that records nothing shows its 409 error. A screenshot of the page is kept
($JAXMODELS_TEST_ARTIFACTS/monitor.png, else in tmp_path)."""
import math
import os
import time

import numpy as np
import pytest

import demo_browser
import deploy_run
from jaxmodels.serve import artifact_export
from serve_process import Server

WINDOW = 20  # Predictions per drift window: 10 windows from the traffic below.
IN_DISTRIBUTION, SHIFTED = 100, 100
BATCH = 10
# Everything the page hands to a test in one script run, so that a poll re-rendering the page
# cannot come between the document and the figures read.
COLLECT = """
return {doc: window.lastMonitor, renders: window.monitorRenders || 0,
        fields: [...document.querySelectorAll('[data-field]')].map(
            (e) => ({...e.dataset, text: e.textContent}))};
"""

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(demo_browser.MISSING is not None,
                                 reason=str(demo_browser.MISSING))]


@pytest.fixture(scope='module')
def repository(tmp_path_factory):
  """A repository whose version 1 (the tiny deployment run) has a drift reference fitted on
  held-out images of the run's distribution."""
  workdir, _ = deploy_run.trained_once(tmp_path_factory)
  repo = tmp_path_factory.mktemp('monitor') / 'repo'
  version, manifest = artifact_export.export_version(
      workdir, str(repo), platforms=('cpu',),
      reference_split=('validation', deploy_run.images(400, 7)), say=lambda *_: None)
  assert version == 1 and manifest['reference']['split'] == 'validation'
  return repo


def one(fields: list, field: str, version='1', test=None) -> dict:
  """The single element with data-field `field` (of `version`, of the test row `test`)."""
  found = [f for f in fields if f['field'] == field and f.get('version') == version
           and f.get('test') == test]
  assert len(found) == 1, (field, version, test, found)
  return found[0]


def shows(element: dict, value, decimals: int | None = None, digits: int | None = None):
  """The element holds `value` exactly in data-value and rounded in its text."""
  assert float(element['value']) == value, (element, value)
  if decimals is not None:
    assert abs(float(element['text']) - value) <= 0.51 * 10 ** -decimals, (element, value)
    assert len(element['text'].split('.')[1]) == decimals, element
  if digits is not None:
    assert math.isclose(float(element['text']), value, rel_tol=10 ** (1 - digits)), (element,
                                                                                     value)


def figures(document: dict) -> dict:
  """The document less the moment it was computed: two snapshots of a store nobody writes to
  agree on everything else."""
  return {key: value for key, value in document.items() if key != 'generated_at'}


def send_traffic(server) -> list[str]:
  """Images of the run's distribution, then the same kind of images inverted, a batch at a
  time; the feedback gives every prediction its true label. -> the prediction ids."""
  images, labels = deploy_run.images(IN_DISTRIBUTION + SHIFTED, 11)
  images[IN_DISTRIBUTION:] = 255 - images[IN_DISTRIBUTION:]
  ids = []
  for start in range(0, len(images), BATCH):
    status, answer = server.request('POST', '/predict',
                                    {'inputs': images[start:start + BATCH].tolist()})
    assert status == 200, answer
    ids += answer['prediction_ids']
  feedback = [{'prediction_id': i, 'label': deploy_run.CLASSES[label]}
              for i, label in zip(ids, labels)]
  deadline = time.monotonic() + 30
  while True:  # The store's writer commits the predictions within ~50 ms.
    status, answer = server.request('POST', '/v1/feedback', {'feedback': feedback})
    if status != 404 or time.monotonic() > deadline:
      break
    time.sleep(0.1)
  assert (status, answer) == (200, {'accepted': len(ids)})
  return ids


def screenshot_path(tmp_path) -> str:
  directory = os.environ.get('JAXMODELS_TEST_ARTIFACTS') or str(tmp_path)
  os.makedirs(directory, exist_ok=True)
  return os.path.join(directory, 'monitor.png')


def test_monitor_page_shows_what_v1_monitor_says(repository, tmp_path):
  server = Server(str(repository), '--log-inputs', '1', '--monitor-window', str(WINDOW),
                  '--max-batch-size', '16')
  try:
    with demo_browser.chrome() as driver:
      # every=1: the page polls each second (the server's snapshot lives 2 s).
      demo_browser.open_page(driver, server.url + '/monitor?every=1',
                             'section[data-version="1"]')
      empty = driver.execute_script(COLLECT)['fields']
      assert one(empty, 'labels')['text'] == '0'
      assert one(empty, 'accuracy')['text'] == 'no labels yet'
      assert one(empty, 'confusion_note')['text'] == 'no labels yet'
      assert one(empty, 'tests_note')['text'].startswith('fewer predictions than a window')
      assert one(empty, 'mean_confidence')['text'] == 'no predictions yet'
      assert one(empty, 'champion', version=None)['value'] == '1'

      send_traffic(server)
      demo_browser.wait_text(driver, '[data-version="1"][data-field="labels"]',
                             lambda text: text == str(IN_DISTRIBUTION + SHIFTED))
      page = driver.execute_script(COLLECT)
      status, direct = server.request('GET', '/v1/monitor')
      assert status == 200, direct
      document, fields = page['doc'], page['fields']
      assert figures(document) == figures(direct)

      [entry] = document['versions']
      quality, current = entry['quality'], entry['drift']['current']
      assert entry['role'] == 'champion' and quality['labels'] == IN_DISTRIBUTION + SHIFTED
      assert int(one(fields, 'labels')['text']) == quality['labels']
      shows(one(fields, 'accuracy'), quality['accuracy'], decimals=6)
      shows(one(fields, 'accuracy_lower'), quality['accuracy_interval'][0], decimals=6)
      shows(one(fields, 'accuracy_upper'), quality['accuracy_interval'][1], decimals=6)
      shows(one(fields, 'macro_f1'), quality['macro_f1'], decimals=6)
      shows(one(fields, 'mean_confidence'), entry['confidence']['mean'], decimals=6)
      assert int(one(fields, 'confidence_window')['text']) == WINDOW
      shows(one(fields, 'reference_accuracy'), entry['reference']['accuracy'], decimals=6)
      shows(one(fields, 'reference_ece'), entry['reference']['expected_calibration_error'],
            decimals=6)
      assert int(one(fields, 'predictions')['text']) == IN_DISTRIBUTION + SHIFTED

      assert len(current['tests']) == 2 + entry['reference']['components']
      for test in current['tests']:
        shows(one(fields, 'p_value', test=test['name']), test['p_value'], digits=6)
        shows(one(fields, 'statistic', test=test['name']), test['statistic'], digits=6)
        shows(one(fields, 'adjusted_p_value', test=test['name']), test['adjusted_p_value'],
              digits=6)
        drifted = one(fields, 'drifted', test=test['name'])
        assert (drifted['value'], drifted['text']) == (
            str(test['drifted']).lower(), 'yes' if test['drifted'] else 'no')

      cells = [f for f in fields if f['field'] == 'confusion_cell' and f['version'] == '1']
      shown = np.zeros((len(deploy_run.CLASSES),) * 2, np.int64)
      for cell in cells:
        assert cell['text'] == cell['value']
        shown[int(cell['true']), int(cell['predicted'])] = int(cell['text'])
      assert len(cells) == shown.size and shown.tolist() == quality['confusion']
      assert shown.sum() == quality['labels']

      # The windows, oldest first: the in-distribution ones hold, the inverted ones drifted.
      windows = [f for f in fields if f['field'] == 'window' and f['version'] == '1']
      history = entry['drift']['history']
      assert [int(w['window']) for w in windows] == list(range(len(history)))
      assert [w['drifted'] for w in windows] == [str(h['drifted']).lower() for h in history]
      assert [h['drifted'] for h in history] == (
          [False] * (IN_DISTRIBUTION // WINDOW) + [True] * (SHIFTED // WINDOW))
      assert current['drifted'] and one(fields, 'window_drifted')['text'] == 'drifted'
      points = [f for f in fields if f['field'] == 'accuracy_point' and f['version'] == '1']
      assert [float(p['value']) for p in points] == [h['accuracy'] for h in quality['history']]
      assert len(points) >= 2 and float(points[0]['value']) > float(points[-1]['value'])

      # The whole page in the picture, not only the first screen.
      height = driver.execute_script('return document.documentElement.scrollHeight')
      driver.set_window_size(1280, min(height + 140, 6000))
      path = demo_browser.screenshot(driver, screenshot_path(tmp_path))
      with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
      assert os.path.getsize(path) > 10_000, os.path.getsize(path)
  finally:
    server.stop()


def test_monitor_page_shows_the_error_of_a_server_without_a_store(repository):
  server = Server(str(repository), '--store', 'off', '--max-batch-size', '2')
  try:
    status, answer = server.request('GET', '/v1/monitor')
    assert status == 409, answer
    with demo_browser.chrome() as driver:
      demo_browser.open_page(driver, server.url + '/monitor', '#error')
      shown = demo_browser.wait_text(driver, '#error', lambda text: text.startswith('error'))
      assert shown == f'error 409: {answer["error"]}'
      assert not driver.find_elements('css selector', 'section.version')
  finally:
    server.stop()
