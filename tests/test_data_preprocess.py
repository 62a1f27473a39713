"""Validation, channel statistics and normalisation against numpy."""

import jax
import numpy as np
import pytest

from jaxmodels.data import (DataError, ImageClassificationData, channel_stats,
                            normalize, validate_images_labels)
from jaxmodels.data import preprocess


def _images(n=4, shape=(5, 5, 3)):
  return np.zeros((n,) + shape, np.uint8)


def test_valid_split_passes():
  assert validate_images_labels(_images(), np.array([0, 1, 2, 9]),
                                num_classes=10, image_shape=(5, 5, 3)) is None


@pytest.mark.parametrize('images,labels,image_shape,pattern', [
    (np.zeros((4, 5, 5), np.uint8), [0, 1, 2, 3], None, r'rank 4'),
    (_images(), [0, 1, 2, 3], (28, 28, 1), r'\(28, 28, 1\)'),
    (_images(), [0, 1, 2], None, r'4 images but labels of shape \(3,\)'),
    (_images(), np.array([0., 1., 2., 3.]), None, 'float64'),
])
def test_bad_splits(images, labels, image_shape, pattern):
  with pytest.raises(DataError, match=pattern) as e:
    validate_images_labels(images, np.asarray(labels), num_classes=10,
                           image_shape=image_shape, name='val')
  assert str(e.value).startswith('val ') and '\n' not in str(e.value)


@pytest.mark.parametrize('labels,bad', [([0, 3, 10, 2], '10'),
                                        ([0, -1, 5, 2], '-1')])
def test_labels_out_of_range(labels, bad):
  pattern = rf'label {bad} is out of range \[0, 10\)'
  with pytest.raises(DataError, match=pattern):
    validate_images_labels(_images(), np.array(labels), num_classes=10)


def test_dataset_rejects_wrong_dtypes_and_mismatched_test_shape():
  labels = np.zeros(4, np.int32)
  kwargs = dict(num_classes=2, class_names=('a', 'b'), source='t')
  with pytest.raises(DataError, match='uint8'):
    ImageClassificationData(_images().astype(np.float32), labels, _images(),
                            labels, **kwargs)
  with pytest.raises(DataError, match='int32'):
    ImageClassificationData(_images(), labels.astype(np.int64), _images(),
                            labels, **kwargs)
  with pytest.raises(DataError, match=r'test images.*\(5, 5, 3\)'):
    ImageClassificationData(_images(), labels, _images(shape=(5, 4, 3)),
                            labels, **kwargs)


def test_channel_stats_matches_numpy(monkeypatch):
  monkeypatch.setattr(preprocess, '_STATS_CHUNK', 3)  # Several chunks.
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 4, 6, 3), dtype=np.uint8)
  images[..., 2] //= 4  # Give channels different statistics.
  mean, std = channel_stats(images)
  x = images.astype(np.float64) / 255
  assert mean.dtype == np.float32 and mean.shape == (3,)
  np.testing.assert_allclose(mean, x.mean((0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, x.std((0, 1, 2)), rtol=1e-5)


@pytest.mark.parametrize('dtype', [np.uint8, np.float32])
def test_normalize_matches_numpy_under_jit(dtype):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (2, 3, 3, 3)).astype(dtype)
  mean, std = np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.3, 0.4])
  expected = (images.astype(np.float64) / 255 - mean) / std
  out = jax.jit(normalize)(jax.device_put(images), mean, std)
  assert out.dtype == np.float32 and out.shape == images.shape
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
