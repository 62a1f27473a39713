"""Picks where a dataset comes from: local raw files or tensorflow_datasets."""

from jaxmodels.data import digits, local, tfds_source
from jaxmodels.data.dataset import ImageClassificationData, process_part
from jaxmodels.errors import DataError, DataUnavailableError

SOURCES = ('auto', 'local', 'tfds')


def load_dataset(name: str, *, source: str = 'auto', local_dir=None, data_dir=None,
                 process_index: int = 0, process_count: int = 1) -> ImageClassificationData:
  """Loads dataset `name` with uint8 NHWC images and int32 labels.

  Args:
    name: e.g. 'mnist', 'fashion_mnist', 'cifar10' (any name for .npz files
      or tfds image-classification datasets), or 'digits' (scikit-learn's 8x8
      digits, bundled: no download).
    source: 'local' (raw files), 'tfds', or 'auto', which tries in order:
      the explicit `local_dir`; a tfds dataset already prepared in
      `data_dir`; an autodetected local copy (`local.search_dirs`); a tfds
      download (fails within seconds when offline).
    local_dir: directory of raw files; for 'local' None means autodetect.
    data_dir: tfds data directory (None: tfds' default).
    process_index, process_count: in a multi-process run, each process gets
      only its contiguous part of each split.

  Raises:
    DataUnavailableError: no local copy and no way to download.
    DataError: unknown source, or bad files.
  """
  if source not in SOURCES:
    raise DataError(f'unknown data source {source!r}: use one of {SOURCES}')
  if name == digits.NAME:
    return process_part(digits.load_digits(), process_index, process_count)
  if source == 'tfds':
    directory = None
  elif local_dir:
    directory = local_dir
  elif source == 'auto' and tfds_source.is_prepared(name, data_dir):
    directory = None  # Cheap check: never imports TensorFlow.
  else:
    directory = local.find_local_dir(name)
    if directory is None and source == 'local':
      raise DataUnavailableError(
          f'no local copy of {name!r} found (searched {", ".join(local.search_dirs(name))}): '
          f'pass local_dir=DIR holding {local.expected_files(name)}, or set {local.ENV_VAR}')
  if directory is not None:
    return process_part(local.load_local(name, directory), process_index, process_count)
  return tfds_source.load_tfds(name, data_dir=data_dir, process_index=process_index,
                               process_count=process_count)
