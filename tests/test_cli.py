"""The experiment command line: flags, overrides, and one clear line for bad input."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxmodels.data import write_idx

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(script, *args, env_extra=None, cwd=None):
  env = {**os.environ, 'JAXMODELS_OFFLINE': '1', **(env_extra or {})}
  return subprocess.run([sys.executable, str(ROOT / 'experiments' / script), *args],
                        capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _assert_one_line_error(result, pattern):
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, result.stderr
  assert pattern in errors[0], errors[0]


@pytest.fixture
def mnist_dir(tmp_path):
  """A tiny MNIST in IDX .gz files, the format Debian and the MNIST site ship."""
  rng = np.random.default_rng(0)
  root = tmp_path / 'mnist'
  root.mkdir()
  for prefix, n in (('train', 96), ('t10k', 40)):
    write_idx(root / f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28), np.uint8))
    write_idx(root / f'{prefix}-labels-idx1-ubyte.gz', rng.integers(0, 10, n).astype(np.uint8))
  return root


QUICK = ['--config.train.num_steps=4', '--config.train.batch_size=16',
         '--config.train.log_every_steps=2', '--config.train.eval_batch_size=20',
         '--config.train.steps_per_dispatch=2', '--config.train.progress=False']


def test_mnist_cli_trains_on_local_idx_files(mnist_dir, tmp_path):
  workdir = tmp_path / 'run'
  result = _run('mnist.py', f'--workdir={workdir}', f'--config.data.local_dir={mnist_dir}', *QUICK)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['steps'] == 4 and summary['data_source'].startswith('local:')


def test_help_lists_the_config_fields():
  result = _run('fashion_mnist.py', '--help')
  assert result.returncode == 0
  for text in ('--workdir', '--config', 'optimizer.learning_rate', 'train.batch_size',
               'augment.shift', 'data.local_dir'):
    assert text in result.stdout


def test_unknown_config_key(tmp_path):
  result = _run('mnist.py', '--config.train.batch_sise=8', f'--workdir={tmp_path}')
  _assert_one_line_error(result, "unknown config key 'train.batch_sise'; did you mean train.batch_size")


def test_negative_learning_rate(mnist_dir, tmp_path):
  result = _run('mnist.py', '--config.optimizer.learning_rate=-0.1', f'--workdir={tmp_path}',
                f'--config.data.local_dir={mnist_dir}')
  _assert_one_line_error(result, 'optimizer.learning_rate must be > 0')


def test_missing_data_while_offline(tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  result = _run('mnist.py', f'--workdir={tmp_path / "run"}', f'--config.data.data_dir={empty}',
                env_extra={'JAXMODELS_DATA_DIR': str(empty), 'TFDS_DATA_DIR': str(empty)})
  _assert_one_line_error(result, '--config.data.local_dir=')
  assert 'no network' in result.stderr


def _write_npz(directory, train_images, train_labels, test_images, test_labels):
  directory.mkdir()
  np.savez(directory / 'train.npz', image=train_images, label=train_labels)
  np.savez(directory / 'test.npz', image=test_images, label=test_labels)


def test_wrong_image_shape(tmp_path):
  rng = np.random.default_rng(0)
  data = tmp_path / 'data'
  _write_npz(data, rng.integers(0, 256, (32, 28, 28, 1), np.uint8), np.zeros(32, np.int64),
             rng.integers(0, 256, (8, 32, 32, 3), np.uint8), np.zeros(8, np.int64))
  result = _run('mnist.py', f'--config.data.local_dir={data}', f'--workdir={tmp_path / "run"}')
  _assert_one_line_error(result, '(32, 32, 3)')


def test_labels_out_of_range(tmp_path):
  rng = np.random.default_rng(0)
  data = tmp_path / 'data'
  labels = rng.integers(0, 10, 32)
  labels[5] = 12
  _write_npz(data, rng.integers(0, 256, (32, 28, 28, 1), np.uint8), labels,
             rng.integers(0, 256, (8, 28, 28, 1), np.uint8), np.zeros(8, np.int64))
  result = _run('mnist.py', f'--config.data.local_dir={data}', f'--workdir={tmp_path / "run"}')
  _assert_one_line_error(result, '12')
