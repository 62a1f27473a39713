"""Reads and writes the IDX format of the MNIST / Fashion-MNIST `*-ubyte` files.

Layout: two zero bytes, a dtype code, the number of dimensions `n`, then `n`
big-endian uint32 sizes, then the big-endian payload. A path ending in `.gz`
is read and written through gzip.
"""

import gzip
import os
import zlib

import numpy as np

from jaxmodels.data.errors import DataError, one_line

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


def read_idx(path) -> np.ndarray:
  """Reads one IDX file (gzip if `path` ends in `.gz`).

  Returns:
    The array with the header's shape and dtype (uint8, int8, int16, int32,
    float32 or float64), in native byte order and writable.

  Raises:
    DataError: the file is missing, truncated or not an IDX file.
  """
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
