"""IDX reading and writing, checked against hand-built bytes."""

import gzip

import numpy as np
import pytest

from jaxmodels.data import DataError, read_idx, write_idx


def test_read_hand_built_file(tmp_path):
  # uint8 2x3: magic 00 00 08 02, dims 2 and 3, then the bytes row-major.
  raw = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255])
  path = tmp_path / 'a-idx2-ubyte'
  path.write_bytes(raw)
  out = read_idx(path)
  np.testing.assert_array_equal(out, [[1, 2, 3], [4, 5, 255]])
  assert out.dtype == np.uint8 and out.flags.writeable


def test_read_big_endian_short(tmp_path):
  raw = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2]) + bytes([0x01, 0x02, 0xFF, 0xFE])
  path = tmp_path / 'a.gz'
  path.write_bytes(gzip.compress(raw))
  out = read_idx(path)
  np.testing.assert_array_equal(out, [0x0102, -2])
  assert out.dtype == np.int16


def test_write_matches_hand_built_bytes(tmp_path):
  write_idx(tmp_path / 'b', np.array([[1, -2]], np.int32))
  assert (tmp_path / 'b').read_bytes() == bytes(
      [0, 0, 0x0C, 2, 0, 0, 0, 1, 0, 0, 0, 2,
       0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFE])


@pytest.mark.parametrize('dtype', ['uint8', 'int8', 'int16', 'int32',
                                   'float32', 'float64'])
@pytest.mark.parametrize('suffix', ['', '.gz'])
def test_round_trip(tmp_path, dtype, suffix):
  rng = np.random.default_rng(0)
  array = (rng.normal(size=(3, 4, 5)) * 100).astype(dtype)
  path = tmp_path / f'x-ubyte{suffix}'
  write_idx(path, array)
  if suffix:
    assert path.read_bytes()[:2] == b'\x1f\x8b'  # Really gzipped.
  out = read_idx(path)
  assert out.dtype == np.dtype(dtype) and out.shape == (3, 4, 5)
  np.testing.assert_array_equal(out, array)


def test_write_rejects_unsupported_dtype(tmp_path):
  with pytest.raises(DataError, match='int64'):
    write_idx(tmp_path / 'x', np.zeros(3, np.int64))


@pytest.mark.parametrize('suffix', ['', '.gz'])
def test_truncated_payload_names_file(tmp_path, suffix):
  path = tmp_path / f'x-ubyte{suffix}'
  write_idx(path, np.zeros((4, 3), np.uint8))
  raw = path.read_bytes()
  cut = (gzip.decompress(raw) if suffix else raw)[:-2]
  path.write_bytes(gzip.compress(cut) if suffix else cut)
  with pytest.raises(DataError, match=r'truncated.*x-ubyte.*12.*10'):
    read_idx(path)


def test_truncated_gzip_stream_names_file(tmp_path):
  path = tmp_path / 'x.gz'
  write_idx(path, np.arange(1000, dtype=np.int32))
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(DataError, match='x.gz'):
    read_idx(path)


def test_bad_magic_and_short_header(tmp_path):
  path = tmp_path / 'bad'
  path.write_bytes(b'PK\x03\x04 not idx')
  with pytest.raises(DataError, match='not an IDX file'):
    read_idx(path)
  path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
  with pytest.raises(DataError, match='truncated'):
    read_idx(path)


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match='not found'):
    read_idx(tmp_path / 'nope-ubyte.gz')


def test_a_large_gzipped_file_is_decoded_once_and_the_cache_follows_the_source(
    tmp_path, monkeypatch):
  """The decoded copy is reused (the source is not decompressed again), a changed source
  is decoded afresh, a damaged cache entry is rewritten, and `off` writes nothing."""
  import os

  from jaxmodels.data import idx
  cache = tmp_path / 'cache'
  monkeypatch.setenv(idx.CACHE_ENV_VAR, str(cache))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (1100, 32, 32), dtype=np.uint8)  # ~1.1 MB even gzipped.
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  write_idx(path, images)
  np.testing.assert_array_equal(read_idx(path), images)
  (entry,) = cache.iterdir()
  decodes = []
  monkeypatch.setattr(idx, '_decode_idx', lambda p: decodes.append(p) or images)
  out = read_idx(path)
  np.testing.assert_array_equal(out, images)
  assert decodes == [] and out.flags.writeable

  monkeypatch.undo()
  monkeypatch.setenv(idx.CACHE_ENV_VAR, str(cache))
  changed = images[::-1].copy()
  write_idx(path, changed)
  os.utime(path, ns=(1, 1))  # A new size/time key, whatever the clock's resolution.
  np.testing.assert_array_equal(read_idx(path), changed)
  assert len(list(cache.iterdir())) == 2
  for entry in cache.iterdir():
    entry.write_bytes(b'not an array')
  np.testing.assert_array_equal(read_idx(path), changed)

  monkeypatch.setenv(idx.CACHE_ENV_VAR, 'off')
  other = tmp_path / 'other-idx3-ubyte.gz'
  write_idx(other, images)
  np.testing.assert_array_equal(read_idx(other), images)
  assert len(list(cache.iterdir())) == 2
