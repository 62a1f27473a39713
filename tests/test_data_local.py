"""Loading raw local files (IDX, CIFAR-10 binary, npz) and finding them."""

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxmodels.data import (CLASS_NAMES, DataError, DataUnavailableError,
                            find_local_dir, load_dataset, load_local,
                            write_idx)
from jaxmodels.data import local
from jaxmodels.data import tfds_source

_STEMS = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
          't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def _write_fake_idx(directory, n_train=7, n_test=5, suffix='.gz', seed=0):
  """Writes 4 IDX files of (N, 6, 5) uint8 images; returns the arrays."""
  rng = np.random.default_rng(seed)
  arrays = (rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8),
            rng.integers(0, 10, n_train, dtype=np.uint8),
            rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8),
            rng.integers(0, 10, n_test, dtype=np.uint8))
  os.makedirs(directory, exist_ok=True)
  for stem, array in zip(_STEMS, arrays):
    write_idx(os.path.join(directory, stem + suffix), array)
  return arrays


@pytest.fixture
def no_autodetect(monkeypatch, tmp_path):
  """Hides Debian's real files and $JAXMODELS_DATA_DIR."""
  monkeypatch.setattr(local, 'DEBIAN_DATASETS_DIR', str(tmp_path / 'debian'))
  monkeypatch.delenv(local.ENV_VAR, raising=False)


def test_fashion_mnist_idx_gz(tmp_path):
  train_x, train_y, test_x, test_y = _write_fake_idx(tmp_path)
  data = load_dataset('fashion_mnist', source='local', local_dir=tmp_path)
  np.testing.assert_array_equal(data.train_images, train_x[..., None])
  np.testing.assert_array_equal(data.train_labels, train_y)
  np.testing.assert_array_equal(data.test_images, test_x[..., None])
  np.testing.assert_array_equal(data.test_labels, test_y)
  assert data.train_images.dtype == np.uint8
  assert data.train_labels.dtype == np.int32
  assert data.image_shape == (6, 5, 1)
  assert data.num_classes == 10 and data.class_names[0] == 'T-shirt/top'
  assert data.class_names[9] == 'Ankle boot'
  assert data.source == f'local:{tmp_path}'


def test_mnist_plain_idx(tmp_path):
  arrays = _write_fake_idx(tmp_path, suffix='')
  data = load_local('mnist', str(tmp_path))
  np.testing.assert_array_equal(data.test_images[..., 0], arrays[2])
  assert data.class_names == tuple('0123456789')


def test_missing_idx_file_lists_expectation(tmp_path):
  _write_fake_idx(tmp_path)
  os.remove(tmp_path / 't10k-labels-idx1-ubyte.gz')
  with pytest.raises(DataError) as e:
    load_local('fashion_mnist', tmp_path)
  message = str(e.value)
  assert str(tmp_path) in message and 't10k-labels-idx1-ubyte' in message
  assert '\n' not in message


def test_missing_directory(tmp_path):
  with pytest.raises(DataError, match='does not exist'):
    load_local('mnist', tmp_path / 'nope')


def test_truncated_idx_in_directory(tmp_path):
  _write_fake_idx(tmp_path, suffix='')
  path = tmp_path / 'train-images-idx3-ubyte'
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(DataError, match='train-images-idx3-ubyte'):
    load_local('mnist', tmp_path)


def test_idx_label_count_mismatch(tmp_path):
  _write_fake_idx(tmp_path)
  write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', np.zeros(3, np.uint8))
  with pytest.raises(DataError, match='do not belong together'):
    load_local('mnist', tmp_path)


def _cifar_files(folder, per_file=3, seed=0):
  """Writes the 6 CIFAR-10 .bin files; returns train/test images, labels."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  splits = {'train': [], 'test': []}
  names = [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin']
  for name in names:
    images = rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, per_file, dtype=np.uint8)
    with open(os.path.join(folder, name), 'wb') as f:
      for image, label in zip(images, labels):
        f.write(bytes([label]) + image.transpose(2, 0, 1).tobytes())
    splits['test' if name == 'test_batch.bin' else 'train'].append(
        (images, labels))
  return [np.concatenate([p[i] for p in splits[s]])
          for s in ('train', 'test') for i in (0, 1)]


@pytest.mark.parametrize('subdir', ['', 'cifar-10-batches-bin'])
def test_cifar10_bin(tmp_path, subdir):
  train_x, train_y, test_x, test_y = _cifar_files(tmp_path / subdir)
  data = load_dataset('cifar10', source='local', local_dir=tmp_path)
  assert data.train_images.shape == (15, 32, 32, 3)
  np.testing.assert_array_equal(data.train_images, train_x)
  np.testing.assert_array_equal(data.train_labels, train_y)
  np.testing.assert_array_equal(data.test_images, test_x)
  np.testing.assert_array_equal(data.test_labels, test_y)
  assert data.class_names == CLASS_NAMES['cifar10']


def test_cifar10_corrupt_size(tmp_path):
  _cifar_files(tmp_path)
  with open(tmp_path / 'data_batch_3.bin', 'ab') as f:
    f.write(b'xx')
  with pytest.raises(DataError, match='data_batch_3.bin'):
    load_local('cifar10', tmp_path)


def test_npz_any_name_with_grayscale_and_derived_classes(tmp_path):
  rng = np.random.default_rng(1)
  train_x = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
  test_x = rng.integers(0, 256, (2, 4, 3), dtype=np.uint8)
  np.savez(tmp_path / 'train.npz', image=train_x, label=[0, 1, 2, 0, 1, 4])
  np.savez(tmp_path / 'test.npz', image=test_x, label=[[3], [0]])
  data = load_local('my_data', tmp_path)
  np.testing.assert_array_equal(data.train_images, train_x[..., None])
  np.testing.assert_array_equal(data.test_labels, [3, 0])
  assert data.train_labels.dtype == np.int32
  assert data.num_classes == 5 and data.class_names == ('0', '1', '2', '3', '4')


def test_npz_class_names_and_rgb(tmp_path):
  images = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
  for split in ('train', 'test'):
    np.savez(tmp_path / f'{split}.npz', image=images, label=[0, 1],
             class_names=np.array(['cat', 'dog']))
  data = load_local('pets', tmp_path)
  assert data.class_names == ('cat', 'dog')
  np.testing.assert_array_equal(data.test_images, images)


def test_npz_rejects_object_arrays_and_missing_keys(tmp_path):
  np.savez(tmp_path / 'train.npz', image=np.zeros((1, 2, 2), np.uint8),
           label=np.array([object()], dtype=object))
  np.savez(tmp_path / 'test.npz', image=np.zeros((1, 2, 2), np.uint8))
  with pytest.raises(DataError, match='train.npz'):
    load_local('x', tmp_path)
  np.savez(tmp_path / 'train.npz', image=np.zeros((1, 2, 2), np.uint8),
           label=[0])
  with pytest.raises(DataError, match=r"test.npz lacks.*'label'"):
    load_local('x', tmp_path)


@pytest.mark.parametrize('mode', ['truncated', 'npy'])
def test_npz_unreadable(tmp_path, mode):
  np.savez(tmp_path / 'train.npz', image=np.zeros((1, 2, 2), np.uint8),
           label=[0])
  if mode == 'npy':
    with open(tmp_path / 'test.npz', 'wb') as f:
      np.save(f, np.zeros(3))
  else:
    raw = (tmp_path / 'train.npz').read_bytes()
    (tmp_path / 'test.npz').write_bytes(raw[:len(raw) // 2])
  with pytest.raises(DataError, match='cannot read .*test.npz') as e:
    load_local('x', tmp_path)
  assert '\n' not in str(e.value)


def test_npz_label_out_of_range_for_known_dataset(tmp_path):
  for split in ('train', 'test'):
    np.savez(tmp_path / f'{split}.npz', image=np.zeros((2, 3, 3), np.uint8),
             label=[1, 12])
  with pytest.raises(DataError, match=r'12.*\[0, 10\)'):
    load_local('mnist', tmp_path)


def test_find_local_dir_order(monkeypatch, tmp_path, no_autodetect):
  assert find_local_dir('fashion_mnist') is None
  debian = tmp_path / 'debian' / 'fashion-mnist'
  _write_fake_idx(debian)
  assert find_local_dir('fashion_mnist') == str(debian)
  env_root = tmp_path / 'env'
  monkeypatch.setenv(local.ENV_VAR, str(env_root))
  (env_root / 'fashion_mnist').mkdir(parents=True)  # Empty: skipped.
  assert find_local_dir('fashion_mnist') == str(debian)
  _write_fake_idx(env_root / 'fashion_mnist', seed=3)
  assert find_local_dir('fashion_mnist') == str(env_root / 'fashion_mnist')
  assert find_local_dir('mnist') is None


def test_local_source_autodetects(monkeypatch, tmp_path, no_autodetect):
  arrays = _write_fake_idx(tmp_path / 'env' / 'mnist')
  monkeypatch.setenv(local.ENV_VAR, str(tmp_path / 'env'))
  data = load_dataset('mnist', source='local')
  np.testing.assert_array_equal(data.train_labels, arrays[1])


def test_local_source_nothing_found(no_autodetect):
  with pytest.raises(DataUnavailableError) as e:
    load_dataset('mnist', source='local')
  assert 'local_dir=DIR' in str(e.value)
  assert 'debian/mnist' in str(e.value) and '\n' not in str(e.value)


def test_auto_prefers_explicit_then_autodetected_local(
    monkeypatch, tmp_path, no_autodetect):
  monkeypatch.setattr(tfds_source, 'is_prepared', lambda *a, **k: False)
  explicit = _write_fake_idx(tmp_path / 'explicit', seed=1)
  data = load_dataset('mnist', local_dir=tmp_path / 'explicit')
  np.testing.assert_array_equal(data.train_images[..., 0], explicit[0])
  found = _write_fake_idx(tmp_path / 'debian' / 'mnist', seed=2)
  data = load_dataset('mnist', data_dir=tmp_path / 'tfds')
  np.testing.assert_array_equal(data.train_images[..., 0], found[0])
  assert data.source == f'local:{tmp_path}/debian/mnist'


def test_auto_local_load_does_not_import_tensorflow(tmp_path):
  _write_fake_idx(tmp_path / 'env' / 'fashion_mnist')
  env = dict(os.environ, JAXMODELS_DATA_DIR=str(tmp_path / 'env'),
             TFDS_DATA_DIR=str(tmp_path / 'tfds'), JAX_PLATFORMS='cpu')
  code = ('import sys; from jaxmodels.data import load_dataset; '
          "d = load_dataset('fashion_mnist'); "
          "assert d.source.startswith('local:'), d.source; "
          "assert 'tensorflow' not in sys.modules; "
          "assert 'tensorflow_datasets' not in sys.modules; print('ok')")
  out = subprocess.run([sys.executable, '-c', code], env=env,
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]


def test_unknown_source():
  with pytest.raises(DataError, match="unknown data source 'web'"):
    load_dataset('mnist', source='web')

