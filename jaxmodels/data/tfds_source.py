"""Loads image-classification datasets through tensorflow_datasets (tfds).

tfds is imported inside the functions: importing TensorFlow costs seconds and
runs on local files must not pay it (importing tfds itself does not import TF).
"""

import os
import threading
import urllib.error
import urllib.request

import numpy as np

from jaxmodels.data.dataset import CLASS_NAMES, ImageClassificationData
from jaxmodels.errors import DataError, DataUnavailableError, one_line

# tfds downloads mnist, fashion_mnist and cifar10 from this host.
PROBE_URL = 'https://storage.googleapis.com/'
PROBE_TIMEOUT_S = 3.0
_READ_BATCH = 10_000  # Examples per numpy chunk when reading a split.

_OFFLINE_HINT = (
    'Pass local_dir=DIR holding the raw files (IDX *-ubyte.gz, CIFAR-10 *.bin, or '
    'train.npz/test.npz), or set JAXMODELS_DATA_DIR.'
)


def network_available(url: str = PROBE_URL,
                      timeout: float = PROBE_TIMEOUT_S) -> bool:
  """Whether `url` answers within `timeout` seconds (any HTTP status counts).

  Goes through urllib, so it honours the *_proxy variables as downloads do.
  Runs in a daemon thread because DNS lookups ignore socket timeouts.
  JAXMODELS_OFFLINE=1 answers False without trying (never download).
  """
  if os.environ.get('JAXMODELS_OFFLINE', '') not in ('', '0'):
    return False
  result = []

  def probe():
    try:
      urllib.request.urlopen(
          urllib.request.Request(url, method='HEAD'), timeout=timeout).close()
      result.append(True)
    except urllib.error.HTTPError:  # The server answered: we are online.
      result.append(True)
    except Exception:  # pylint: disable=broad-except
      result.append(False)

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout + 0.5)
  return bool(result and result[0])


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataUnavailableError(
        f'cannot import tensorflow_datasets ({one_line(e)}): pip install '
        f'tensorflow-datasets, or use local files. {_OFFLINE_HINT}') from None
  return tfds


def _base_name(name):
  """'cifar10' for 'cifar10:3.0.2' or 'cifar10/config'."""
  return name.split(':')[0].split('/')[0]


def _builder_prepared(builder) -> bool:
  # Checking existence first avoids tfds' warning about a missing folder.
  return builder.data_path.exists() and builder.is_prepared()


def is_prepared(name: str, data_dir=None) -> bool:
  """Whether tfds can serve `name` from `data_dir` without downloading.

  Cheap: never downloads or imports TensorFlow, and does not import tfds
  unless `<data_dir>/<name>` exists.
  """
  root = data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.join(
      os.path.expanduser('~'), 'tensorflow_datasets')
  if not os.path.isdir(os.path.join(root, _base_name(name))):
    return False
  try:
    return _builder_prepared(_import_tfds().builder(name, data_dir=data_dir))
  except Exception:  # pylint: disable=broad-except
    return False  # Unknown name or unreadable metadata: not servable.


def prepared_builder(name: str, *, data_dir=None, download: bool = True):
  """(tfds module, builder) whose data is ready to read: already prepared, or downloaded now.

  Raises DataUnavailableError within seconds when that needs a network there is not.
  """
  tfds = _import_tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f'unknown tfds dataset {name!r}: check the name against '
                    'tfds.list_builders() or use local files') from None
  if not _builder_prepared(builder):
    _download(tfds, builder, name, download)
  return tfds, builder


def load_tfds(name: str, *, data_dir=None, download: bool = True,
              process_index: int = 0, process_count: int = 1) -> ImageClassificationData:
  """Loads the 'train' and 'test' splits of tfds dataset `name` into numpy.

  The dataset needs `image` and `label` features.

  Args:
    name: tfds name, e.g. 'mnist', 'fashion_mnist', 'cifar10'.
    data_dir: tfds data directory (None: tfds' default).
    download: whether to download and prepare a missing dataset.
    process_index, process_count: read only this process's contiguous part of
      each split (`tfds.even_splits`), for multi-process input.

  Returns:
    Images uint8 `(N, H, W, C)`, labels int32 `(N,)`, tfds class names.

  Raises:
    DataUnavailableError: not prepared and cannot be downloaded (fails within
      seconds when offline).
    DataError: unknown dataset or one without image/label features.
  """
  tfds, builder = prepared_builder(name, data_dir=data_dir, download=download)

  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise DataError(f'tfds dataset {name!r} has features {list(features)}: '
                    "expected 'image' and 'label'")
  part = lambda split: (split if process_count == 1 else
                        tfds.even_splits(split, process_count)[process_index])
  train_x, train_y = _read_split(tfds, builder, name, 'train', part('train'))
  test_x, test_y = _read_split(tfds, builder, name, 'test', part('test'))
  names = tuple(features['label'].names)
  known = CLASS_NAMES.get(_base_name(name))
  if known and len(known) == len(names) and names == _numbered(len(names)):
    names = known  # e.g. cifar10 reads its names only while preparing.
  return ImageClassificationData(
      train_images=train_x, train_labels=train_y, test_images=test_x,
      test_labels=test_y, num_classes=len(names), class_names=names,
      source=f'tfds:{name}' + (f' (part {process_index + 1} of {process_count})'
                                if process_count > 1 else ''))


def _numbered(n):
  return tuple(str(i) for i in range(n))


def _download(tfds, builder, name, download):
  """Runs `builder.download_and_prepare`, failing fast when it cannot work."""
  if not download:
    raise DataUnavailableError(
        f'tfds dataset {name!r} is not prepared in {builder.data_dir_root} '
        f'and download=False. {_OFFLINE_HINT}')
  if not network_available():
    raise DataUnavailableError(
        f'cannot download {name!r} from tfds: no network. {_OFFLINE_HINT}')
  try:
    builder.download_and_prepare()
  except ImportError as e:  # tfds needs TensorFlow to prepare.
    raise DataUnavailableError(
        f'cannot prepare {name!r} with tfds ({one_line(e)}): pip install '
        f"'jaxmodels[tf]'. {_OFFLINE_HINT}") from None
  except (OSError, tfds.download.DownloadError) as e:
    # requests' errors are OSErrors; tfds wraps some in DownloadError.
    raise DataUnavailableError(
        f'cannot download {name!r} from tfds ({type(e).__name__}: '
        f'{one_line(e)}). {_OFFLINE_HINT}') from e


def _read_split(tfds, builder, name, split, read_split):
  """`(images uint8 (N, H, W, C), labels int32 (N,))` of one split."""
  splits = builder.info.splits
  if splits and split not in splits:  # Mocked builders list no splits.
    raise DataError(f'tfds dataset {name!r} has no {split!r} split '
                    f'(has {list(splits)}): pick a dataset with train/test')
  ds = builder.as_dataset(split=read_split, shuffle_files=False)
  # Like as_supervised=True, but also for datasets without supervised_keys.
  ds = ds.map(lambda example: (example['image'], example['label']))
  # batch_size=-1 crashes under tfds.testing.mock_data: read in chunks.
  images, labels = [], []
  for x, y in tfds.as_numpy(ds.batch(_READ_BATCH)):
    images.append(x)
    labels.append(y)
  if not images:
    raise DataError(f'tfds dataset {name!r} split {split!r} is empty')
  images = np.concatenate(images)
  if images.dtype != np.uint8:
    raise DataError(f'tfds dataset {name!r} has {images.dtype} images: '
                    'expected uint8 pixels')
  if images.ndim == 3:
    images = images[..., None]
  return images, np.concatenate(labels).astype(np.int32)
