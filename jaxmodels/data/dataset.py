"""The in-memory image-classification dataset every loader returns."""

import dataclasses

import numpy as np

from jaxmodels.errors import DataError
from jaxmodels.data.preprocess import validate_images_labels

# Class names of the datasets we know, so that local files get names too.
CLASS_NAMES = {
    'mnist': tuple(str(i) for i in range(10)),
    'fashion_mnist': (
        'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
        'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
    ),
    'cifar10': (
        'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
        'horse', 'ship', 'truck',
    ),
}


# eq=False: comparing numpy fields with == is ambiguous.
@dataclasses.dataclass(frozen=True, eq=False)
class ImageClassificationData:
  """Train and test splits held as numpy arrays.

  Attributes:
    train_images: uint8 `(N, H, W, C)`.
    train_labels: int32 `(N,)` in `[0, num_classes)`.
    test_images: uint8 `(M, H, W, C)`.
    test_labels: int32 `(M,)` in `[0, num_classes)`.
    num_classes: number of classes.
    class_names: `num_classes` names.
    source: where the data came from, e.g. `'tfds:mnist'` or
      `'local:/usr/share/datasets/fashion-mnist'`.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  source: str

  def __post_init__(self):
    for field in ('train_images', 'test_images'):
      if getattr(self, field).dtype != np.uint8:
        raise DataError(f'{field} have dtype {getattr(self, field).dtype}: '
                        'expected uint8 pixels in [0, 255]')
    for field in ('train_labels', 'test_labels'):
      if getattr(self, field).dtype != np.int32:
        raise DataError(f'{field} have dtype {getattr(self, field).dtype}: '
                        'expected int32')
    if len(self.class_names) != self.num_classes:
      raise DataError(f'{len(self.class_names)} class names for '
                      f'{self.num_classes} classes: give one name per class')
    validate_images_labels(self.train_images, self.train_labels,
                           num_classes=self.num_classes, name='train')
    validate_images_labels(self.test_images, self.test_labels,
                           num_classes=self.num_classes,
                           image_shape=self.image_shape, name='test')

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """`(H, W, C)` of every image."""
    return tuple(self.train_images.shape[1:])

  def __repr__(self):
    # The default repr would print every pixel.
    return (f'ImageClassificationData(train={self.train_images.shape}, '
            f'test={self.test_images.shape}, '
            f'num_classes={self.num_classes}, source={self.source!r})')




def process_block(array, index: int, count: int):
  """Process `index` of `count`'s contiguous block of `array` (multi-host input)."""
  return array[len(array) * index // count:len(array) * (index + 1) // count]


def process_part(data: ImageClassificationData, index: int,
                 count: int) -> ImageClassificationData:
  """Process `index` of `count`'s contiguous block of each split (multi-host input)."""
  if count == 1:
    return data
  block = lambda x: process_block(x, index, count)
  return dataclasses.replace(
      data,
      train_images=block(data.train_images), train_labels=block(data.train_labels),
      test_images=block(data.test_images), test_labels=block(data.test_labels),
      source=f'{data.source} (part {index + 1} of {count})')
