"""Checks and normalises image-classification arrays."""

import jax.numpy as jnp
import numpy as np

from jaxmodels.errors import DataError

# Images per chunk in `channel_stats`: bounds the float64 temporaries.
_STATS_CHUNK = 4096


def validate_images_labels(images, labels, *, num_classes: int,
                           image_shape=None, name: str = 'train') -> None:
  """Checks one split: images `(N, H, W, C)`, integer labels `(N,)` in range.

  Args:
    images: array `(N, H, W, C)`, any dtype.
    labels: integer array `(N,)`.
    num_classes: labels must lie in `[0, num_classes)`.
    image_shape: expected `(H, W, C)`, or None to accept any.
    name: split name used in messages.

  Raises:
    DataError: with one line naming the split and the offending value.
  """
  shape = tuple(np.shape(images))
  if len(shape) != 4:
    raise DataError(
        f'{name} images have shape {shape}: expected rank 4 (N, H, W, C); '
        'add a trailing channel axis to grayscale images'
    )
  if image_shape is not None and shape[1:] != tuple(image_shape):
    raise DataError(
        f'{name} images have shape (H, W, C)={shape[1:]}, expected '
        f'{tuple(image_shape)}: resize or use matching data'
    )
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.shape[0] != shape[0]:
    raise DataError(
        f'{name} has {shape[0]} images but labels of shape {labels.shape}: '
        'expected one integer label per image'
    )
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(
        f'{name} labels have dtype {labels.dtype}: expected integer class ids'
    )
  if labels.size:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
      bad = lo if lo < 0 else hi
      raise DataError(
          f'{name} label {bad} is out of range [0, {num_classes}) '
          f'(labels span {lo}..{hi}): fix the labels or num_classes'
      )


def channel_stats(images) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images `(N, H, W, C)`, in [0, 1] units.

  Accumulates float64 sums chunk by chunk, so memory stays at one chunk.

  Returns:
    `(mean, std)`, each float32 `(C,)`.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] == 0:
    raise DataError(
        f'channel_stats needs non-empty images (N, H, W, C), got shape '
        f'{images.shape}'
    )
  channels = images.shape[-1]
  total = np.zeros(channels, np.float64)
  total_sq = np.zeros(channels, np.float64)
  for start in range(0, images.shape[0], _STATS_CHUNK):
    chunk = images[start:start + _STATS_CHUNK].reshape(-1, channels)
    chunk = chunk.astype(np.float64) / 255.0
    total += chunk.sum(0)
    total_sq += np.square(chunk).sum(0)
  count = images.size // channels
  mean = total / count
  var = np.maximum(total_sq / count - np.square(mean), 0.0)  # Rounding < 0.
  return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def normalize(images, mean, std) -> jnp.ndarray:
  """Maps pixels in [0, 255] (uint8 or float) to `(x / 255 - mean) / std`.

  Args:
    images: `(..., C)` uint8 or float, numpy or device array; works under jit.
    mean: `(C,)` or scalar, in [0, 1] units.
    std: `(C,)` or scalar, in [0, 1] units.

  Returns:
    float32 array of the same shape as `images`.
  """
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std


def to_model_inputs(spec: dict, inputs):
  """Inputs as stored (or as a user sends them) -> what the model takes, by an input spec
  (a task's `inputs`, recorded in model.json): 'image' pixels in 0..255 are normalised
  with the spec's per-channel mean and std; token ids pass through. Works under jit."""
  if spec.get('kind') == 'image':
    return normalize(inputs, np.asarray(spec['mean'], np.float32), np.asarray(spec['std'],
                                                                              np.float32))
  return jnp.asarray(inputs)
