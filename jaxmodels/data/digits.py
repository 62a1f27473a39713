"""scikit-learn's 1,797 handwritten digits (8x8 pixels, 10 classes): real image data that
ships inside scikit-learn, for machines where MNIST cannot be had."""
import jax
import numpy as np

from jaxmodels.data.dataset import ImageClassificationData

NAME = 'digits'
TEST_FRACTION = 0.2
_SPLIT_SEED = 0  # Fixed, so the test set is the same in every run.


def mnist_layout(images: np.ndarray) -> np.ndarray:
  """(N, 8, 8, 1) digits -> (N, 28, 28, 1), laid out as MNIST's: the digit scaled to 20x20
  (bilinear) and centred in a 28x28 frame, so MNIST recipes and models apply unchanged."""
  scaled = jax.image.resize(images.astype(np.float32), (len(images), 20, 20, 1), 'linear')
  scaled = np.clip(np.round(np.asarray(scaled)), 0, 255).astype(np.uint8)
  return np.pad(scaled, ((0, 0), (4, 4), (4, 4), (0, 0)))


def load_digits(like_mnist: bool = False) -> ImageClassificationData:
  """1,438 train / 359 test images, uint8 (N, 8, 8, 1) in [0, 255], from a fixed seeded split;
  like_mnist: (N, 28, 28, 1) as `mnist_layout` gives them.

  scikit-learn stores 17 grey levels (0..16); they are scaled to 0..255.
  """
  from sklearn.datasets import load_digits as sklearn_digits  # Imported on first use: ~1 s.
  digits = sklearn_digits()
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  images = mnist_layout(images) if like_mnist else images
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
  cut = int(round(len(labels) * (1 - TEST_FRACTION)))
  train, test = order[:cut], order[cut:]
  return ImageClassificationData(
      train_images=images[train], train_labels=labels[train], test_images=images[test],
      test_labels=labels[test], num_classes=10, class_names=tuple(str(i) for i in range(10)),
      source='sklearn:load_digits' + (' (28x28, as MNIST)' if like_mnist else ''))
