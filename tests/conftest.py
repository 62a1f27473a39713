"""Eight simulated CPU devices for the sharding tests. XLA reads the flag when JAX
starts its backend, so it is set here, before any test imports run jax code."""
import os

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_FLAG}'.strip()

# One persistent compilation cache for the whole session, in a fresh temporary directory:
# tests (and the experiments and workers they start) that compile the same programs share
# them, and the user's own cache is neither read nor filled.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if 'JAXMODELS_COMPILATION_CACHE' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='jaxmodels-test-xla-')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAXMODELS_COMPILATION_CACHE'] = _CACHE
if 'JAXMODELS_DATA_CACHE' not in os.environ:  # Decoded dataset files, likewise.
  _DATA_CACHE = tempfile.mkdtemp(prefix='jaxmodels-test-data-')
  atexit.register(shutil.rmtree, _DATA_CACHE, ignore_errors=True)
  os.environ['JAXMODELS_DATA_CACHE'] = _DATA_CACHE

import jaxmodels  # noqa: E402

jaxmodels.enable_compilation_cache()

import pytest  # noqa: E402


@pytest.fixture
def mock_tfds(monkeypatch):
  """`tfds.testing.mock_data`, on a machine that looks online: mock_data makes tfds' download a
  no-op and serves random examples, so the library takes its ordinary download path."""
  import tensorflow_datasets as tfds

  from jaxmodels.data import tfds_source
  monkeypatch.setattr(tfds_source, 'network_available', lambda *args, **kwargs: True)
  return tfds.testing.mock_data
