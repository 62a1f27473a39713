"""Reads and writes the IDX format of the MNIST / Fashion-MNIST `*-ubyte` files.

Layout: two zero bytes, a dtype code, the number of dimensions `n`, then `n`
big-endian uint32 sizes, then the big-endian payload. A path ending in `.gz`
is read and written through gzip.

Decompressing a large `.gz` file costs a noticeable part of a run's start (0.3 s for
Fashion-MNIST's training images), so the decoded array is kept as a `.npy` file under
`$JAXMODELS_DATA_CACHE` (default `~/.cache/jaxmodels/decoded`; `off` disables it), keyed
by the source's path, size and modification time.
"""

import gzip
import hashlib
import os
import tempfile
import zlib

import numpy as np

from jaxmodels.errors import DataError, one_line

# IDX dtype code -> big-endian numpy dtype.
_CODE_TO_DTYPE = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_KIND_SIZE_TO_CODE = {
    (d.kind, d.itemsize): c for c, d in _CODE_TO_DTYPE.items()
}


def _open(path, mode):
  if os.fspath(path).endswith('.gz'):
    # mtime=0 keeps written files byte-identical across runs.
    return gzip.GzipFile(path, mode, mtime=0)
  return open(path, mode)


CACHE_ENV_VAR = 'JAXMODELS_DATA_CACHE'
_CACHE_MIN_BYTES = 1 << 20  # Smaller files decompress in milliseconds: not worth a copy.


def _decoded_cache_path(path) -> str | None:
  """Where the decoded array of gzipped `path` is kept, or None (not cached)."""
  directory = os.environ.get(CACHE_ENV_VAR, os.path.join('~', '.cache', 'jaxmodels', 'decoded'))
  if directory == 'off' or not os.fspath(path).endswith('.gz'):
    return None
  try:
    stat = os.stat(path)
  except OSError:
    return None
  if stat.st_size < _CACHE_MIN_BYTES:
    return None
  key = hashlib.sha1(f'{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}'.encode())
  name = os.path.basename(os.fspath(path))[:-len('.gz')]
  return os.path.join(os.path.expanduser(directory), f'{name}.{key.hexdigest()[:16]}.npy')


def read_idx(path) -> np.ndarray:
  """Reads one IDX file (gzip if `path` ends in `.gz`; large ones through the decoded
  cache, see the module doc).

  Returns:
    The array with the header's shape and dtype (uint8, int8, int16, int32,
    float32 or float64), in native byte order and writable.

  Raises:
    DataError: the file is missing, truncated or not an IDX file.
  """
  cached = _decoded_cache_path(path)
  if cached and os.path.isfile(cached):
    try:
      return np.load(cached)
    except (OSError, ValueError):
      pass  # A damaged cache entry: decode the source again and rewrite it.
  array = _decode_idx(path)
  if cached:
    _write_atomically(cached, array)
  return array


def _write_atomically(path: str, array: np.ndarray) -> None:
  """Saves under a temporary name, then renames: readers never see half a file. Failure
  (a read-only home, a full disk) only costs the next run the decompression."""
  temporary = None
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix='.npy',
                                     delete=False) as f:
      temporary = f.name
      np.save(f, array)
    os.replace(temporary, path)
  except OSError:
    if temporary and os.path.exists(temporary):
      os.remove(temporary)


def _decode_idx(path) -> np.ndarray:
  """`read_idx` without the cache."""
  try:
    with _open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    raise DataError(f'IDX file not found: {path}') from None
  except (OSError, EOFError, zlib.error) as e:
    # gzip raises BadGzipFile (an OSError) or EOFError on corrupt input.
    raise DataError(
        f'cannot read IDX file {path} ({one_line(e)}): re-download or '
        're-extract it'
    ) from None

  if len(raw) < 4 or raw[:2] != b'\0\0' or raw[2] not in _CODE_TO_DTYPE:
    raise DataError(
        f'{path} is not an IDX file (bad magic number 0x{raw[:4].hex()}): '
        'expected an MNIST-style *-ubyte file'
    )
  dtype, ndim = _CODE_TO_DTYPE[raw[2]], raw[3]
  header_size = 4 + 4 * ndim
  if len(raw) < header_size:
    raise DataError(f'truncated IDX file {path}: header is cut short; '
                    're-download it')
  shape = tuple(int(s) for s in np.frombuffer(raw, '>u4', ndim, offset=4))
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  found = len(raw) - header_size
  if found != expected:
    raise DataError(
        f'truncated or corrupt IDX file {path}: header shape {shape} needs '
        f'{expected} data bytes, found {found}; re-download it'
    )
  array = np.frombuffer(raw, dtype, offset=header_size).reshape(shape)
  return array.astype(dtype.newbyteorder('='))  # Copies: native and writable.


def write_idx(path, array) -> None:
  """Writes `array` as IDX (gzip if `path` ends in `.gz`).

  `array` has rank >= 1 and dtype uint8, int8, int16, int32, float32 or
  float64.

  Raises:
    DataError: the dtype or shape cannot be stored in IDX.
  """
  array = np.asarray(array)
  code = _KIND_SIZE_TO_CODE.get((array.dtype.kind, array.dtype.itemsize))
  if code is None:
    raise DataError(
        f'IDX cannot store dtype {array.dtype}: use uint8, int8, int16, int32, '
        'float32 or float64'
    )
  if not 1 <= array.ndim <= 255 or max(array.shape) >= 2**32:
    raise DataError(f'IDX cannot store shape {array.shape}: '
                    'need rank 1..255 and sizes < 2**32')
  dims = np.asarray(array.shape, '>u4').tobytes()
  header = bytes([0, 0, code, array.ndim]) + dims
  with _open(path, 'wb') as f:
    f.write(header)
    f.write(np.ascontiguousarray(array, _CODE_TO_DTYPE[code]).tobytes())
