"""tfds loading: mocked data, prepared data, and failing fast offline."""

import http.server
import threading
import time

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from jaxmodels.data import (CLASS_NAMES, DataError, DataUnavailableError,
                            load_dataset, load_tfds, network_available)
from jaxmodels.data import local
from jaxmodels.data import tfds_source


@pytest.fixture
def probe_forbidden(monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError('network probe must not run here')
  monkeypatch.setattr(tfds_source, 'network_available', fail)


@pytest.fixture
def offline(monkeypatch, tmp_path):
  """No network and no local copies (Debian's real files hidden)."""
  monkeypatch.setattr(tfds_source, 'network_available', lambda: False)
  monkeypatch.setattr(local, 'DEBIAN_DATASETS_DIR', str(tmp_path / 'debian'))
  monkeypatch.delenv(local.ENV_VAR, raising=False)


@pytest.mark.parametrize('name,shape,names', [
    ('mnist', (28, 28, 1), tuple('0123456789')),
    ('cifar10', (32, 32, 3), CLASS_NAMES['cifar10']),
])
def test_mock_data(tmp_path, mock_tfds, name, shape, names):
  with mock_tfds(num_examples=12):
    data = load_tfds(name, data_dir=tmp_path)
  for images, labels in ((data.train_images, data.train_labels),
                         (data.test_images, data.test_labels)):
    assert images.shape == (12,) + shape and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10
  assert data.num_classes == 10 and data.class_names == names
  assert data.source == f'tfds:{name}'


def test_mock_data_through_auto(tmp_path, mock_tfds):
  with mock_tfds(num_examples=4):
    data = load_dataset('mnist', data_dir=tmp_path)
  assert data.source == 'tfds:mnist' and data.train_images.shape[0] == 4


def test_offline_auto_fails_fast(tmp_path, offline):
  start = time.monotonic()
  with pytest.raises(DataUnavailableError) as e:
    load_dataset('mnist', source='auto', data_dir=tmp_path / 'tfds')
  assert time.monotonic() - start < 10
  message = str(e.value)
  assert '\n' not in message
  assert "'mnist'" in message and 'no network' in message
  assert 'local_dir=DIR' in message


def test_mocked_tfds_is_not_special_to_the_library(tmp_path, monkeypatch):
  """Under tfds.testing.mock_data, offline is still offline: the library has no test-double
  detection, so what the tests see is what users get."""
  monkeypatch.setattr(tfds_source, 'network_available', lambda: False)
  with tfds.testing.mock_data(num_examples=4), pytest.raises(DataUnavailableError,
                                                             match='no network'):
    load_tfds('mnist', data_dir=tmp_path)


def test_not_prepared_without_download(tmp_path, probe_forbidden):
  with pytest.raises(DataUnavailableError, match='download=False'):
    load_tfds('mnist', data_dir=tmp_path, download=False)


def test_download_errors_become_one_line(monkeypatch, tmp_path):
  monkeypatch.setattr(tfds_source, 'network_available', lambda: True)

  def refuse(self, **kwargs):
    raise requests.exceptions.ConnectionError('Max retries exceeded\nwith url')

  builder_cls = type(tfds.builder('mnist', data_dir=tmp_path))
  monkeypatch.setattr(builder_cls, 'download_and_prepare', refuse)
  with pytest.raises(DataUnavailableError) as e:
    load_tfds('mnist', data_dir=tmp_path)
  assert 'ConnectionError' in str(e.value) and '\n' not in str(e.value)


def test_unknown_dataset(tmp_path, probe_forbidden):
  with pytest.raises(DataError, match="unknown tfds dataset 'no_such_set'"):
    load_tfds('no_such_set', data_dir=tmp_path)


def test_prepared_dataset_is_used_by_auto(tmp_path, probe_forbidden):
  # DummyMnist prepares from code, without network: a real prepared dataset.
  builder = tfds.testing.DummyMnist(data_dir=tmp_path)
  assert not tfds_source.is_prepared('dummy_mnist', tmp_path)
  builder.download_and_prepare()
  assert tfds_source.is_prepared('dummy_mnist', tmp_path)
  data = load_dataset('dummy_mnist', data_dir=tmp_path)
  expected = {int(ex['label']) for ex in tfds.as_numpy(
      builder.as_dataset(split='train'))}
  assert data.source == 'tfds:dummy_mnist'
  assert data.train_images.shape == (20, 28, 28, 1)
  assert set(data.train_labels.tolist()) == expected


class _NotFoundHandler(http.server.BaseHTTPRequestHandler):

  def do_HEAD(self):  # pylint: disable=invalid-name
    self.send_response(404)
    self.end_headers()

  def log_message(self, *args):
    pass


def test_network_available_probe(monkeypatch):
  for var in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):
    monkeypatch.delenv(var, raising=False)
  server = http.server.HTTPServer(('127.0.0.1', 0), _NotFoundHandler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  port = server.server_address[1]
  try:
    # Any HTTP answer, even 404, means the host is reachable.
    assert network_available(f'http://127.0.0.1:{port}/', timeout=2)
  finally:
    server.shutdown()
    server.server_close()
  assert not network_available(f'http://127.0.0.1:{port}/', timeout=2)
