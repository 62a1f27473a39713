"""Picks where a dataset comes from: local raw files or tensorflow_datasets."""

from jaxmodels.data import local
from jaxmodels.data import tfds_source
from jaxmodels.data.dataset import ImageClassificationData
from jaxmodels.data.errors import DataError, DataUnavailableError

SOURCES = ('auto', 'local', 'tfds')


def load_dataset(name: str, *, source: str = 'auto', local_dir=None,
                 data_dir=None) -> ImageClassificationData:
  """Loads dataset `name` with uint8 NHWC images and int32 labels.

  Args:
    name: e.g. 'mnist', 'fashion_mnist', 'cifar10' (any name for .npz files
      or tfds image-classification datasets).
    source: 'local' (raw files), 'tfds', or 'auto', which tries in order:
      the explicit `local_dir`; a tfds dataset already prepared in
      `data_dir`; an autodetected local copy (`local.search_dirs`); a tfds
      download (fails within seconds when offline).
    local_dir: directory of raw files; for 'local' None means autodetect.
    data_dir: tfds data directory (None: tfds' default).

  Raises:
    DataUnavailableError: no local copy and no way to download.
    DataError: unknown source, or bad files.
  """
  if source == 'local':
    directory = local_dir or local.find_local_dir(name)
    if directory is None:
      raise DataUnavailableError(
          f'no local copy of {name!r} found (searched '
          f'{", ".join(local.search_dirs(name))}): pass '
          f'--config.data.local_dir=/path/to/dir holding '
          f'{local.expected_files(name)}, or set {local.ENV_VAR}')
    return local.load_local(name, directory)
  if source == 'tfds':
    return tfds_source.load_tfds(name, data_dir=data_dir)
  if source == 'auto':
    if local_dir:
      return local.load_local(name, local_dir)
    # Checking for prepared tfds data is cheap and never imports TensorFlow.
    if tfds_source.is_prepared(name, data_dir):
      return tfds_source.load_tfds(name, data_dir=data_dir, download=False)
    directory = local.find_local_dir(name)
    if directory is not None:
      return local.load_local(name, directory)
    return tfds_source.load_tfds(name, data_dir=data_dir)
  raise DataError(f'unknown data source {source!r}: use one of {SOURCES}')
