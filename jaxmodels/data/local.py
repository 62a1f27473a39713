"""Offline import of raw dataset files from a local directory.

Formats:
  * `mnist`, `fashion_mnist`: the four IDX files `{train,t10k}-{images-idx3,
    labels-idx1}-ubyte`, each optionally gzipped.
  * `cifar10`: the binary version, `data_batch_{1..5}.bin` and
    `test_batch.bin`, optionally inside `cifar-10-batches-bin/`.
  * any name: `train.npz` and `test.npz` holding arrays `image` `(N, H, W[, C])`
    uint8 and `label` `(N,)` integer, and optionally `class_names` (strings).
"""

import os
import zipfile

import numpy as np

from jaxmodels.data import idx
from jaxmodels.data.dataset import CLASS_NAMES, ImageClassificationData
from jaxmodels.errors import DataError, one_line

ENV_VAR = 'JAXMODELS_DATA_DIR'
# Debian's dataset-* packages install here, e.g. .../fashion-mnist.
DEBIAN_DATASETS_DIR = '/usr/share/datasets'

_IDX_NAMES = ('mnist', 'fashion_mnist')
_IDX_STEMS = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}
_CIFAR_TRAIN = tuple(f'data_batch_{i}.bin' for i in range(1, 6))
_CIFAR_TEST = 'test_batch.bin'
_CIFAR_SUBDIR = 'cifar-10-batches-bin'
_CIFAR_RECORD = 1 + 3 * 32 * 32  # Label byte, then CHW pixels.
_NPZ = ('train.npz', 'test.npz')


def search_dirs(name: str) -> list[str]:
  """Directories `find_local_dir` tries for `name`, in order."""
  dirs = []
  if os.environ.get(ENV_VAR):
    dirs.append(os.path.join(os.environ[ENV_VAR], name))
  dirs.append(os.path.join(DEBIAN_DATASETS_DIR, name.replace('_', '-')))
  return dirs


def find_local_dir(name: str) -> str | None:
  """First directory of `search_dirs(name)` that holds a complete copy."""
  for directory in search_dirs(name):
    if _find_files(name, directory) is not None:
      return directory
  return None


def expected_files(name: str) -> str:
  """Human-readable list of the files `load_local(name, ...)` accepts."""
  npz = 'train.npz and test.npz'
  if name in _IDX_NAMES:
    stems = ', '.join(f'{s}[.gz]' for s in _IDX_STEMS.values())
    return f'{stems} (or {npz})'
  if name == 'cifar10':
    return (f'data_batch_1.bin..data_batch_5.bin and {_CIFAR_TEST}, '
            f'optionally in {_CIFAR_SUBDIR}/ (or {npz})')
  return npz


def _find_files(name, directory):
  """`(format, files)` for the first complete format found, else None."""
  if not os.path.isdir(directory):
    return None
  if name in _IDX_NAMES:
    files = {}
    for key, stem in _IDX_STEMS.items():
      for candidate in (stem, stem + '.gz'):
        if os.path.isfile(os.path.join(directory, candidate)):
          files[key] = os.path.join(directory, candidate)
          break
    if len(files) == len(_IDX_STEMS):
      return 'idx', files
  if name == 'cifar10':
    for folder in (directory, os.path.join(directory, _CIFAR_SUBDIR)):
      paths = [os.path.join(folder, f) for f in _CIFAR_TRAIN + (_CIFAR_TEST,)]
      if all(os.path.isfile(p) for p in paths):
        return 'cifar', {'train': paths[:-1], 'test': paths[-1:]}
  paths = [os.path.join(directory, f) for f in _NPZ]
  if all(os.path.isfile(p) for p in paths):
    return 'npz', {'train': paths[0], 'test': paths[1]}
  return None


def load_local(name: str, directory) -> ImageClassificationData:
  """Loads dataset `name` from raw files in `directory` (see module doc).

  Returns:
    uint8 NHWC images (grayscale gets a trailing axis of 1), int32 labels.

  Raises:
    DataError: files missing, truncated or inconsistent.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise DataError(f'local data directory {directory} does not exist: '
                    f'create it with {expected_files(name)} for {name!r}')
  found = _find_files(name, directory)
  if found is None:
    raise DataError(f'no {name!r} files in {directory}: expected '
                    f'{expected_files(name)}')
  fmt, files = found
  names = CLASS_NAMES.get(name)
  if fmt == 'idx':
    train_x, train_y = _read_idx(files['train_images'], files['train_labels'])
    test_x, test_y = _read_idx(files['test_images'], files['test_labels'])
  elif fmt == 'cifar':
    train_x, train_y = _read_cifar(files['train'])
    test_x, test_y = _read_cifar(files['test'])
  else:
    train_x, train_y, npz_names = _read_npz(files['train'])
    test_x, test_y, _ = _read_npz(files['test'])
    names = npz_names or names
  if names is None:  # Unknown dataset: classes 0..max label.
    top = max(int(y.max(initial=-1)) for y in (train_y, test_y))
    names = tuple(str(i) for i in range(top + 1))
  return ImageClassificationData(
      train_images=train_x, train_labels=train_y, test_images=test_x,
      test_labels=test_y, num_classes=len(names), class_names=tuple(names),
      source=f'local:{directory}')


def _read_idx(images_path, labels_path):
  """`(images (N, H, W, 1) uint8, labels (N,) int32)` from two IDX files."""
  images, labels = idx.read_idx(images_path), idx.read_idx(labels_path)
  if images.dtype != np.uint8 or images.ndim != 3:
    raise DataError(f'{images_path} holds {images.dtype} {images.shape}: '
                    'expected uint8 images (N, H, W)')
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise DataError(f'{labels_path} holds labels {labels.shape} for '
                    f'{images.shape[0]} images in {images_path}: the files do '
                    'not belong together')
  return images[..., None], labels.astype(np.int32)


def _read_cifar(paths):
  """`(images (N, 32, 32, 3) uint8, labels (N,) int32)` from .bin files."""
  images, labels = [], []
  for path in paths:
    raw = np.fromfile(path, np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
      raise DataError(f'corrupt CIFAR-10 file {path}: {raw.size} bytes is not '
                      f'a multiple of the {_CIFAR_RECORD}-byte record; '
                      're-download it')
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels.append(records[:, 0].astype(np.int32))
    # Records store channels first; we want NHWC.
    images.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _read_npz(path):
  """`(images (N, H, W, C) uint8, labels (N,) int32, class names or None)`."""
  try:
    with np.load(path) as npz:  # np.load refuses object arrays unless told otherwise.
      arrays = {k: npz[k] for k in npz.files}
  # TypeError: a .npy file (plain array, no context manager) named .npz.
  except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as e:
    raise DataError(f'cannot read {path} ({one_line(e)}): expected an .npz of '
                    'arrays "image" and "label"') from None
  missing = {'image', 'label'} - set(arrays)
  if missing:
    raise DataError(f'{path} lacks array(s) {sorted(missing)} (has '
                    f'{sorted(arrays)}): save it with np.savez(path, '
                    'image=..., label=...)')
  images, labels = arrays['image'], arrays['label']
  if images.ndim == 3:  # Grayscale without a channel axis.
    images = images[..., None]
  if not np.issubdtype(images.dtype, np.integer) or (
      images.size and (images.min() < 0 or images.max() > 255)):
    raise DataError(f'{path}: "image" must hold integer pixels in [0, 255], '
                    f'got {images.dtype}; convert it to uint8')
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{path}: "label" has dtype {labels.dtype}: expected '
                    'integer class ids')
  if labels.ndim == 2 and labels.shape[1] == 1:  # Keras-style (N, 1).
    labels = labels[:, 0]
  names = arrays.get('class_names')
  names = tuple(str(n) for n in names) if names is not None else None
  return images.astype(np.uint8), labels.astype(np.int32), names
